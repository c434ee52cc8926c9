"""The registry of queue names: which queues exist, finding a job's queue from its id, the
most queues kept, and forgetting the ones nothing uses.

**Finding a job by its id.** Each queue keeps its jobs under its own hash tag
(``{prefix:queue}:job:<id>``), so that every script of a queue touches one Redis Cluster
slot. Reading a job therefore needs its queue. We chose *an id that says where its job
lives* over an id-to-queue record written beside each job: a Conveyor job id starts with its
queue's tag (`domain.jobs.queue_tag`: 8 hex digits of a hash of the name; the id stays 32
lowercase hex), and the registry maps each tag to the names that have it (nearly always one).
A read is then one HGET of the tag (cached in the process) and one HMGET of the job, however
many queues there are. A record per job would cost a key per job, a second write on every
submit outside the queue's slot (a cross-slot write that Cluster cannot make atomic with the
job's), and a way to delete it when the job's hash expires, which Redis does on its own
without running any script.

Ids that do not start with their queue's tag (jobs stored before tags existed, or ids a
caller of the port chose) are still found: their queues are in the registry's ``legacy``
set (every queue registered by an older Conveyor is adopted into it, and a submitter marks a
queue that takes such an id), which a read searches, in one pipelined round trip, when the
tag finds nothing. HTTP clients cannot grow that set: the API mints every id.

**The most queues.** A name that is not registered yet is registered by a strict REGISTER
before its first job or pause (refused past `max_queues`: `TooManyQueuesError`, nothing
stored); the submissions of one event-loop tick are admitted together, so they still reach
Redis in one pipeline, in the order made; names this process registered lately skip that
round trip. Every submit and pause, and a worker's heartbeat every 30 s (`RedisQueueMonitor`),
then records its use (REGISTER, not strict) *after* its write, in the same pipeline, so a
queue that holds a job is registered once the caller is answered.

**Forgetting.** A sweep (at most once per `sweep_interval` across every process, under a
lock; started by workers' `recover` and by a refused registration) asks each queue whether
it is idle (`lua/idle.lua`: no job once expired results are forgotten, not paused, no live
worker) and forgets the idle names not used since it read their last use, nor in the last
`grace` seconds (`lua/forget_queues.lua`). A write that lands between the two records a
newer use after it, in its pipeline, so a queue that holds a job stays registered; the grace
keeps a name registered for a write about to be made (the strict registration comes first).

Everything this process keeps per name is bounded: the tags and the names registered lately
are LRU caches.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from redis.asyncio.client import Pipeline

from adapters.redis_queue import calls
from adapters.redis_queue.calls import ScriptCall, evalsha, ms
from adapters.redis_queue.codec import RawFields
from adapters.redis_queue.keys import RegistryKeys
from adapters.redis_queue.submission import Item
from domain.errors import TooManyQueuesError
from domain.jobs import QUEUE_TAG_LENGTH, is_name, queue_tag

if TYPE_CHECKING:
    from adapters.redis_queue.core import RedisCore

log = logging.getLogger("conveyor.redis_queue")

# Entries of the per-process caches: tags and their names, names registered lately.
TAG_CACHE: Final = 4096
REGISTERED_CACHE: Final = 1024
# Names examined per round trip of a sweep.
SWEEP_BATCH: Final = 1000
DEFAULT_SWEEP_INTERVAL: Final = 10.0
# How long a name is kept after its last use, idle or not: far longer than a registration
# takes to be followed by the write it was for.
DEFAULT_GRACE: Final = 60.0

K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    """A dict that keeps its `size` most recently used entries."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def pop(self, key: K) -> None:
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


class QueueRegistry:
    """The registry of one key prefix, as one process uses it (see the module's docstring)."""

    def __init__(
        self,
        core: RedisCore,
        *,
        max_queues: int | None,
        sweep_interval: float = DEFAULT_SWEEP_INTERVAL,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        if max_queues is not None and max_queues < 1:
            raise ValueError("max_queues must be at least 1")
        if sweep_interval < 0 or grace < 0:
            raise ValueError("sweep_interval and grace must not be negative")
        self.grace = grace
        self._core = core
        self.keys = RegistryKeys.of(core.prefix)
        self.max_queues = max_queues
        self.sweep_interval = sweep_interval
        self._tags: _Lru[str, tuple[str, ...]] = _Lru(TAG_CACHE)
        self._registered: _Lru[str, bool] = _Lru(REGISTERED_CACHE)
        self._adopted = False
        self._next_sweep = 0.0

    # -- registering ------------------------------------------------------------------------

    async def admit(self, groups: Sequence[Collection[str]]) -> set[int]:
        """Register the names of each group (the queues of one submission) that this process
        has not registered lately, a group whole or not at all, each only while the registry
        stays within the most queues; answers the groups refused, by index (nothing was
        written for them). A refusal first sweeps idle queues away (unless a sweep ran
        lately) and asks once more."""
        new = {
            index: [name for name in dict.fromkeys(group) if self._registered.get(name) is None]
            for index, group in enumerate(groups)
        }
        asked = [index for index, names in new.items() if names]
        refused: set[int] = set()
        for attempt in range(2):
            if not asked:
                break
            call = self.register([[(name, False) for name in new[i]] for i in asked], True)
            answer = await self._core.run(call)
            refused = {asked[int(number)] for number in answer}
            for index in asked:
                if index not in refused:
                    for name in new[index]:
                        self._registered.put(name, True)
            if not refused or attempt == 1 or not await self.sweep():
                break
            asked = sorted(refused)
        return refused

    def first_new(self, items: Iterable[Item]) -> str:
        """The first queue of a submission that this process has not registered."""
        names = [item.queue for item in items]
        return next((n for n in names if self._registered.get(n) is None), names[0])

    def refusal(self, queue: str) -> TooManyQueuesError:
        """What a caller whose `queue` was refused is told."""
        return TooManyQueuesError(
            queue, self.max_queues or 0, retry_after=max(1.0, self.sweep_interval)
        )

    def register(
        self, groups: Sequence[Sequence[tuple[str, bool]]], strict: bool = False
    ) -> ScriptCall:
        """REGISTER of `groups` of names, each with whether its queue may hold jobs whose
        ids do not start with its tag; not strict: recording a use (after the write it
        records), in one group."""
        return calls.register(
            self.keys,
            [[(name, queue_tag(name), legacy) for name, legacy in group] for group in groups],
            max_queues=self.max_queues,
            strict=strict,
        )

    async def names(self) -> set[str]:
        """Every queue name registered."""
        members: set[bytes] = await self._core.client.smembers(self.keys.queues)  # type: ignore[assignment]
        return {name for name in (m.decode() for m in members) if is_name(name)}

    # -- finding a job's queue --------------------------------------------------------------

    async def find(self, job_id: str, fields: Sequence[str]) -> tuple[str, RawFields] | None:
        """The job's queue and `fields` of its hash, or None when no queue holds it.

        One round trip when this process remembers the id's tag, two when it does not; a job
        that no queue of its tag holds is looked for in the queues that may hold ids without
        their tag (two more: the `legacy` set, then those queues).
        """
        tag = job_id[:QUEUE_TAG_LENGTH]
        searched: set[str] = set()
        cached = self._tags.get(tag)
        if cached is not None:
            found = await self._read(cached, job_id, fields)
            if found is not None:
                return found
            searched.update(cached)  # a queue with the same tag may have come since
        fresh = [name for name in await self.tagged(tag) if name not in searched]
        found = await self._read(fresh, job_id, fields)
        if found is not None:
            return found
        searched.update(fresh)
        legacy: set[bytes] = await self._core.client.smembers(self.keys.legacy)  # type: ignore[assignment]
        names = (_text(m) for m in legacy)
        rest = sorted(n for n in names if is_name(n) and n not in searched)
        return await self._read(rest, job_id, fields)

    async def tagged(self, tag: str) -> tuple[str, ...]:
        """The names registered with `tag`, as the registry holds them now (remembered)."""
        await self.adopt()
        listed = await self._core.client.hget(self.keys.tags, tag)
        tagged = tuple(name for name in _text(listed).split() if is_name(name))
        if tagged:
            self._tags.put(tag, tagged)
        else:
            self._tags.pop(tag)
        return tagged

    def cached_queues(self, tag: str) -> tuple[str, ...]:
        """The names this process last saw with `tag`, if it remembers (no round trip)."""
        return self._tags.get(tag) or ()

    async def _read(
        self, names: Sequence[str], job_id: str, fields: Sequence[str]
    ) -> tuple[str, RawFields] | None:
        if not names:
            return None
        core = self._core

        def build(pipe: Pipeline) -> None:
            for name in names:
                pipe.hmget(core.keys(name).job(job_id), fields)

        for name, raw in zip(names, await core.pipeline(build), strict=True):
            if any(value is not None for value in raw):
                return name, raw
        return None

    async def adopt(self) -> None:
        """Adopt, once per process, the names an older Conveyor registered without a tag (a
        process does it as it starts, `RedisConnection.verify`; else on its first read)."""
        if self._adopted:
            return
        self._adopted = True  # the reads made meanwhile need not check too
        try:
            await self._adopt()
        except BaseException:
            self._adopted = False
            raise

    async def _adopt(self) -> None:

        def build(pipe: Pipeline) -> None:
            pipe.scard(self.keys.queues)
            pipe.hlen(self.keys.touched)

        count, touched = await self._core.pipeline(build)
        if count > touched:
            async for _ in self._scan():
                pass

    # -- forgetting idle queues -------------------------------------------------------------

    async def maybe_sweep(self) -> Sequence[str]:
        """Sweep if this process has not tried for `sweep_interval`; the names forgotten."""
        now = time.monotonic()
        if now < self._next_sweep:
            return ()
        self._next_sweep = now + self.sweep_interval
        return await self.sweep()

    async def sweep(self) -> Sequence[str]:
        """Forget every idle queue, unless a sweep ran (here or elsewhere) in the last
        `sweep_interval`; answers the names forgotten (empty also when it did not run)."""
        core = self._core
        lock_ms = max(1, ms(self.sweep_interval)) if self.sweep_interval > 0 else 1
        if not await core.client.set(self.keys.sweep, b"1", nx=True, px=lock_ms):
            return ()
        forgotten: list[str] = []
        async for seen in self._scan():
            if seen:
                forgotten += await self._forget_idle(seen)
        for name in forgotten:
            self._registered.pop(name)
            tag = queue_tag(name)
            self._tags.pop(tag)
        if forgotten:
            log.info("forgot %d idle queues", len(forgotten))
        return forgotten

    async def _forget_idle(self, seen: Sequence[tuple[str, bytes]]) -> list[str]:
        """Of these names (each with the generation read), forget those whose queue is idle
        and that were not used since."""
        core = self._core
        idle_calls = [calls.idle(core.keys(name), core.retention) for name, _ in seen]

        def build(pipe: Pipeline) -> None:
            for call in idle_calls:
                evalsha(pipe, call)

        idle = await core.pipeline(build)
        gone = [
            (name, queue_tag(name), generation)
            for (name, generation), answer in zip(seen, idle, strict=True)
            if answer == 1
        ]
        if not gone:
            return []
        grace_ms = max(0, round(self.grace * 1000))
        answer = await core.run(calls.forget_queues(self.keys, gone, grace_ms=grace_ms))
        return [name.decode() for name in answer]

    async def _scan(self) -> AsyncIterator[list[tuple[str, bytes]]]:
        """The registry's names, a slice at a time, each with the generation of its last
        use; names registered by an older Conveyor are adopted on the way (and left out)."""
        cursor: bytes | str = "0"
        while True:
            cursor, names, generations = await self._core.run(
                calls.registry_scan(self.keys, cursor, SWEEP_BATCH)
            )
            seen: list[tuple[str, bytes]] = []
            unadopted: list[str] = []
            for raw, generation in zip(names, generations, strict=True):
                name = raw.decode()
                if not is_name(name):
                    continue
                if generation is None:
                    unadopted.append(name)
                else:
                    seen.append((name, generation))
            if unadopted:
                await self._core.run(self.register([[(name, True) for name in unadopted]]))
            yield seen
            if cursor in (b"0", "0"):
                return


def _text(raw: bytes | str | None) -> str:
    return raw.decode() if isinstance(raw, bytes) else (raw or "")
