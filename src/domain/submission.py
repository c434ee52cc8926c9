"""What a client asks for, and how it becomes a valid `Job` (or every reason it cannot)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import attrs

from domain.errors import FieldError, InvalidJobError
from domain.job_types import JobTypeRegistry
from domain.jobs import (
    PRIORITY_MAX,
    PRIORITY_MIN,
    UNIQUE_KEY_MAX,
    Job,
    JSONObject,
    is_name,
    is_unique_key,
    new_job_id,
)

# How far ahead a job may be scheduled, and its deadline set.
MAX_SCHEDULE_AHEAD: Final = 366 * 86400.0
# Jobs in one batch submission.
MAX_BATCH: Final = 1000
# Payload fields a `unique_for` may name.
MAX_UNIQUE_FOR: Final = 16


@attrs.frozen(kw_only=True)
class Submission:
    """A client's request for work, as decoded from the wire but not yet validated."""

    type: object
    payload: object
    max_attempts: object = None
    timeout: object = None
    queue: object = None  # default: the job type's
    priority: object = None  # default: the job type's
    delay: object = None  # seconds from now; or
    run_at: object = None  # an RFC 3339 time
    deadline: object = None  # an RFC 3339 time, or seconds from now
    unique_key: object = None  # at most one live job of the queue under this key; or
    unique_for: object = None  # payload field names whose values (with the type) make it

    def fingerprint(self) -> str:
        """Identifies what was asked for, so a repeat under an idempotency key can be told
        apart from a different request reusing it."""
        document: dict[str, object] = {
            "type": self.type,
            "payload": self.payload,
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
            "queue": self.queue,
            "priority": self.priority,
            "delay": self.delay,
            "run_at": self.run_at,
            "deadline": self.deadline,
        }
        # Only when given, so fingerprints of submissions without them stay as they were.
        if self.unique_key is not None:
            document["unique_key"] = self.unique_key
        if self.unique_for is not None:
            document["unique_for"] = self.unique_for
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=repr)
        return hashlib.sha256(canonical.encode()).hexdigest()


def validate(
    submission: Submission,
    registry: JobTypeRegistry,
    now: datetime,
    *,
    idempotency_key: str | None = None,
    trace_context: str | None = None,
    new_id: Callable[[str], str] = new_job_id,
) -> Job:
    """The job this submission would create at `now`; raises UnknownJobTypeError, or
    InvalidJobError listing every bad field, not just the first."""
    job_type = registry.resolve(submission.type)
    errors: list[FieldError] = []
    payload: dict[str, Any] | None = None
    try:
        payload = job_type.schema.validate(submission.payload)
    except InvalidJobError as invalid:
        errors.extend(invalid.errors)
    max_attempts = _bounded_int(
        submission.max_attempts,
        "max_attempts",
        default=job_type.retry.max_attempts,
        limit=job_type.retry.max_attempts_limit,
        errors=errors,
    )
    timeout = _bounded_number(
        submission.timeout,
        "timeout",
        default=job_type.timeout,
        limit=job_type.timeout_limit,
        errors=errors,
    )
    queue = job_type.queue
    if submission.queue is not None:
        if isinstance(submission.queue, str) and is_name(submission.queue):
            queue = submission.queue
        else:
            errors.append(FieldError("queue", "expected a name of 1-64 a-z, 0-9, '_' or '-'"))
    priority = _priority(submission.priority, job_type.priority, errors)
    run_at = _run_at(submission, now, errors)
    deadline = _deadline(submission.deadline, now, errors)
    if deadline is not None and deadline <= max(now, run_at or now):
        errors.append(FieldError("deadline", "expected a time after the job may start"))
    known = job_type.schema.field_names
    unique_key = _unique_key(submission, job_type.name, known, payload, errors)
    if errors or payload is None:
        raise InvalidJobError(errors)
    return Job.submitted(
        id=new_id(queue),
        type=job_type.name,
        payload=payload,
        queue=queue,
        priority=priority,
        max_attempts=max_attempts,
        timeout=timeout,
        now=now,
        run_at=run_at,
        deadline=deadline,
        idempotency_key=idempotency_key,
        unique_key=unique_key,
        trace_context=trace_context,
    )


def unique_key_for(job_type: str, payload: JSONObject, fields: Sequence[str]) -> str:
    """The unique key made of the values of payload `fields` and the job type: the type, then
    the SHA-256 of them as canonical JSON (sorted keys, no spaces), so two submissions share
    it exactly when their type and those values are equal, whatever else their payload holds."""
    values = {name: payload[name] for name in fields}
    document = {"type": job_type, "fields": values}
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{job_type}:{hashlib.sha256(canonical.encode()).hexdigest()}"


def _unique_key(
    submission: Submission,
    job_type: str,
    known: frozenset[str],
    payload: JSONObject | None,
    errors: list[FieldError],
) -> str | None:
    """The job's unique key, if the submission asks for one. `known` are the type's payload
    fields; `payload` is None when it is invalid (a field's presence is then not checked)."""
    key, fields = submission.unique_key, submission.unique_for
    if key is not None and fields is not None:
        errors.append(FieldError("unique_for", "give either unique_key or unique_for, not both"))
        return None
    if key is not None:
        if isinstance(key, str) and is_unique_key(key):
            return key
        expected = f"expected 1-{UNIQUE_KEY_MAX} characters, no control characters"
        errors.append(FieldError("unique_key", expected))
        return None
    if fields is None:
        return None
    if not isinstance(fields, list) or not 1 <= len(fields) <= MAX_UNIQUE_FOR:
        expected = f"expected a list of 1 to {MAX_UNIQUE_FOR} payload field names"
        errors.append(FieldError("unique_for", expected))
        return None
    bad = len(errors)
    for index, name in enumerate(fields):
        path = f"unique_for[{index}]"
        if not isinstance(name, str):
            errors.append(FieldError(path, "expected a payload field name"))
        elif name in fields[:index]:
            errors.append(FieldError(path, f"{name!r} is named twice"))
        elif name not in known:
            errors.append(FieldError(path, f"{job_type} payloads have no field {name!r}"))
        elif payload is not None and name not in payload:
            # An optional field left out, with no default: no value to key on.
            errors.append(FieldError(path, f"the payload does not give {name!r}"))
    if len(errors) > bad or payload is None:
        return None
    return unique_key_for(job_type, payload, fields)


def _priority(value: object, default: int, errors: list[FieldError]) -> int:
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        if PRIORITY_MIN <= value <= PRIORITY_MAX:
            return value
        errors.append(FieldError("priority", f"expected {PRIORITY_MIN} to {PRIORITY_MAX}"))
    else:
        errors.append(FieldError("priority", "expected an integer"))
    return default


def _run_at(submission: Submission, now: datetime, errors: list[FieldError]) -> datetime | None:
    if submission.delay is not None and submission.run_at is not None:
        errors.append(FieldError("run_at", "give either delay or run_at, not both"))
        return None
    if submission.delay is not None:
        delay = submission.delay
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not math.isfinite(delay)
        ):
            errors.append(FieldError("delay", "expected a number of seconds"))
        elif not 0 <= delay <= MAX_SCHEDULE_AHEAD:
            errors.append(FieldError("delay", f"expected 0 to {MAX_SCHEDULE_AHEAD:g} seconds"))
        else:
            return now + timedelta(seconds=delay) if delay > 0 else None
        return None
    if submission.run_at is not None:
        moment = _moment(submission.run_at, "run_at", errors)
        if moment is not None and moment > now + timedelta(seconds=MAX_SCHEDULE_AHEAD):
            errors.append(FieldError("run_at", "expected a time within a year"))
            return None
        # A time already past runs now.
        return moment if moment is not None and moment > now else None
    return None


def _deadline(value: object, now: datetime, errors: list[FieldError]) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and 0 < value <= MAX_SCHEDULE_AHEAD:
            return now + timedelta(seconds=value)
        errors.append(
            FieldError("deadline", f"expected more than 0 and at most {MAX_SCHEDULE_AHEAD:g} s")
        )
        return None
    moment = _moment(value, "deadline", errors, what="an RFC 3339 time or seconds from now")
    if moment is not None and moment > now + timedelta(seconds=MAX_SCHEDULE_AHEAD):
        errors.append(FieldError("deadline", "expected a time within a year"))
        return None
    return moment


def _moment(
    value: object, name: str, errors: list[FieldError], *, what: str = "an RFC 3339 time"
) -> datetime | None:
    """An RFC 3339 date-time with its offset (`2026-01-02T03:04:05Z`), as an aware datetime."""
    if isinstance(value, str) and 20 <= len(value) <= 40 and value[10:11] in ("T", "t"):
        try:
            moment = datetime.fromisoformat(value.replace("z", "Z"))
        except ValueError:
            moment = None
        if moment is not None and moment.utcoffset() is not None:
            return moment
    errors.append(FieldError(name, f"expected {what} with a UTC offset"))
    return None


def _bounded_int(
    value: object, name: str, *, default: int, limit: int, errors: list[FieldError]
) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        errors.append(FieldError(name, "expected an integer"))
    elif not 1 <= value <= limit:
        errors.append(FieldError(name, f"expected 1 to {limit} for this job type"))
    else:
        return value
    return default


def _bounded_number(
    value: object, name: str, *, default: float, limit: float, errors: list[FieldError]
) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        errors.append(FieldError(name, "expected a number of seconds"))
    elif not 0 < value <= limit:
        errors.append(FieldError(name, f"expected more than 0 and at most {limit:g} seconds"))
    else:
        return float(value)
    return default
