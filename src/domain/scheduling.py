"""The use cases of schedules: declaring and managing them (`ScheduleService`), and firing
their ticks (`Scheduler`, one pass at a time; the entry points loop it).

Any number of processes run a Scheduler on the same store. Each pass asks the store for the
due schedules; for each, the plan (`domain.schedules.plan`) says which ticks fire, and the
store's `claim` (a compare-and-set on the schedule's next tick) gives them to one process
only, which submits each through the JobService with the tick's idempotency key and then
says so (`fired`). A process that dies between the two leaves a firing whose lease lapses;
the next pass of any process takes it over and submits again under the same key, which
stores nothing if the first submit got through. So a tick makes one job, as long as the
idempotency key outlives the firing: a firing older than the key's retention (less a lease)
is dropped rather than risk a second job.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final

import attrs

from domain.errors import (
    AdmissionRefusedError,
    IdempotencyConflictError,
    InvalidJobError,
    NotReplicatedError,
    QueueUnavailableError,
    ScheduleNotFoundError,
    UnknownJobTypeError,
    UnsupportedOperationError,
)
from domain.job_service import JobService
from domain.job_types import JobTypeRegistry
from domain.ports import Clock
from domain.ports.schedules import Firing, ScheduleStore, StoredSchedule, Upsert
from domain.schedules import (
    CronParser,
    Recurrence,
    Schedule,
    ScheduleRequest,
    define,
    first_tick,
    plan,
    tick_key,
)

# A scheduler that took a tick has this long to submit its job before another takes over.
FIRING_LEASE: Final = 10.0
# Due schedules and stale firings one pass handles at most (the next pass goes on).
PASS_LIMIT: Final = 100
# The longest a scheduler sleeps between passes. It sleeps until its next tick or a
# firing's lease lapses, and meanwhile asks every CHANGE_CHECK seconds (one read) whether
# a schedule was put, deleted, paused or resumed (`changed`), so it sees those soon.
MAX_SLEEP: Final = 60.0
CHANGE_CHECK: Final = 1.0
_PAST_THE_TICK: Final = 0.002
_NO_STORE: Final = "this backend keeps no schedules"


@attrs.define
class ScheduleService:
    """Declaring, reading, pausing and removing schedules. Without a store (a backend that
    cannot keep them), every use case raises UnsupportedOperationError (`schedules`)."""

    _store: ScheduleStore | None
    _registry: JobTypeRegistry
    _cron: CronParser
    _clock: Clock

    def _required(self, operation: str) -> ScheduleStore:
        if self._store is None:
            raise UnsupportedOperationError(operation, "schedules", _NO_STORE)
        return self._store

    def validate(self, request: ScheduleRequest) -> Schedule:
        """The schedule `request` declares; raises InvalidScheduleError listing every bad
        field, including what its jobs would be refused for."""
        return define(request, self._registry, self._cron, self._clock.now())

    async def put(self, request: ScheduleRequest) -> tuple[StoredSchedule, Upsert]:
        """Create the schedule, or replace the one of its name. The same definition again
        keeps its ticks (start-up declares every schedule of the settings each time)."""
        store = self._required("put_schedule")
        schedule = self.validate(request)
        now = self._clock.now()
        first = first_tick(schedule, schedule.recurrence(self._cron), now)
        paused = request.paused if isinstance(request.paused, bool) else None
        outcome = await store.put(schedule, first, paused=paused)
        return await self.get(schedule.name), outcome

    async def get(self, name: str) -> StoredSchedule:
        stored = await self._required("get_schedule").get(name)
        if stored is None:
            raise ScheduleNotFoundError(name)
        return stored

    async def list(self) -> Sequence[StoredSchedule]:
        return await self._required("list_schedules").list()

    async def delete(self, name: str) -> None:
        if not await self._required("delete_schedule").delete(name):
            raise ScheduleNotFoundError(name)

    async def pause(self, name: str) -> StoredSchedule:
        if not await self._required("pause_schedule").pause(name):
            raise ScheduleNotFoundError(name)
        return await self.get(name)

    async def resume(self, name: str) -> StoredSchedule:
        store = self._required("resume_schedule")
        for _ in range(3):  # the definition may be replaced meanwhile: read it again
            stored = await self.get(name)
            schedule = stored.schedule
            first = first_tick(schedule, schedule.recurrence(self._cron), self._clock.now())
            if await store.resume(name, schedule.version, first):
                return await self.get(name)
        raise ScheduleNotFoundError(name)


@attrs.frozen(kw_only=True)
class TickOutcome:
    """What became of one tick a scheduler handled, for its log."""

    name: str
    tick: datetime
    job_id: str | None = None
    created: bool = False  # False: the tick's job existed (an earlier submit got through)
    error: str | None = None  # why no job was stored: it is retried, unless `dropped`
    dropped: bool = False  # given up for good (its job can no longer be made)
    missed: bool = False  # a misfire's catch-up (or, with no job, the misfire's skipped ticks)


@attrs.frozen(kw_only=True)
class PassReport:
    outcomes: tuple[TickOutcome, ...]
    sleep: float  # seconds until the next pass is due


@attrs.define
class Scheduler:
    """Fires due ticks: one `run_pass` at a time, from any number of processes at once."""

    _store: ScheduleStore
    _jobs: JobService
    _cron: CronParser
    _clock: Clock
    # How long the backend keeps idempotency keys: a tick is never submitted again after.
    _idempotency_ttl: float
    _lease: float = FIRING_LEASE
    _max_sleep: float = MAX_SLEEP
    _recurrences: dict[str, Recurrence] = attrs.field(factory=dict, init=False)
    _mark: str | None = attrs.field(default=None, init=False)  # the store's, at the last pass

    def _recurrence(self, schedule: Schedule) -> Recurrence:
        key = schedule.version
        recurrence = self._recurrences.get(key)
        if recurrence is None:
            if len(self._recurrences) > 1000:
                self._recurrences.clear()
            recurrence = self._recurrences[key] = schedule.recurrence(self._cron)
        return recurrence

    async def changed(self) -> bool:
        """Whether a schedule was put, deleted, paused or resumed since the last pass began
        (True before the first)."""
        return self._mark is None or await self._store.mark() != self._mark

    async def run_pass(self) -> PassReport:
        self._mark = await self._store.mark()
        now = self._clock.now()
        work = await self._store.due(now, PASS_LIMIT)
        outcomes: list[TickOutcome] = []
        lease_until = now + timedelta(seconds=self._lease)
        for stored in work.due:
            outcomes += await self._fire_due(stored, now, lease_until)
        for firing, schedule in work.stale:
            outcome = await self._take_over(firing, schedule, now, lease_until)
            if outcome is not None:
                outcomes.append(outcome)
        sleep = self._max_sleep
        if work.due or work.stale:
            # Look again at once: this pass moved those schedules' next ticks (or another
            # scheduler did), and the ones past PASS_LIMIT wait.
            sleep = 0.0
        elif work.next_due is not None:
            until = (work.next_due - self._clock.now()).total_seconds()
            # A little past the tick, so a timer that fires early does not wake too soon.
            sleep = min(self._max_sleep, max(0.0, until) + _PAST_THE_TICK)
        return PassReport(outcomes=tuple(outcomes), sleep=sleep)

    async def _fire_due(
        self, stored: StoredSchedule, now: datetime, lease_until: datetime
    ) -> list[TickOutcome]:
        schedule = stored.schedule
        if stored.next_tick is None:  # pragma: no cover - never due
            return []
        the_plan = plan(schedule, self._recurrence(schedule), stored.next_tick, now)
        if not await self._store.claim(
            stored, the_plan.next_tick, the_plan.ticks, now, lease_until
        ):
            return []  # another scheduler has it
        if the_plan.missed and not the_plan.ticks:
            latest = the_plan.latest or stored.next_tick
            return [TickOutcome(name=schedule.name, tick=latest, missed=True)]
        outcomes = []
        for tick in the_plan.ticks:
            firing = Firing(name=schedule.name, tick=tick, claimed_at=now, lease_until=lease_until)
            outcome = await self._submit(schedule, firing)
            outcomes.append(attrs.evolve(outcome, missed=the_plan.missed))
        return outcomes

    async def _take_over(
        self, firing: Firing, schedule: Schedule, now: datetime, lease_until: datetime
    ) -> TickOutcome | None:
        # Past this, the tick's idempotency key may be gone: submitting again could store
        # a second job.
        window = self._idempotency_ttl - 2 * self._lease
        if (now - firing.claimed_at).total_seconds() > window:
            await self._store.fired(firing, None)
            error = "its idempotency key may have expired: dropped rather than risk a second job"
            return TickOutcome(name=firing.name, tick=firing.tick, error=error, dropped=True)
        if not await self._store.take_over(firing, lease_until):
            return None
        return await self._submit(schedule, attrs.evolve(firing, lease_until=lease_until))

    async def _submit(self, schedule: Schedule, firing: Firing) -> TickOutcome:
        name, tick = schedule.name, firing.tick
        try:
            accepted = await self._jobs.submit(
                schedule.submission(), idempotency_key=tick_key(name, tick)
            )
        except IdempotencyConflictError:
            # The schedule was redefined after an earlier submit of this tick got through.
            await self._store.fired(firing, None)
            return TickOutcome(name=name, tick=tick)
        except (InvalidJobError, UnknownJobTypeError, UnsupportedOperationError) as exc:
            # The job types changed since the schedule was made: no retry can help.
            await self._store.fired(firing, None)
            return TickOutcome(name=name, tick=tick, error=str(exc), dropped=True)
        except (AdmissionRefusedError, QueueUnavailableError, NotReplicatedError) as exc:
            # Left a firing: taken over (and submitted again, under the same idempotency
            # key) once its lease lapses.
            return TickOutcome(name=name, tick=tick, error=str(exc))
        await self._store.fired(firing, accepted.job.id)
        return TickOutcome(name=name, tick=tick, job_id=accepted.job.id, created=accepted.created)
