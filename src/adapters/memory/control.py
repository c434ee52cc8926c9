"""Reading jobs, operators' moves and queue figures, in memory."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta

import attrs

from adapters.memory.state import MemoryState, Presence
from domain.errors import InvalidTransitionError, JobNotFoundError, UniqueKeyHeldError
from domain.jobs import REQUEUABLE, Job, JobStatus
from domain.ports import (
    Connection,
    JobControl,
    JobPage,
    JobQuery,
    JobSituation,
    JobStore,
    JobWatcher,
    QueueMonitor,
    QueuePauser,
    QueueStats,
    Watch,
    WorkerInfo,
    WorkerLoad,
)
from domain.rates import QueueRates

S = JobStatus


class MemoryJobStore(JobStore):
    def __init__(self, state: MemoryState) -> None:
        self._state = state

    async def get(self, job_id: str) -> Job | None:
        return self._state.jobs.get(job_id)

    async def list_jobs(self, query: JobQuery) -> JobPage:
        # The cursor is a position in `order`, which only grows at its end: jobs submitted
        # while a client pages do not shift the pages it has yet to read.
        order = self._state.order
        end = len(order)
        if query.cursor and query.cursor.isdigit():
            end = min(end, int(query.cursor))
        page: list[Job] = []
        for position in range(end - 1, -1, -1):
            job_id = order[position]
            if job_id is None:
                continue
            job = self._state.jobs[job_id]
            if (
                (query.status is None or job.status == query.status)
                and (query.type is None or job.type == query.type)
                and (query.queue is None or job.queue == query.queue)
            ):
                if len(page) == query.limit:
                    return JobPage(page, str(position + 1))
                page.append(job)
        return JobPage(page, None)

    async def situation(self, job_id: str) -> JobSituation | None:
        state = self._state
        job = state.jobs.get(job_id)
        if job is None:
            return None
        ahead = state.ready[job.queue].ahead_of(job) if job.status is S.QUEUED else None
        throttle = None
        if job.status is S.QUEUED and state.gate is not None:
            throttle = state.gate.throttle(job.type, state.clock.now().timestamp())
        return JobSituation(
            job=job,
            ahead=ahead,
            paused=job.queue in state.paused,
            workers=state.live_workers(state.clock.now()).get(job.queue, 0),
            drain_rate=(
                state.rates_of(job.queue).reading(0.0).drain
                if job.status is S.QUEUED and job.queue not in state.paused
                else None
            ),
            throttle=throttle,
        )


class MemoryJobControl(JobControl):
    def __init__(self, state: MemoryState) -> None:
        self._state = state

    async def requeue(self, job_id: str) -> Job:
        state = self._state
        job = state.jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        if job.status not in REQUEUABLE:
            raise InvalidTransitionError(job_id, job.status, S.QUEUED)
        if job.unique_key is not None:
            holder = state.unique_holder(job.queue, job.unique_key)
            if holder is not None and holder != job_id:
                raise UniqueKeyHeldError(job_id, job.status, job.unique_key, holder)
            state.unique[(job.queue, job.unique_key)] = job_id
        job = job.transition(
            S.QUEUED,
            attempts=0,
            error=None,
            result=None,
            progress=None,
            started_at=None,
            finished_at=None,
            retry_at=None,
            cancel_requested_at=None,
        )
        state.put(job, state.clock.now())
        return job

    async def cancel(self, job_id: str) -> Job:
        state = self._state
        job = state.jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        now = state.clock.now()
        if job.status.is_waiting:
            state.unready(job)
            job = job.transition(S.CANCELLED, finished_at=now)
            state.put(job, now)
        elif job.status is S.ACTIVE:
            if job.cancel_requested_at is None:
                job = attrs.evolve(job, cancel_requested_at=now)
                state.jobs[job_id] = job
        else:
            raise InvalidTransitionError(job_id, job.status, S.CANCELLED)
        return job


class MemoryQueuePauser(QueuePauser):
    def __init__(self, state: MemoryState) -> None:
        self._state = state

    async def pause(self, queue: str) -> None:
        self._state.admit_queues([queue], self._state.clock.now())
        self._state.paused.add(queue)
        self._state.rates_of(queue).paused()

    async def resume(self, queue: str) -> None:
        self._state.paused.discard(queue)
        self._state.wakeup.set()


class MemoryQueueMonitor(QueueMonitor):
    def __init__(self, state: MemoryState) -> None:
        self._state = state

    async def queue_stats(self, queues: Sequence[str] | None = None) -> Sequence[QueueStats]:
        state = self._state
        now = state.clock.now()
        counts: dict[str, Counter[JobStatus]] = {}
        for job in state.jobs.values():
            counts.setdefault(job.queue, Counter())[job.status] += 1
        workers = state.live_workers(now)
        names = sorted({*counts, *state.paused, *workers}) if queues is None else queues
        # Read without keeping anything for a name never used (any name may be asked for).
        unused = QueueRates()
        rates = {name: state.rates.get(name, unused).reading(now.timestamp()) for name in names}
        return [
            QueueStats(
                name=name,
                counts={status: counts.get(name, Counter())[status] for status in JobStatus},
                oldest_queued_age=state.oldest_age(name, now),
                paused=name in state.paused,
                workers=workers.get(name, 0),
                rate_in=rates[name].rate_in,
                rate_out=rates[name].rate_out,
                drain_rate=rates[name].drain,
            )
            for name in names
        ]

    async def heartbeat(
        self, worker_id: str, queues: Sequence[str], ttl: float, load: WorkerLoad | None = None
    ) -> None:
        expires = self._state.clock.now() + timedelta(seconds=ttl)
        self._state.workers[worker_id] = Presence(frozenset(queues), expires, load)

    async def workers(self) -> Sequence[WorkerInfo]:
        state = self._state
        state.live_workers(state.clock.now())  # forgets the lapsed
        return [
            WorkerInfo(
                id=worker_id,
                host=None,  # in this process: there is no other host
                pid=None,
                queues=tuple(sorted(presence.queues)),
                in_flight=None if presence.load is None else presence.load.in_flight,
                done=None if presence.load is None else presence.load.done,
            )
            for worker_id, presence in sorted(state.workers.items())
        ]

    async def forget_worker(self, worker_id: str) -> None:
        self._state.workers.pop(worker_id, None)


class _MemoryWatch(Watch):
    def __init__(self, state: MemoryState, job_id: str) -> None:
        self._state = state
        self._job_id = job_id
        self._woken = asyncio.Event()
        state.watches.setdefault(job_id, set()).add(self._woken)

    async def wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), seconds)
        self._woken.clear()

    def close(self) -> None:
        watches = self._state.watches.get(self._job_id)
        if watches is not None:
            watches.discard(self._woken)
            if not watches:
                del self._state.watches[self._job_id]


class MemoryJobWatcher(JobWatcher):
    """An event per reader, set when its job reaches a finished status."""

    def __init__(self, state: MemoryState) -> None:
        self._state = state

    def watch(self, job_id: str) -> Watch:
        return _MemoryWatch(self._state, job_id)


class MemoryConnection(Connection):
    """Nothing to connect to: always up, always safe."""

    async def ping(self) -> None:
        return None

    async def verify(self) -> Sequence[str]:
        return ()

    async def close(self) -> None:
        return None
