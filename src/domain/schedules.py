"""Schedules: jobs submitted on a timetable (a cron expression in a time zone, or a fixed
interval), what makes one valid, and which of its ticks fire when.

A schedule's ticks are fixed points in time: a cron expression's matches in its time zone,
or `anchor + k * every`. Each tick fires at most one job, submitted with an idempotency key
made of the schedule's name and the tick's time (`tick_key`), so a tick submitted twice
stores one job and every job a schedule made says which schedule and tick it came from.

Misfires: a tick is on time while it is at most `misfire_grace` seconds late. When a
scheduler finds a due tick later than that (the service was down, or every scheduler
stalled), the whole backlog is one misfire: `run_once` fires one job, for the latest due
tick, `skip` fires none, and the schedule goes on from its first tick after now. Ticks due
within the grace all fire, each once.
"""

from __future__ import annotations

import abc
import enum
import hashlib
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import attrs

from domain.errors import FieldError, InvalidJobError, InvalidScheduleError, UnknownJobTypeError
from domain.job_types import JobTypeRegistry
from domain.jobs import JSONObject, is_name
from domain.submission import Submission, validate

# The options a schedule's jobs may carry: those of a submission that mean the same for
# every tick (a deadline in seconds after the tick, not a time).
OPTIONS: Final = ("queue", "priority", "max_attempts", "timeout", "deadline")
# Fixed intervals: at least a second, at most a year.
MIN_EVERY: Final = 1.0
MAX_EVERY: Final = 366 * 86400.0
# How late a tick may fire and still count as on time, seconds (default and bounds).
DEFAULT_GRACE: Final = 60.0
MAX_GRACE: Final = 86400.0
# Ticks one scheduler pass fires for one schedule at most; a longer backlog is a misfire.
MAX_TICKS_PER_PASS: Final = 100
# Cron expressions: the five standard fields, each short.
_CRON_MAX: Final = 200
_TIMEZONE_MAX: Final = 64


class MisfirePolicy(enum.StrEnum):
    """What a schedule does with ticks it missed. Stored and shown: never change a value."""

    RUN_ONCE = "run_once"  # one job for the latest missed tick
    SKIP = "skip"  # none


class Recurrence(abc.ABC):
    """A timetable: the ticks of a schedule, as aware datetimes."""

    @abc.abstractmethod
    def next_after(self, moment: datetime) -> datetime | None:
        """The first tick strictly after `moment`, or None when there is none ahead."""

    @abc.abstractmethod
    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        """The last tick at `moment` or before it, or None when there is none."""


class CronParser(abc.ABC):
    """Reads cron expressions: the cron arithmetic and the time zone database live outside
    the domain."""

    @abc.abstractmethod
    def parse(self, expression: str, timezone: str) -> Recurrence:
        """The ticks of a standard 5-field cron expression in the IANA `timezone`.

        Raises InvalidScheduleError naming `cron` or `timezone` for anything it cannot read
        (or an expression that never matches)."""


@attrs.frozen
class Every(Recurrence):
    """Every `seconds`, from `anchor` on: `anchor + k * seconds`, in whole milliseconds."""

    seconds: float
    anchor: datetime

    def _step_ms(self) -> int:
        return max(1, round(self.seconds * 1000))

    def next_after(self, moment: datetime) -> datetime | None:
        step, anchor = self._step_ms(), to_ms(self.anchor)
        k = max(0, (to_ms(moment) - anchor) // step + 1)
        return from_ms(anchor + k * step)

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        step, anchor, at = self._step_ms(), to_ms(self.anchor), to_ms(moment)
        if at < anchor:
            return None
        return from_ms(anchor + (at - anchor) // step * step)


def to_ms(moment: datetime) -> int:
    """Milliseconds since the epoch (rounded down): how ticks are stored and compared."""
    delta = moment - _EPOCH
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def tick_key(name: str, tick: datetime) -> str:
    """The idempotency key of a schedule's tick: `schedule:<name>:<UTC time, ms>`."""
    at = tick.astimezone(UTC)
    return f"schedule:{name}:{at.strftime('%Y-%m-%dT%H:%M:%S')}.{at.microsecond // 1000:03d}Z"


@attrs.frozen(kw_only=True)
class Schedule:
    """A validated schedule definition. Exactly one of `cron` and `every` is set."""

    name: str
    type: str
    payload: JSONObject = attrs.field(eq=False, hash=False)
    options: Mapping[str, Any] = attrs.field(eq=False, hash=False, factory=dict)
    cron: str | None = None
    timezone: str = "UTC"
    every: float | None = None
    # The start of an `every` schedule's grid of ticks (its creation, unless given).
    anchor: datetime | None = None
    misfire: MisfirePolicy = MisfirePolicy.RUN_ONCE
    misfire_grace: float = DEFAULT_GRACE

    def document(self) -> dict[str, Any]:
        """The definition as JSON-able data: how it is stored, and what `version` hashes."""
        return {
            "name": self.name,
            "type": self.type,
            "payload": dict(self.payload),
            "options": dict(self.options),
            "cron": self.cron,
            "timezone": self.timezone,
            "every": self.every,
            "anchor": None if self.anchor is None else to_ms(self.anchor),
            "misfire": self.misfire.value,
            "misfire_grace": self.misfire_grace,
        }

    @property
    def version(self) -> str:
        """Identifies the definition: the same schedule declared again keeps its ticks (and
        its anchor, which is when it was first made, not part of what was declared)."""
        document = {**self.document(), "anchor": None}
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Schedule:
        """A stored definition, as `document` wrote it (trusted: it was validated then)."""
        anchor = document.get("anchor")
        return cls(
            name=document["name"],
            type=document["type"],
            payload=document["payload"],
            options=document.get("options") or {},
            cron=document.get("cron"),
            timezone=document.get("timezone") or "UTC",
            every=document.get("every"),
            anchor=None if anchor is None else from_ms(int(anchor)),
            misfire=MisfirePolicy(document.get("misfire", MisfirePolicy.RUN_ONCE.value)),
            misfire_grace=float(document.get("misfire_grace", DEFAULT_GRACE)),
        )

    def submission(self) -> Submission:
        """What each tick submits."""
        options = self.options
        return Submission(
            type=self.type,
            payload=self.payload,
            queue=options.get("queue"),
            priority=options.get("priority"),
            max_attempts=options.get("max_attempts"),
            timeout=options.get("timeout"),
            deadline=options.get("deadline"),
        )

    def recurrence(self, cron: CronParser) -> Recurrence:
        if self.cron is not None:
            return cron.parse(self.cron, self.timezone)
        if self.every is None or self.anchor is None:  # pragma: no cover - validated
            raise ValueError(f"schedule {self.name} has neither cron nor every")
        return Every(self.every, self.anchor)


@attrs.frozen(kw_only=True)
class ScheduleRequest:
    """A schedule as declared (settings, API, CLI), not yet validated."""

    name: object
    type: object
    payload: object
    options: object = None
    cron: object = None
    timezone: object = None
    every: object = None
    misfire: object = None
    misfire_grace: object = None
    # Pause (True) or resume (False) it; None leaves it as it is (a new one runs).
    paused: object = None


def define(
    request: ScheduleRequest,
    registry: JobTypeRegistry,
    cron: CronParser,
    now: datetime,
) -> Schedule:
    """The schedule `request` declares, created at `now`; raises InvalidScheduleError listing
    every bad field (by path: `cron`, `payload.to`, `options.queue`), including what would
    make its jobs fail validation at their first tick."""
    errors: list[FieldError] = []
    name = request.name
    if not isinstance(name, str) or not is_name(name):
        errors.append(FieldError("name", "expected a name of 1-64 a-z, 0-9, '_' or '-'"))
    _timetable(request, cron, now, errors)
    misfire = MisfirePolicy.RUN_ONCE
    if request.misfire is not None:
        if isinstance(request.misfire, str) and request.misfire in set(MisfirePolicy):
            misfire = MisfirePolicy(request.misfire)
        else:
            policies = ", ".join(p.value for p in MisfirePolicy)
            errors.append(FieldError("misfire", f"expected one of: {policies}"))
    grace = DEFAULT_GRACE
    if request.misfire_grace is not None:
        value = request.misfire_grace
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 1 <= value <= MAX_GRACE
        ):
            errors.append(FieldError("misfire_grace", f"expected 1 to {MAX_GRACE:.0f} seconds"))
        else:
            grace = float(value)
    if request.paused is not None and not isinstance(request.paused, bool):
        errors.append(FieldError("paused", "expected true or false"))
    options = _options(request.options, errors)
    job_type = _job(request, options, registry, now, errors)
    if errors:
        raise InvalidScheduleError(errors)
    every = request.every
    return Schedule(
        name=str(name),
        type=str(job_type),
        payload=dict(request.payload),  # type: ignore[call-overload]
        options=options,
        cron=request.cron if isinstance(request.cron, str) else None,
        timezone=request.timezone if isinstance(request.timezone, str) else "UTC",
        every=None if every is None else float(every),  # type: ignore[arg-type]
        anchor=None if every is None else from_ms(to_ms(now)),
        misfire=misfire,
        misfire_grace=grace,
    )


def _timetable(
    request: ScheduleRequest, cron: CronParser, now: datetime, errors: list[FieldError]
) -> None:
    if (request.cron is None) == (request.every is None):
        errors.append(FieldError("cron", "give either cron or every, not both or neither"))
        return
    if request.every is not None:
        every = request.every
        if request.timezone is not None:
            errors.append(FieldError("timezone", "only with cron: every counts seconds"))
        if (
            isinstance(every, bool)
            or not isinstance(every, int | float)
            or not math.isfinite(every)
            or not MIN_EVERY <= every <= MAX_EVERY
        ):
            errors.append(
                FieldError("every", f"expected {MIN_EVERY:.0f} to {MAX_EVERY:.0f} seconds")
            )
        return
    expression, timezone = request.cron, request.timezone
    bad = False
    if not isinstance(expression, str) or not 0 < len(expression) <= _CRON_MAX:
        errors.append(FieldError("cron", "expected a 5-field cron expression (a string)"))
        bad = True
    elif len(expression.split()) != 5:
        errors.append(
            FieldError("cron", "expected 5 fields: minute hour day-of-month month day-of-week")
        )
        bad = True
    if timezone is not None and (
        not isinstance(timezone, str) or not 0 < len(timezone) <= _TIMEZONE_MAX
    ):
        errors.append(FieldError("timezone", "expected an IANA time zone name (Europe/Paris)"))
        bad = True
    if bad:
        if isinstance(timezone, str) and 0 < len(timezone) <= _TIMEZONE_MAX:
            # The time zone is checked whatever is wrong with the expression.
            try:
                cron.parse("* * * * *", timezone)
            except InvalidScheduleError as invalid:
                errors.extend(invalid.errors)
        return
    try:
        recurrence = cron.parse(str(expression), str(timezone or "UTC"))
        if recurrence.next_after(now) is None:
            errors.append(FieldError("cron", "the expression never matches"))
    except InvalidScheduleError as invalid:
        errors.extend(invalid.errors)


def _options(value: object, errors: list[FieldError]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        errors.append(FieldError("options", f"expected an object with: {', '.join(OPTIONS)}"))
        return {}
    unknown = [key for key in value if key not in OPTIONS]
    errors.extend(FieldError(f"options.{key}", "unknown option") for key in unknown)
    deadline = value.get("deadline")
    kept = {key: item for key, item in value.items() if key in OPTIONS and item is not None}
    if deadline is not None and (
        isinstance(deadline, bool) or not isinstance(deadline, int | float) or deadline < 1
    ):
        errors.append(FieldError("options.deadline", "expected 1 or more seconds after the tick"))
        kept.pop("deadline")
    return kept


def _job(
    request: ScheduleRequest,
    options: Mapping[str, Any],
    registry: JobTypeRegistry,
    now: datetime,
    errors: list[FieldError],
) -> str:
    """The job type's name, once the job a tick would submit validates (errors otherwise)."""
    if not isinstance(request.payload, Mapping):
        errors.append(FieldError("payload", "expected a JSON object"))
    submission = Submission(
        type=request.type,
        payload=request.payload,
        queue=options.get("queue"),
        priority=options.get("priority"),
        max_attempts=options.get("max_attempts"),
        timeout=options.get("timeout"),
        deadline=options.get("deadline"),
    )
    try:
        return validate(submission, registry, now).type
    except UnknownJobTypeError as unknown:
        errors.append(FieldError("type", f"expected one of: {', '.join(unknown.known)}"))
    except InvalidJobError as invalid:
        for error in invalid.errors:
            path = error.path if error.path.startswith("payload") else f"options.{error.path}"
            errors.append(FieldError(path, error.message))
    return ""


@attrs.frozen(kw_only=True)
class Plan:
    """What a scheduler does with a due schedule: the ticks to fire, in order, and the next
    tick it waits for (None: it has no tick ahead); `missed` counts a misfire's backlog."""

    ticks: tuple[datetime, ...]
    next_tick: datetime | None
    missed: bool = False
    latest: datetime | None = None  # a misfire's latest due tick (run or not)


def plan(schedule: Schedule, recurrence: Recurrence, next_tick: datetime, now: datetime) -> Plan:
    """The ticks of `schedule` due at `now`, from its stored `next_tick` (see the module's
    doc for misfires)."""
    due: list[datetime] = []
    tick: datetime | None = next_tick
    while tick is not None and tick <= now and len(due) < MAX_TICKS_PER_PASS:
        due.append(tick)
        tick = recurrence.next_after(tick)
    backlog = tick is not None and tick <= now
    late = bool(due) and (now - due[0]).total_seconds() > schedule.misfire_grace
    if not backlog and not late:
        return Plan(ticks=tuple(due), next_tick=tick)
    latest = recurrence.latest_at_or_before(now)
    fired = (latest,) if schedule.misfire is MisfirePolicy.RUN_ONCE and latest is not None else ()
    return Plan(ticks=fired, next_tick=recurrence.next_after(now), missed=True, latest=latest)


def first_tick(schedule: Schedule, recurrence: Recurrence, now: datetime) -> datetime | None:
    """The tick a new (or resumed, or redefined) schedule waits for first: the first after
    `now`."""
    return recurrence.next_after(now)
