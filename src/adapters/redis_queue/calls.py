"""One builder per script: typed values in, the script call (script, KEYS, ARGV) out.

Each ARGV layout is built here and nowhere else, in the order the script's file documents
at its top (``lua/<name>.lua``); KEYS are the queue keys the file's ``-- KEYS:`` line names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final, NamedTuple

import attrs
from redis.asyncio.client import Pipeline

from adapters.redis_queue import scripts
from adapters.redis_queue.codec import encode_error, encode_json
from adapters.redis_queue.keys import QueueKeys, RegistryKeys
from adapters.redis_queue.limits import NO_LIMITS, LimitArgs, LimitedType
from adapters.redis_queue.scripts import Script
from adapters.redis_queue.submission import Item
from domain.errors import ResultTooLargeError, UnstorableResultError
from domain.jobs import AttemptOutcome, Lease, error_summary
from domain.ports import AdmissionPolicy, QueueLimits
from domain.settlement import Ending

Arg = str | bytes | int | float


class ScriptCall(NamedTuple):
    script: Script
    keys: Sequence[str | bytes]
    args: Sequence[Arg]


def evalsha(pipe: Pipeline, call: ScriptCall) -> None:
    """Queue `call` on a pipeline (see `RedisCore.pipeline`). As a raw command: redis-py's
    cluster pipeline refuses its `evalsha` method, yet routes a raw EVALSHA by its keys."""
    pipe.execute_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)


@attrs.frozen
class Retention:
    """How long finished jobs are kept, in ms."""

    result_ttl_ms: int  # succeeded, cancelled, expired
    dead_ttl_ms: int  # dead; 0: kept for good


def ms(seconds: float) -> int:
    """A duration in whole ms, at least 1."""
    return max(1, round(seconds * 1000))


def submit(
    submissions: Sequence[Sequence[Item]],
    *,
    idempotency_ttl_ms: int,
    admission: AdmissionPolicy | None,
) -> ScriptCall:
    """SUBMIT of these submissions (each a non-empty sequence of jobs), stored in one run."""
    script = scripts.SUBMIT
    queues: dict[str, int] = {}  # queue name -> its number in the script, from 1
    keys: list[str | bytes] = []
    for item in (item for items in submissions for item in items):
        if item.queue not in queues:
            queues[item.queue] = len(queues) + 1
            keys += item.keys.named(script.keys)
    max_memory = admission.max_memory if admission is not None else None
    args: list[Arg] = [idempotency_ttl_ms, _opt(max_memory), len(queues)]
    for name in queues:
        limits = admission.limits(name) if admission is not None else QueueLimits()
        max_age = None if limits.max_age is None else max_age_ms(limits.max_age)
        args += (_opt(limits.max_depth), _opt(max_age))
    idempotency: dict[str, int] = {}  # key name -> its position in KEYS, from 1
    args.append(len(submissions))
    for items in submissions:
        args.append(len(items))
        for item in items:
            at: int | str = ""
            legacy_at: int | str = ""
            if item.key_name is not None:
                at = idempotency.get(item.key_name, 0)
                if not at:
                    keys.append(item.key_name)
                    at = idempotency[item.key_name] = len(keys)
            if item.legacy_key_name is not None:
                legacy_at = idempotency.get(item.legacy_key_name, 0)
                if not legacy_at:
                    keys.append(item.legacy_key_name)
                    legacy_at = idempotency[item.legacy_key_name] = len(keys)
            args += (
                queues[item.queue],
                item.job_id,
                at,
                legacy_at,
                item.fingerprint,
                _opt(item.run_at_ms),
                _opt(item.deadline_ms),
                item.priority,
                item.unique or "",
                len(item.fields),
                *item.fields,
            )
    return ScriptCall(script, keys, args)


def max_age_ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def claim(
    keys: QueueKeys,
    *,
    limit: int,
    lease_ms: int,
    worker_id: str,
    retention: Retention,
    limits: LimitArgs = NO_LIMITS,
    grants: Sequence[Grant] | None = None,
) -> ScriptCall:
    """CLAIM; with `grants` (Redis Cluster), the permits `reserve` granted per limited type,
    and no key of the limits' slot."""
    script = scripts.CLAIM
    args: tuple[Arg, ...] = (
        limit,
        lease_ms,
        worker_id,
        retention.result_ttl_ms,
        retention.dead_ttl_ms,
    )
    named = keys.named(script.keys)
    if grants is not None:
        granted: list[Arg] = [*args, "granted", len(grants)]
        for grant in grants:
            granted += (grant.job_type, grant.permits, grant.wait_ms)
        return ScriptCall(script, named, granted)
    if limits.keys:
        with_limits: list[Arg] = [*args, *limits.args]
        return ScriptCall(script, (*named, *limits.keys), with_limits)
    return ScriptCall(script, named, (*args, 0))


def recover(keys: QueueKeys, retention: Retention, limits: LimitArgs = NO_LIMITS) -> ScriptCall:
    script = scripts.RECOVER
    args: list[Arg] = [retention.result_ttl_ms, retention.dead_ttl_ms, *limits.names]
    return ScriptCall(script, keys.named(script.keys), args)


def renew(
    keys: QueueKeys, lease_ms: int, leases: Sequence[Lease], limits: LimitArgs = NO_LIMITS
) -> ScriptCall:
    script = scripts.RENEW
    args: list[Arg] = [lease_ms, len(limits.slots)]
    for lease in leases:
        args += (lease.job_id, lease.token)
    return ScriptCall(script, (*keys.named(script.keys), *limits.slots), args)


def set_progress(keys: QueueKeys, lease: Lease, progress: int) -> ScriptCall:
    script = scripts.SET_PROGRESS
    return ScriptCall(script, keys.named(script.keys), (lease.job_id, lease.token, progress))


# SETTLE's values for one attempt (see lua/settle.lua): four for a success, six otherwise.
Attempt = tuple[str | bytes, ...]

# The outcomes, as sent: bytes, so nothing is encoded again per call.
_OUTCOMES: Final = {o: o.value.encode() for o in AttemptOutcome}
_SUCCEEDED: Final = _OUTCOMES[AttemptOutcome.SUCCEEDED]


def attempt(
    job_id: str | bytes,
    token: str | bytes,
    ending: Ending,
    max_result_bytes: int | None = None,
) -> Attempt:
    """How one attempt ended, for SETTLE. Raises UnstorableResultError for a success whose
    result cannot be stored (ResultTooLargeError: longer, as JSON, than `max_result_bytes`),
    and ValueError for a retry time that is not a number."""
    if ending.outcome is AttemptOutcome.SUCCEEDED:
        try:
            result = encode_json(ending.result)
        except (TypeError, ValueError, OverflowError) as exc:
            raise UnstorableResultError(str(exc)) from None
        if max_result_bytes is not None and len(result) > max_result_bytes:
            raise ResultTooLargeError(len(result), max_result_bytes)
        return (job_id, token, _SUCCEEDED, result)
    retry_in = b""
    if ending.retry_in is not None:
        if not math.isfinite(ending.retry_in):
            raise ValueError(f"a retry time must be a finite number, got {ending.retry_in}")
        retry_in = repr(float(ending.retry_in)).encode()
    error = ending.error
    if error is None:
        return (job_id, token, _OUTCOMES[ending.outcome], b"", retry_in, b"")
    summary = error_summary(error)
    return (job_id, token, _OUTCOMES[ending.outcome], encode_error(error), retry_in, summary)


def settle(
    keys: QueueKeys,
    retention: Retention,
    attempts: Sequence[Attempt],
    limits: LimitArgs = NO_LIMITS,
) -> ScriptCall:
    script = scripts.SETTLE
    args: list[Arg] = [retention.result_ttl_ms, retention.dead_ttl_ms, len(limits.slots)]
    for one in attempts:
        args += one
    return ScriptCall(script, (*keys.named(script.keys), *limits.slots), args)


def held_by(keys: QueueKeys, worker_id: str) -> ScriptCall:
    script = scripts.HELD_BY
    return ScriptCall(script, keys.named(script.keys), (worker_id,))


def requeue(keys: QueueKeys, job_id: str) -> ScriptCall:
    script = scripts.REQUEUE
    return ScriptCall(script, keys.named(script.keys), (job_id,))


def cancel(keys: QueueKeys, job_id: str, retention: Retention) -> ScriptCall:
    script = scripts.CANCEL
    return ScriptCall(script, keys.named(script.keys), (job_id, retention.result_ttl_ms))


def cancel_requested(keys: QueueKeys, leases: Sequence[Lease]) -> ScriptCall:
    script = scripts.CANCEL_REQUESTED
    args: list[Arg] = []
    for lease in leases:
        args += (lease.job_id, lease.token)
    return ScriptCall(script, keys.named(script.keys), args)


def resume(keys: QueueKeys) -> ScriptCall:
    script = scripts.RESUME
    return ScriptCall(script, keys.named(script.keys), ())


def queue_stats(keys: QueueKeys) -> ScriptCall:
    script = scripts.QUEUE_STATS
    return ScriptCall(script, keys.named(script.keys), ())


def situation(
    keys: QueueKeys, job_id: str, now_us: int, limits: LimitArgs = NO_LIMITS
) -> ScriptCall:
    """SITUATION of one job; `now_us` the caller's time (the script asks no TIME)."""
    script = scripts.SITUATION
    return ScriptCall(
        script, (*keys.named(script.keys), *limits.keys), (job_id, *limits.args, now_us)
    )


def wake_parked(keys: QueueKeys, job_ids: Sequence[str | bytes]) -> ScriptCall:
    script = scripts.WAKE_PARKED
    return ScriptCall(script, keys.named(script.keys), job_ids)


def heartbeat(keys: QueueKeys, worker_id: str, ttl_ms: int) -> ScriptCall:
    script = scripts.HEARTBEAT
    return ScriptCall(script, keys.named(script.keys), (worker_id, ttl_ms))


def idle(keys: QueueKeys, retention: Retention) -> ScriptCall:
    script = scripts.IDLE
    args = (retention.result_ttl_ms, retention.dead_ttl_ms)
    return ScriptCall(script, keys.named(script.keys), args)


# -- the registry of queue names (see `registry.py`) ------------------------------------------


def register(
    keys: RegistryKeys,
    groups: Sequence[Sequence[tuple[str, str, bool]]],
    *,
    max_queues: int | None,
    strict: bool,
) -> ScriptCall:
    """REGISTER of `groups` of names (each: name, its tag, whether its queue may hold jobs
    whose ids do not start with the tag); strict: each group admitted whole or refused."""
    script = scripts.REGISTER
    args: list[Arg] = [_opt(max_queues), "1" if strict else "0"]
    for number, group in enumerate(groups):
        for name, tag, legacy in group:
            args += (number, name, tag, "1" if legacy else "0")
    return ScriptCall(script, keys.named(script.keys), args)


def registry_scan(keys: RegistryKeys, cursor: str | bytes, count: int) -> ScriptCall:
    script = scripts.REGISTRY_SCAN
    return ScriptCall(script, keys.named(script.keys), (cursor, count))


def forget_queues(
    keys: RegistryKeys, names: Sequence[tuple[str, str, bytes]], *, grace_ms: int
) -> ScriptCall:
    """FORGET_QUEUES of `names` (name, its tag, its last use read before finding it idle)."""
    script = scripts.FORGET_QUEUES
    args: list[Arg] = [grace_ms]
    for name, tag, generation in names:
        args += (name, tag, generation)
    return ScriptCall(script, keys.named(script.keys), args)


def worker_seen(keys: RegistryKeys, worker_id: str, info: bytes, ttl_ms: int) -> ScriptCall:
    script = scripts.WORKER_SEEN
    return ScriptCall(script, keys.named(script.keys), (worker_id, info, ttl_ms))


# -- the flow limits' own slot, on Redis Cluster (see `permits.py`) ----------------------------


@attrs.frozen
class Grant:
    """What `reserve` granted one limited type: `permits` (the most jobs of it the claim may
    start), and when none: the ms until the claim should look again (-1: not known)."""

    job_type: str
    permits: int
    wait_ms: int


def reserve(limits: LimitArgs, *, most: int, lease_ms: int, reservation: str) -> ScriptCall:
    script = scripts.RESERVE
    return ScriptCall(script, limits.keys, (most, lease_ms, reservation, *limits.args))


def convert(
    limits: LimitArgs,
    *,
    reservation: str,
    lease_ms: int,
    granted: Sequence[Grant],
    started: Mapping[str, Sequence[bytes]],
) -> ScriptCall:
    """CONVERT of the permits `granted` (those with any), `started` the ids of the jobs the
    claim started per limited type."""
    by_name = {t.name: t for t in limits.types}
    used = [(by_name[g.job_type], g.permits) for g in granted if g.permits > 0]
    args: list[Arg] = [reservation, lease_ms, len(used)]
    for limited, permits in used:
        ids = started.get(limited.name, ())
        args += (limited.concurrency, permits, len(ids), *ids)
    return ScriptCall(scripts.CONVERT, [k for t, _ in used for k in t.keys], args)


def extend(limits: LimitArgs, lease_ms: int, leases: Sequence[Lease]) -> ScriptCall | None:
    """EXTEND of the slots of `leases` whose types have a concurrency; None if none has."""
    slots = {t.name: t.slots for t in limits.types if t.concurrency}
    by_key: dict[bytes, list[str]] = {}
    for lease in (held for held in leases if held.job.type in slots):
        by_key.setdefault(slots[lease.job.type], []).append(lease.job_id)
    args: list[Arg] = [lease_ms, len(by_key)]
    for ids in by_key.values():
        args += (len(ids), *ids)
    return ScriptCall(scripts.EXTEND, tuple(by_key), args) if by_key else None


def release(limits: LimitArgs, ended: Sequence[tuple[str, str | bytes]]) -> ScriptCall:
    """RELEASE of the slots of `ended` attempts (job type, job id), each of a type with a
    concurrency."""
    slots = {t.name: t.slots for t in limits.types if t.concurrency}
    keys: list[bytes] = []
    args: list[Arg] = []
    for job_type, job_id in ended:
        if slots[job_type] not in keys:
            keys.append(slots[job_type])
        args += (keys.index(slots[job_type]) + 1, job_id)
    return ScriptCall(scripts.RELEASE, keys, args)


def throttled(limited: LimitedType, now_us: int) -> ScriptCall:
    """THROTTLED of one limited type; `now_us` the caller's time (the script asks no TIME)."""
    args = (limited.rate, limited.per_ms, limited.concurrency, now_us)
    return ScriptCall(scripts.THROTTLED, limited.keys, args)


def _opt(value: int | None) -> int | str:
    return "" if value is None else value
