"""Schedules in Redis, shared by every process of a deployment (either Redis backend).

Keys, all under one hash tag ``{prefix:schedules}`` (``S``), passed to each script in KEYS
(so the scripts run on Redis Cluster too):

- ``S:defs``     hash: name -> ``"<version> <definition JSON>"`` (`Schedule.document`)
- ``S:next``     zset: name -> its next tick, ms since the epoch; running schedules only
- ``S:paused``   set of the paused schedules' names
- ``S:last``     hash: name -> ``"<tick ms> <job id>"``, the latest tick that stored a job
- ``S:firing``   zset: ``"<name> <tick ms> <claimed ms>"`` -> lease expiry, ms: ticks a
                 scheduler took and has not said it submitted (see `domain.scheduling`)
- ``S:changed``  counter of the puts, deletes, pauses and resumes (`mark`)

A queue named ``schedules`` shares the hash tag (so the slot), never a key: a queue's keys
are ``queued``, ``active``, ``job:<id>``, ... (`adapters.redis_queue.keys`).

The scripts live in `lua/`, one per move, their KEYS and ARGV documented at their top.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from importlib import resources
from typing import Any, Final

import redis.asyncio

from adapters.redis_client import redis_errors
from domain.ports.schedules import DueWork, Firing, ScheduleStore, StoredSchedule, Upsert
from domain.schedules import Schedule, from_ms, to_ms

__all__ = ["RedisScheduleStore"]

_VERSION_LENGTH: Final = 16


def _source(name: str) -> str:
    return resources.files(__name__).joinpath("lua", f"{name}.lua").read_text("utf-8")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _schedule(value: bytes | str) -> Schedule:
    return Schedule.from_document(json.loads(_text(value)[_VERSION_LENGTH + 1 :]))


def _ms(moment: datetime | None) -> str:
    return "" if moment is None else str(to_ms(moment))


class RedisScheduleStore(ScheduleStore):
    """Each move is one script on the schedules' keys; reads are one pipelined round trip."""

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be non-empty and hold no braces, got {prefix!r}")
        base = f"{{{prefix}:schedules}}:"
        self._defs, self._next, self._paused = base + "defs", base + "next", base + "paused"
        self._last, self._firing = base + "last", base + "firing"
        self._changed = base + "changed"
        self._client = client
        self._scripts = {
            name: client.register_script(_source(name))
            for name in ("put", "delete", "pause", "resume", "due", "claim", "take_over", "fired")
        }

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        with redis_errors():
            return await self._scripts[name](keys=list(keys), args=list(args))

    async def put(
        self, schedule: Schedule, first_tick: datetime | None, *, paused: bool | None
    ) -> Upsert:
        version = schedule.version
        value = f"{version} {json.dumps(schedule.document(), separators=(',', ':'))}"
        flag = "" if paused is None else "1" if paused else "0"
        answer = await self._run(
            "put",
            (self._defs, self._next, self._paused, self._changed),
            (schedule.name, value, version, _ms(first_tick), flag),
        )
        return Upsert(_text(answer))

    async def get(self, name: str) -> StoredSchedule | None:
        with redis_errors():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hget(self._defs, name)
                pipe.sismember(self._paused, name)
                pipe.zscore(self._next, name)
                pipe.hget(self._last, name)
                value, paused, score, last = await pipe.execute()
        if value is None:
            return None
        return self._stored(name, value, bool(paused), score, last)

    def _stored(
        self, name: str, value: bytes, paused: bool, score: float | None, last: bytes | None
    ) -> StoredSchedule:
        last_tick = last_job = None
        if last is not None:
            tick, _, job = _text(last).partition(" ")
            last_tick, last_job = from_ms(int(tick)), job
        return StoredSchedule(
            schedule=_schedule(value),
            paused=paused,
            next_tick=None if paused or score is None else from_ms(int(score)),
            last_tick=last_tick,
            last_job_id=last_job,
        )

    async def list(self) -> Sequence[StoredSchedule]:
        with redis_errors():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._defs)
                pipe.smembers(self._paused)
                pipe.zrange(self._next, 0, -1, withscores=True)
                pipe.hgetall(self._last)
                defs, paused, ticks, last = await pipe.execute()
        paused_names = {_text(name) for name in paused}
        next_ticks = {_text(name): score for name, score in ticks}
        lasts = {_text(name): value for name, value in last.items()}
        stored = []
        for raw_name, value in defs.items():
            name = _text(raw_name)
            stored.append(
                self._stored(
                    name, value, name in paused_names, next_ticks.get(name), lasts.get(name)
                )
            )
        return sorted(stored, key=lambda s: s.schedule.name)

    async def delete(self, name: str) -> bool:
        keys = (self._defs, self._next, self._paused, self._last, self._firing, self._changed)
        return bool(await self._run("delete", keys, (name,)))

    async def pause(self, name: str) -> bool:
        keys = (self._defs, self._next, self._paused, self._changed)
        return bool(await self._run("pause", keys, (name,)))

    async def resume(self, name: str, version: str, next_tick: datetime | None) -> bool:
        keys = (self._defs, self._next, self._paused, self._changed)
        return bool(await self._run("resume", keys, (name, version, _ms(next_tick))))

    async def mark(self) -> str:
        with redis_errors():
            value = await self._client.get(self._changed)
        return "0" if value is None else _text(value)

    async def due(self, now: datetime, limit: int) -> DueWork:
        due, stale, ahead = await self._run(
            "due", (self._defs, self._next, self._firing), (to_ms(now), limit)
        )
        schedules = []
        for i in range(0, len(due), 2):
            schedule = _schedule(due[i + 1])
            schedules.append(
                StoredSchedule(schedule=schedule, paused=False, next_tick=from_ms(int(due[i])))
            )
        firings = []
        for i in range(0, len(stale), 3):
            name, tick, claimed = _text(stale[i]).split(" ")
            firing = Firing(
                name=name,
                tick=from_ms(int(tick)),
                claimed_at=from_ms(int(claimed)),
                lease_until=from_ms(int(stale[i + 1])),
            )
            firings.append((firing, _schedule(stale[i + 2])))
        return DueWork(
            due=schedules,
            stale=firings,
            next_due=None if ahead is None else from_ms(int(ahead)),
        )

    async def claim(
        self,
        stored: StoredSchedule,
        next_tick: datetime | None,
        ticks: Sequence[datetime],
        now: datetime,
        lease_until: datetime,
    ) -> bool:
        schedule = stored.schedule
        args = (
            schedule.name,
            schedule.version,
            _ms(stored.next_tick),
            _ms(next_tick),
            to_ms(lease_until),
            to_ms(now),
            *(to_ms(tick) for tick in ticks),
        )
        return bool(await self._run("claim", (self._defs, self._next, self._firing), args))

    def _member(self, firing: Firing) -> str:
        return f"{firing.name} {to_ms(firing.tick)} {to_ms(firing.claimed_at)}"

    async def take_over(self, firing: Firing, lease_until: datetime) -> bool:
        args = (self._member(firing), to_ms(firing.lease_until), to_ms(lease_until))
        return bool(await self._run("take_over", (self._firing,), args))

    async def fired(self, firing: Firing, job_id: str | None) -> None:
        args = (self._member(firing), firing.name, to_ms(firing.tick), job_id or "")
        await self._run("fired", (self._firing, self._last, self._defs), args)
