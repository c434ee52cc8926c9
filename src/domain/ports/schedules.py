"""Keeping schedules, and handing each due tick to exactly one scheduler."""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from datetime import datetime

import attrs

from domain.schedules import Schedule


@attrs.frozen(kw_only=True)
class StoredSchedule:
    """A schedule as kept: its definition and where it stands."""

    schedule: Schedule
    paused: bool
    next_tick: datetime | None  # None while paused, or when it has no tick ahead
    last_tick: datetime | None = None  # the latest tick that submitted a job
    last_job_id: str | None = None


@attrs.frozen(kw_only=True)
class Firing:
    """A tick a scheduler took and has not yet said it submitted: another takes it over once
    `lease_until` passes (the job's idempotency key makes a second submit store nothing)."""

    name: str
    tick: datetime
    claimed_at: datetime  # when the tick was first taken
    lease_until: datetime


@attrs.frozen(kw_only=True)
class DueWork:
    """What a scheduler finds at `now`: the schedules whose next tick has come, the ticks
    whose scheduler went quiet, and when it next has something to do (the next tick of any
    schedule, or the lapse of a firing's lease)."""

    due: Sequence[StoredSchedule]
    stale: Sequence[tuple[Firing, Schedule]]
    next_due: datetime | None


class Upsert(enum.StrEnum):
    CREATED = "created"
    REPLACED = "replaced"  # another definition was kept under the name: its ticks start anew
    UNCHANGED = "unchanged"  # the same definition: it keeps its ticks


class ScheduleStore(abc.ABC):
    """Schedules by name, with their next tick, shared by every process of a deployment."""

    @abc.abstractmethod
    async def put(
        self, schedule: Schedule, first_tick: datetime | None, *, paused: bool | None
    ) -> Upsert:
        """Keep `schedule` under its name. A new one, or one whose definition changed,
        waits for `first_tick`; the same definition again changes nothing but `paused`
        (None: as it is; a new schedule runs)."""

    @abc.abstractmethod
    async def get(self, name: str) -> StoredSchedule | None: ...

    @abc.abstractmethod
    async def list(self) -> Sequence[StoredSchedule]:
        """Every schedule, by name."""

    @abc.abstractmethod
    async def delete(self, name: str) -> bool:
        """Forget a schedule (its ticks taken but not submitted are dropped); False when
        there was none."""

    @abc.abstractmethod
    async def pause(self, name: str) -> bool:
        """Stop its ticks until `resume`; False when there is no such schedule."""

    @abc.abstractmethod
    async def resume(self, name: str, version: str, next_tick: datetime | None) -> bool:
        """Let it tick again from `next_tick` (the ticks of the pause are not misfires); a
        running one is left alone. False when there is no schedule of that `version`."""

    @abc.abstractmethod
    async def mark(self) -> str:
        """A value that changes whenever a schedule is put, deleted, paused or resumed: a
        scheduler that finds it as it was at its last pass has nothing new to look at
        before that pass's `next_due`."""

    @abc.abstractmethod
    async def due(self, now: datetime, limit: int) -> DueWork:
        """At most `limit` due schedules and stale firings at `now`."""

    @abc.abstractmethod
    async def claim(
        self,
        stored: StoredSchedule,
        next_tick: datetime | None,
        ticks: Sequence[datetime],
        now: datetime,
        lease_until: datetime,
    ) -> bool:
        """Take `ticks` of a due schedule and move its next tick on, in one atomic step,
        only if it still stands where `stored` says (the same definition and next tick):
        of all the schedulers that found it due, one gets True. The ticks are firings
        until `fired`."""

    @abc.abstractmethod
    async def take_over(self, firing: Firing, lease_until: datetime) -> bool:
        """Take a stale firing over, if its lease is still the one `firing` saw."""

    @abc.abstractmethod
    async def fired(self, firing: Firing, job_id: str | None) -> None:
        """The tick's job is stored (or can never be): it is no longer a firing."""
