"""Reading Conveyor's jobs out of RQ: one job, a listing, and where a waiting one stands.

RQ's statuses map to ours (`jobs.decode_job`); a retry waiting for its time is RQ's
`scheduled` with an attempt behind it, due at its score in RQ's scheduled registry.

Listing: RQ keeps no index of all jobs, so a submission also adds the job's id to one sorted
set per key prefix (`<prefix>:rq:jobs`), scored by a counter (submission order). A listing
walks it newest first and filters what it reads, so a filtered listing costs time in
proportion to the jobs it skips; ids whose job hash has expired are dropped from the index as
they are met.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, cast

import attrs
from rq.defaults import RQ_KEY_PREFIX
from rq.exceptions import NoSuchJobError
from rq.results import Result

from adapters.rq.codec import (
    CANCEL_REQUESTED_AT,
    CANCELLED_AT,
    SERIALIZER,
    UndecodableJobError,
    moment,
)
from adapters.rq.connection import RqConnection
from adapters.rq.jobs import ConveyorRqJob, decode_job
from domain.jobs import Job, JobStatus, is_job_id
from domain.ports import JobPage, JobQuery, JobSituation, JobStore

log = logging.getLogger("conveyor.rq_queue")

_LIST_CHUNK: Final = 200


def result_key(job_id: str) -> str:
    """Where RQ keeps a job's results (`rq.results.Result.get_key`)."""
    return f"{RQ_KEY_PREFIX}:results:{job_id}"


class RqJobStore(JobStore):
    def __init__(self, rq: RqConnection) -> None:
        self._rq = rq

    async def get(self, job_id: str) -> Job | None:
        if not is_job_id(job_id):
            return None
        return (await self._rq.read(self.read_one, job_id))[1]

    def read_one(self, job_id: str) -> tuple[ConveyorRqJob | None, Job | None]:
        """The job as RQ holds it and as we see it (None, None when there is no such job;
        a job that is not ours is read but not seen)."""
        client = self._rq.client
        with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(ConveyorRqJob.key_for(job_id))
            pipe.xrevrange(result_key(job_id), "+", "-", count=1)
            raw, latest = pipe.execute()
        rq_job, job = self._decode(job_id, raw, latest)
        if job is not None and job.status is JobStatus.FAILED:
            (job,) = self._with_retry_times([job])
        return rq_job, job

    def _decode(
        self, job_id: str, raw: dict[bytes, bytes], latest: list[Any]
    ) -> tuple[ConveyorRqJob | None, Job | None]:
        if not raw:
            return None, None
        rq_job = ConveyorRqJob(job_id, connection=self._rq.client, serializer=SERIALIZER)
        try:
            rq_job.restore(raw)
            result = None
            if latest:
                result_id, payload = latest[0]
                result = Result.restore(
                    job_id, result_id.decode(), payload, self._rq.client, serializer=SERIALIZER
                )
            return rq_job, decode_job(
                rq_job,
                result,
                cancelled_at=moment(raw.get(CANCELLED_AT.encode())),
                cancel_requested_at=moment(raw.get(CANCEL_REQUESTED_AT.encode())),
            )
        except (UndecodableJobError, NoSuchJobError, ValueError, TypeError) as exc:
            log.warning("job %r in RQ is not a Conveyor job we can read: %s", job_id, exc)
            return rq_job, None

    def _with_retry_times(self, jobs: Sequence[Job]) -> list[Job]:
        """The jobs, each failed one with the time its retry is due (its score in RQ's
        scheduled registry)."""
        waiting = [job for job in jobs if job.status is JobStatus.FAILED]
        if not waiting:
            return list(jobs)
        with self._rq.client.pipeline(transaction=False) as pipe:
            for job in waiting:
                pipe.zscore(self._rq.keys(job.queue).scheduled, job.id)
            scores = dict(zip((job.id for job in waiting), pipe.execute(), strict=True))
        return [
            attrs.evolve(job, retry_at=datetime.fromtimestamp(scores[job.id], UTC))
            if scores.get(job.id) is not None
            else job
            for job in jobs
        ]

    async def list_jobs(self, query: JobQuery) -> JobPage:
        """Newest first by submission; the cursor is a position in submission order."""
        return await self._rq.read(self._list, query)

    def _list(self, query: JobQuery) -> JobPage:
        client = self._rq.client
        upper = f"({int(query.cursor)}" if query.cursor and query.cursor.isdigit() else "+inf"
        found: list[tuple[Job, int]] = []
        while len(found) <= query.limit:
            entries = cast(
                list[tuple[bytes, float]],
                client.zrevrangebyscore(
                    self._rq.index_key, upper, "-inf", start=0, num=_LIST_CHUNK, withscores=True
                ),
            )
            if not entries:
                break
            ids = [member.decode() for member, _ in entries]
            with client.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(ConveyorRqJob.key_for(job_id))
                    pipe.xrevrange(result_key(job_id), "+", "-", count=1)
                replies = pipe.execute()
            gone: list[str] = []
            for n, (job_id, (_, score)) in enumerate(zip(ids, entries, strict=True)):
                raw, latest = replies[2 * n], replies[2 * n + 1]
                if not raw:
                    gone.append(job_id)
                    continue
                _, job = self._decode(job_id, raw, latest)
                if job is not None and _matches(job, query):
                    found.append((job, int(score)))
            if gone:
                client.zrem(self._rq.index_key, *gone)
            upper = f"({int(entries[-1][1])}"
        page = found[: query.limit]
        more = len(found) > query.limit
        jobs = self._with_retry_times([job for job, _ in page])
        return JobPage(jobs, str(page[-1][1]) if more else None)

    async def situation(self, job_id: str) -> JobSituation | None:
        if not is_job_id(job_id):
            return None
        return await self._rq.read(self._situation, job_id)

    def _situation(self, job_id: str) -> JobSituation | None:
        _, job = self.read_one(job_id)
        if job is None:
            return None
        if job.status is not JobStatus.QUEUED:  # nothing else explains why it waits
            return JobSituation(job=job, ahead=None, paused=False, workers=None)
        keys = self._rq.keys(job.queue)
        client = self._rq.client
        with client.pipeline(transaction=False) as pipe:
            pipe.lpos(keys.queue, job_id)
            pipe.smembers(keys.workers)
            self._rq.present_script(keys=[keys.presence], client=pipe)
            position, workers, present = pipe.execute()
        live = int(present)
        if workers:
            with client.pipeline(transaction=False) as pipe:
                for worker_key in workers:
                    pipe.exists(worker_key)
                live += sum(1 for alive in pipe.execute() if alive)
        ahead = int(position) if job.status is JobStatus.QUEUED and position is not None else None
        return JobSituation(job=job, ahead=ahead, paused=False, workers=live)


def _matches(job: Job, query: JobQuery) -> bool:
    return (
        (query.status is None or job.status == query.status)
        and (query.type is None or job.type == query.type)
        and (query.queue is None or job.queue == query.queue)
    )
