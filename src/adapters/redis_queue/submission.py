"""Submissions: the jobs to send to the SUBMIT script, and what its answers mean.

One SUBMIT run stores the submissions of every `submit` call made in one event-loop tick
(see `batching.py`), each all or nothing on its own. A submission that touches one queue is
batched with the others of its queue, so its script run touches only that queue's hash tag
(its idempotency keys are under the tag too); the others share one run across queues, which
needs one Redis primary. On Redis Cluster, a submission spanning queues is split: each
queue's part is its own submission, all or nothing on its own (see `submitter.py`). A
single server also reads where an older Conveyor held idempotency keys (prefix-wide,
read-only): those submissions go in the shared run, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

import attrs

from adapters.redis_queue.codec import encode_job, to_micros
from adapters.redis_queue.keys import (
    QueueKeys,
    idempotency_digest,
    idempotency_key,
    legacy_idempotency_key,
    unique_digest,
)
from domain.errors import AdmissionRefusedError, IdempotencyConflictError
from domain.jobs import JobStatus, queue_tag
from domain.ports import AdmissionPolicy, NewJob, Submitted

# The batching group of submissions that span queues or carry idempotency keys (no queue
# name is empty).
SHARED_GROUP: Final = ""
_SUBMITTABLE: Final = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED})
# SUBMIT's flags, one per job: stored; the idempotency key holds another job, or the unique
# key does (its id follows).
_STORED: Final = ord("1")
_HELD: Final = ord("k")
_UNIQUE: Final = ord("u")


class Item(NamedTuple):
    """One job of a submission, ready to be sent (a tuple: one is built per job submitted)."""

    keys: QueueKeys
    queue: str
    job_id: str
    client_key: str | None  # the client's idempotency key
    key_name: str | None  # where Redis holds it
    legacy_key_name: str | None  # where an older Conveyor held it (single server only)
    fingerprint: str
    run_at_ms: int | None
    deadline_ms: int | None
    priority: int
    unique: str | None  # the digest of its unique key
    fields: Sequence[str | bytes]
    # Its id does not start with its queue's tag: the registry must search the queue for it.
    legacy: bool


def items_of(
    jobs: Sequence[NewJob],
    *,
    prefix: str,
    keys_of: Callable[[str], QueueKeys],
    legacy_keys: bool = True,
    compact: bool = False,
) -> list[Item]:
    """The items to send for `jobs`; raises ValueError (before anything is sent) for a job
    that is neither queued nor scheduled, or an invalid queue name. `legacy_keys`: look up
    idempotency keys where an older Conveyor held them too (a single server). `compact`:
    write the hashes in the compact layout (`codec.encode_job`)."""
    items: list[Item] = []
    for new in jobs:
        job = new.job
        if job.status not in _SUBMITTABLE:
            raise ValueError(
                f"job {job.id} must be queued or scheduled to be submitted, not {job.status}"
            )
        key = new.idempotency_key
        if key is not None:
            job = attrs.evolve(job, idempotency_key=key)
        fields = encode_job(job, with_status=False, compact=compact)
        unique = None
        if job.unique_key is not None:
            unique = unique_digest(job.unique_key)
            fields += ("unique", unique)
        keys = keys_of(job.queue)
        key_name = legacy_key_name = None
        if key is not None:
            digest = idempotency_digest(key)
            key_name = idempotency_key(keys, digest)
            if legacy_keys:
                legacy_key_name = legacy_idempotency_key(prefix, digest)
        items.append(
            Item(
                keys=keys,
                queue=job.queue,
                job_id=job.id,
                client_key=key,
                key_name=key_name,
                legacy_key_name=legacy_key_name,
                fingerprint=new.fingerprint,
                run_at_ms=None if job.run_at is None else _ms_ceil(to_micros(job.run_at)),
                deadline_ms=None if job.deadline is None else _ms_ceil(to_micros(job.deadline)),
                priority=job.priority,
                unique=unique,
                fields=fields,
                legacy=not job.id.startswith(queue_tag(job.queue)),
            )
        )
    return items


def group_of(items: Sequence[Item]) -> str:
    """The batching group: the queue when the submission touches only its keys."""
    queue = items[0].queue
    if all(item.queue == queue and item.legacy_key_name is None for item in items):
        return queue
    return SHARED_GROUP


def answer_of(
    answer: Sequence[Any], items: Sequence[Item], admission: AdmissionPolicy | None
) -> list[Submitted]:
    """The submission's outcome from SUBMIT's answer; raises what refused it (the answer is
    that error when the registry refused one of its queues)."""
    if isinstance(answer, Exception):
        raise answer
    if answer[0] == 1:
        holders = iter(answer[2:])
        return [
            Submitted(next(holders).decode(), False, flag == _UNIQUE)
            if flag in (_HELD, _UNIQUE)
            else Submitted(item.job_id, flag == _STORED)
            for flag, item in zip(answer[1], items, strict=True)
        ]
    kind = answer[1].decode()
    if kind == "conflict":
        index = int(answer[2])
        raise IdempotencyConflictError(items[index].client_key or "", index)
    retry_after = admission.retry_after if admission is not None else 1.0
    if kind == "memory":
        used, limit = int(answer[2]), int(answer[3])
        if used < 0:
            reason = "Redis refuses INFO to scripts, so its memory use cannot be checked"
        else:
            reason = f"Redis uses {used} bytes of memory, over the limit of {limit}"
        raise AdmissionRefusedError(None, reason, retry_after)
    queue = _queue_named(answer[2], items)
    if kind == "depth":
        reason = f"{int(answer[3])} jobs would be waiting, over its limit of {int(answer[4])}"
    else:
        reason = (
            f"its oldest queued job has waited {int(answer[3]) / 1000:.1f} s,"
            f" over its limit of {int(answer[4]) / 1000:g} s"
        )
    raise AdmissionRefusedError(queue, reason, retry_after)


def _queue_named(base: bytes, items: Sequence[Item]) -> str | None:
    text = base.decode()
    return next((item.queue for item in items if item.keys.base == text), None)


def _ms_ceil(micros: int) -> int:
    """Milliseconds, rounded up: a time in ms is never earlier than the exact one."""
    return -(-micros // 1000)
