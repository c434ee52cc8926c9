"""Schedules in one process's memory: the reference semantics of `ScheduleStore`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import attrs

from domain.ports.schedules import DueWork, Firing, ScheduleStore, StoredSchedule, Upsert
from domain.schedules import Schedule


@attrs.define
class _Entry:
    schedule: Schedule
    paused: bool
    next_tick: datetime | None
    last_tick: datetime | None = None
    last_job_id: str | None = None


class MemoryScheduleStore(ScheduleStore):
    """Every method is one step with no await inside, so each is atomic on the event loop."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        # (name, tick) -> the firing
        self._firings: dict[tuple[str, datetime], Firing] = {}
        self._changes = 0  # puts, deletes, pauses and resumes (`mark`)

    def _view(self, entry: _Entry) -> StoredSchedule:
        return StoredSchedule(
            schedule=entry.schedule,
            paused=entry.paused,
            next_tick=None if entry.paused else entry.next_tick,
            last_tick=entry.last_tick,
            last_job_id=entry.last_job_id,
        )

    async def put(
        self, schedule: Schedule, first_tick: datetime | None, *, paused: bool | None
    ) -> Upsert:
        entry = self._entries.get(schedule.name)
        self._changes += 1
        if entry is None:
            self._entries[schedule.name] = _Entry(schedule, bool(paused), first_tick)
            return Upsert.CREATED
        outcome = Upsert.UNCHANGED
        if entry.schedule.version != schedule.version:
            entry.schedule, entry.next_tick = schedule, first_tick
            outcome = Upsert.REPLACED
        if paused is not None and paused != entry.paused:
            entry.paused = paused
            if not paused:
                entry.next_tick = first_tick
        return outcome

    async def get(self, name: str) -> StoredSchedule | None:
        entry = self._entries.get(name)
        return None if entry is None else self._view(entry)

    async def list(self) -> Sequence[StoredSchedule]:
        return [self._view(self._entries[name]) for name in sorted(self._entries)]

    async def delete(self, name: str) -> bool:
        self._changes += 1
        for key in [key for key in self._firings if key[0] == name]:
            del self._firings[key]
        return self._entries.pop(name, None) is not None

    async def pause(self, name: str) -> bool:
        self._changes += 1
        entry = self._entries.get(name)
        if entry is None:
            return False
        entry.paused = True
        return True

    async def resume(self, name: str, version: str, next_tick: datetime | None) -> bool:
        self._changes += 1
        entry = self._entries.get(name)
        if entry is None or entry.schedule.version != version:
            return False
        if entry.paused:
            entry.paused, entry.next_tick = False, next_tick
        return True

    async def mark(self) -> str:
        return str(self._changes)

    async def due(self, now: datetime, limit: int) -> DueWork:
        running = [e for e in self._entries.values() if not e.paused and e.next_tick is not None]
        running.sort(key=lambda e: e.next_tick or now)
        due = [self._view(e) for e in running if e.next_tick is not None and e.next_tick <= now]
        stale = sorted(
            (f for f in self._firings.values() if f.lease_until <= now),
            key=lambda f: f.lease_until,
        )
        ahead = [e.next_tick for e in running if e.next_tick is not None and e.next_tick > now]
        ahead += [f.lease_until for f in self._firings.values() if f.lease_until > now]
        return DueWork(
            due=due[:limit],
            stale=[(f, self._entries[f.name].schedule) for f in stale[:limit]],
            next_due=min(ahead, default=None),
        )

    async def claim(
        self,
        stored: StoredSchedule,
        next_tick: datetime | None,
        ticks: Sequence[datetime],
        now: datetime,
        lease_until: datetime,
    ) -> bool:
        entry = self._entries.get(stored.schedule.name)
        if (
            entry is None
            or entry.paused
            or entry.schedule.version != stored.schedule.version
            or entry.next_tick != stored.next_tick
        ):
            return False
        entry.next_tick = next_tick
        for tick in ticks:
            self._firings[(entry.schedule.name, tick)] = Firing(
                name=entry.schedule.name, tick=tick, claimed_at=now, lease_until=lease_until
            )
        return True

    async def take_over(self, firing: Firing, lease_until: datetime) -> bool:
        current = self._firings.get((firing.name, firing.tick))
        if current is None or current.lease_until != firing.lease_until:
            return False
        self._firings[(firing.name, firing.tick)] = attrs.evolve(current, lease_until=lease_until)
        return True

    async def fired(self, firing: Firing, job_id: str | None) -> None:
        self._firings.pop((firing.name, firing.tick), None)
        entry = self._entries.get(firing.name)
        if (
            job_id is not None
            and entry is not None
            and (entry.last_tick is None or firing.tick >= entry.last_tick)
        ):
            entry.last_tick, entry.last_job_id = firing.tick, job_id
