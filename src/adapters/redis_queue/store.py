"""Reading jobs from Redis: one job, a page of them, and where a waiting one stands."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from adapters.redis_client import redis_errors
from adapters.redis_queue import calls, listing
from adapters.redis_queue.codec import FIELDS, RawFields, UndecodableJobError, decode_job
from adapters.redis_queue.core import RedisCore, log
from domain.jobs import QUEUE_TAG_LENGTH, Job, JobStatus, is_job_id
from domain.limits import LimitKind, Throttle
from domain.ports import JobPage, JobQuery, JobSituation, JobStore


class RedisJobStore(JobStore):
    def __init__(self, core: RedisCore) -> None:
        self._core = core

    async def get(self, job_id: str) -> Job | None:
        """One or two round trips, however many queues there are (see `registry.py`)."""
        with redis_errors():
            found = await self._core.find(job_id, FIELDS)
        if found is None:
            return None
        queue, raw = found
        return decoded_or_none(raw, job_id=job_id, queue_name=queue)

    async def list_jobs(self, query: JobQuery) -> JobPage:
        """Newest first by the time each job entered its current status (see `listing.py`)."""
        core = self._core
        with redis_errors():
            queues = [query.queue] if query.queue is not None else sorted(await core.queues())
            return await listing.list_jobs(
                query,
                queues=[core.keys(queue) for queue in queues],
                pipeline=core.pipeline,
                decode=decoded_or_none,
            )

    async def situation(self, job_id: str) -> JobSituation | None:
        """One script call when this process remembers the id's tag (and the registry's
        HGET of the tag when it does not); the script reads only what the job's status needs
        (for a job that is not queued: the job alone)."""
        core = self._core
        if not is_job_id(job_id):
            return None
        tag = job_id[:QUEUE_TAG_LENGTH]
        with redis_errors():
            tried = core.registry.cached_queues(tag)
            for queue in tried:
                situation = await self._situation_in(queue, job_id)
                if situation is not None:
                    return situation
            for queue in await core.registry.tagged(tag):
                if queue not in tried:
                    situation = await self._situation_in(queue, job_id)
                    if situation is not None:
                        return situation
            # An id without its queue's tag, or a queue gone: the registry's whole search.
            found = await core.queue_of(job_id)
            if found is None:
                return None
            return await self._situation_in(found, job_id)

    async def _situation_in(self, queue: str, job_id: str) -> JobSituation | None:
        core = self._core
        # The caller's clock, for which workers count as live: one command less than TIME, and
        # skew only moves when a lapsed worker stops counting.
        now_us = time.time_ns() // 1000
        call = calls.situation(core.keys(queue), job_id, now_us, core.limits)
        raw, ahead, paused, workers, drain, throttle = await core.run(call)
        job = decoded_or_none(raw)
        if job is None:
            return None
        limits = core.cluster_limits
        if limits is not None and job.status is JobStatus.QUEUED and not paused:
            # On Redis Cluster the limits are read apart, on their own slot.
            limited = next((t for t in limits.types if t.name == job.type), None)
            if limited is not None:
                throttle = await core.run(calls.throttled(limited, now_us))
        return JobSituation(
            job=job,
            ahead=None if ahead < 0 else int(ahead),
            paused=bool(paused),
            workers=None if workers < 0 else int(workers),
            drain_rate=_rate(drain),
            throttle=_throttle(throttle),
        )


def _rate(value: bytes | None) -> float | None:
    """A rate the scripts answer as a decimal string, or None (Lua's false) when unmeasured."""
    return None if value is None else float(value)


def _throttle(value: bytes | None) -> Throttle | None:
    """SITUATION's `throttle`: ``rate <ms>``, ``concurrency``, or None (Lua's false)."""
    if value is None:
        return None
    kind, _, until_ms = value.decode().partition(" ")
    until = datetime.fromtimestamp(int(until_ms) / 1000, UTC) if until_ms else None
    return Throttle(LimitKind(kind), until)


def decoded_or_none(
    raw: RawFields, *, job_id: str | None = None, queue_name: str | None = None
) -> Job | None:
    """The job from its FIELDS (`decode_job`, given what its key says when known), or None
    when there is none or it cannot be read (logged)."""
    try:
        return decode_job(raw, job_id=job_id, queue_name=queue_name)
    except UndecodableJobError as exc:
        shown = raw[0] or job_id  # a compact hash holds no id: its key says it
        log.warning("job %r is stored in a form that cannot be read: %s", shown, exc)
        return None
