"""Waking the readers waiting for jobs to finish: one subscription per process.

Every script that finishes jobs publishes their ids on the prefix's channel
(`lua/lib/finished.lua`). A process that has readers waiting holds one subscription to it,
opened with the first watch, and wakes the readers of each id it hears; none of them reads
Redis until then. However many wait, that is one connection and no command per second.

Pub/sub delivers at most once: what was published while the subscription was down is lost.
So on every confirmation of the subscription (redis-py also resubscribes by itself when it
reconnects) every reader looks once more, and while it is down, one poll per process reads the
status of every job watched (one pipelined round trip a second) and wakes the readers of the
finished ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from redis.asyncio.client import Pipeline, PubSub
from redis.exceptions import RedisError

from adapters.redis_cluster import remap_after, subscriber
from domain.jobs import QUEUE_TAG_LENGTH, JobStatus
from domain.ports import JobWatcher, Watch

if TYPE_CHECKING:
    from adapters.redis_queue.core import RedisCore

log = logging.getLogger("conveyor.redis_queue")

_FINISHED: Final = frozenset(s.value.encode() for s in JobStatus if s.is_terminal)


class _RedisWatch(Watch):
    def __init__(self, watcher: RedisJobWatcher, job_id: str) -> None:
        self.job_id = job_id
        self.woken = asyncio.Event()
        self.handling = False  # woken, and its reader has not yet come back nor left
        self._watcher = watcher
        self._open = True

    async def wait(self, seconds: float) -> None:
        self._watcher.handled(self)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.woken.wait(), seconds)
        self.woken.clear()

    def close(self) -> None:
        if self._open:
            self._open = False
            self._watcher.handled(self)
            self._watcher.unwatch(self)


class RedisJobWatcher(JobWatcher):
    """The readers waiting in this process, by job id, and the one subscription that wakes
    them (see the module's docstring)."""

    # While the subscription is down: how often the watched jobs are read, and how long to
    # wait before subscribing again (doubling up to the cap).
    POLL_SECONDS: Final = 1.0
    RETRY_FIRST: Final = 0.1
    RETRY_CAP: Final = 5.0
    # How long one read of the subscription waits for a message (then checks its health).
    LISTEN_SECONDS: Final = 5.0
    # Readers woken at once, and the longest pause before the next ones (`_wake_paced`).
    WAKE_CHUNK: Final = 50
    WAKE_PAUSE: Final = 0.2

    def __init__(self, core: RedisCore) -> None:
        self._core = core
        self._waiting: dict[str, set[_RedisWatch]] = {}
        self._task: asyncio.Task[None] | None = None
        self.subscribed = False
        # Readers woken and not yet done with it, and whether there are none.
        self._handling = 0
        self._all_handled = asyncio.Event()

    @property
    def watched(self) -> int:
        """How many jobs are watched now."""
        return len(self._waiting)

    def watch(self, job_id: str) -> Watch:
        if self._core.closed:
            raise RuntimeError("the backend is closed")
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._listen_forever())
        watch = _RedisWatch(self, job_id)
        self._waiting.setdefault(job_id, set()).add(watch)
        return watch

    def unwatch(self, watch: _RedisWatch) -> None:
        watches = self._waiting.get(watch.job_id)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._waiting[watch.job_id]

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def handled(self, watch: _RedisWatch) -> None:
        """`watch`'s reader is done with its wake: it waits again, or has left."""
        if watch.handling:
            watch.handling = False
            self._handling -= 1
            if not self._handling:
                self._all_handled.set()

    def _wake(self, job_id: str) -> int:
        woken = 0
        for watch in self._waiting.get(job_id, ()):
            watch.woken.set()
            if not watch.handling:
                watch.handling = True
                self._handling += 1
                self._all_handled.clear()
                woken += 1
        return woken

    async def _wake_paced(self, job_ids: Iterable[str]) -> None:
        """Wake the readers of `job_ids`, WAKE_CHUNK at a time, each time until they are
        done with it (or WAKE_PAUSE passed): each reads its job and answers, and a thousand
        jobs finished at once must not hold every other request of the process back until
        all of them have; between chunks the others have their turn."""
        woken = 0
        for job_id in job_ids:
            woken += self._wake(job_id)
            if woken >= self.WAKE_CHUNK:
                woken = 0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._all_handled.wait(), self.WAKE_PAUSE)
                await asyncio.sleep(0)

    async def _listen_forever(self) -> None:
        delay = self.RETRY_FIRST
        while True:
            pubsub: PubSub | None = None
            try:
                pubsub = await subscriber(self._core.client)
                await pubsub.subscribe(self._core.finished_channel)
                while True:
                    message = await pubsub.get_message(timeout=self.LISTEN_SECONDS)
                    if message is None:
                        continue
                    if message.get("type") == "message":
                        await self._wake_paced(i.decode() for i in message["data"].split())
                    elif message.get("type") == "subscribe":
                        # Redis confirms the subscription: from now on every finish is
                        # heard, and finishes before it were not, so every reader looks
                        # once. This comes again when redis-py reconnects and subscribes
                        # by itself after the connection was lost (it says nothing else).
                        self.subscribed, delay = True, self.RETRY_FIRST
                        await self._wake_paced(list(self._waiting))
            except (RedisError, OSError) as exc:
                log.warning("job finish notices unavailable (polling meanwhile): %s", exc)
                remap_after(self._core.client, (exc,))  # on a cluster: its node may be gone
            finally:
                self.subscribed = False
                with contextlib.suppress(RedisError, OSError):
                    if pubsub is not None:
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            await self._poll_for(delay)
            delay = min(delay * 2, self.RETRY_CAP)

    async def _poll_for(self, seconds: float) -> None:
        """Read the watched jobs' statuses every POLL_SECONDS for `seconds`, waking the
        readers of those finished or gone."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while (left := until - loop.time()) > 0:
            await asyncio.sleep(min(left, self.POLL_SECONDS))
            try:
                await self._poll_once()
            except (RedisError, OSError) as exc:
                log.debug("polling watched jobs failed: %s", exc)

    async def _poll_once(self) -> None:
        registry = self._core.registry
        placed: list[tuple[str, str]] = []  # job id, a queue it may be in
        unplaced: list[str] = []  # no queue known here: its readers look themselves
        for job_id in list(self._waiting):
            queues = registry.cached_queues(job_id[:QUEUE_TAG_LENGTH])
            if not queues:
                unplaced.append(job_id)
            placed += ((job_id, queue) for queue in queues)
        await self._wake_paced(unplaced)
        if not placed:
            return

        def build(pipe: Pipeline) -> None:
            for job_id, queue in placed:
                pipe.hget(self._core.keys(queue).job(job_id), "status")

        statuses = await self._core.pipeline(build)
        present: set[str] = set()
        finished: list[str] = []
        for (job_id, _), status in zip(placed, statuses, strict=True):
            if status is not None:
                present.add(job_id)
                if status in _FINISHED:
                    finished.append(job_id)
        # Gone, or elsewhere: their readers look themselves.
        missing = {job_id for job_id, _ in placed if job_id not in present}
        await self._wake_paced([*finished, *missing])
