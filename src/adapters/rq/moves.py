"""RQ's moves for a settled attempt: what `domain.settlement.decide` said, written the way RQ
keeps jobs (its queues and registries), inside the pipeline RQ is about to execute.

A success and a dead letter are RQ's own moves (its finished and failed registries); these
are the others: back to the head of the queue, a retry waiting in the scheduled registry
until its `retry_at`, and `cancelled` (RQ's canceled registry).
"""

from __future__ import annotations

from typing import Any

from redis.client import Pipeline
from rq.defaults import DEFAULT_RESULT_TTL
from rq.job import Job as RqJob
from rq.job import JobStatus as RqStatus
from rq.queue import Queue
from rq.utils import now as rq_now
from rq.utils import utcformat

from adapters.rq.codec import SERIALIZER
from domain.jobs import JobStatus
from domain.settlement import Settlement


def write_settlement(
    rq_job: RqJob,
    meta: dict[str, Any],
    settlement: Settlement,
    queue: Queue,
    pipeline: Pipeline,
    *,
    ran: bool = True,
) -> None:
    """Write an attempt's settlement that is neither a success nor a dead letter, with the
    job's meta as it now stands. An attempt that never `ran` leaves no start time behind."""
    rq_job.meta = meta
    # Only ever set to steer RQ's abandoned-job sweep here (see `settling`): not ours to store.
    rq_job.retries_left = None
    status = settlement.status
    if status is JobStatus.QUEUED:
        # What RQ's queue does to enqueue a job, in a pipeline that already holds commands
        # (its `enqueue_job` would start a transaction of its own).
        rq_job.origin = queue.name
        rq_job.enqueued_at = rq_now()
        rq_job.set_status(RqStatus.QUEUED, pipeline=pipeline)
        rq_job.save(pipeline=pipeline)
        pipeline.sadd(queue.redis_queues_keys, queue.key)
        queue.push_job_id(rq_job.id, pipeline=pipeline, at_front=settlement.head)
    elif status is JobStatus.FAILED and settlement.retry_at is not None:
        rq_job.set_status(RqStatus.SCHEDULED, pipeline=pipeline)
        rq_job.save(pipeline=pipeline)
        # Scored to the microsecond, not RQ's whole second: RQ's scheduler takes a job once
        # the current whole second has reached its score, so it never runs early.
        registry_key: str = queue.scheduled_job_registry.key
        pipeline.zadd(registry_key, {rq_job.id: settlement.retry_at.timestamp()})
        pipeline.sadd(queue.redis_queues_keys, queue.key)
    elif status is JobStatus.CANCELLED:
        write_cancelled(rq_job, meta, queue, pipeline, ran=ran)
    else:
        raise ValueError(f"RQ keeps a {status} job itself: not a move to write here")


def write_cancelled(
    rq_job: RqJob, meta: dict[str, Any], queue: Queue, pipeline: Pipeline, *, ran: bool = True
) -> None:
    """End the job `cancelled`: into RQ's canceled registry and kept as long as a result, never
    retried. An attempt that never `ran` leaves no start time behind."""
    ttl = rq_job.get_result_ttl(DEFAULT_RESULT_TTL)
    ended = rq_now()
    rq_job.meta = meta
    rq_job.set_status(RqStatus.CANCELED, pipeline=pipeline)
    pipeline.hset(rq_job.key, "meta", SERIALIZER.dumps(meta))
    pipeline.hset(rq_job.key, "ended_at", utcformat(ended))
    if not ran:
        pipeline.hset(rq_job.key, "started_at", "")
    registry_key: str = queue.canceled_job_registry.key
    pipeline.zadd(registry_key, {rq_job.id: ended.timestamp() + ttl})
    pipeline.expire(rq_job.key, ttl)
