"""An in-process JobQueue: the reference semantics for unit tests and single-process demos.

It keeps the same contract as the Redis backend (leases fenced by tokens, priorities, delayed
retries and scheduled jobs, deadlines, cancellation, paused queues, idempotency keys,
admission limits, retention, an attempt history per job) but lives in one process's memory,
so it cannot serve an API and workers in different processes.

No method awaits between reading and writing its state, so each one is atomic for the tasks
of its event loop. What time moves (due retries and scheduled jobs, deadlines, lapsed leases,
retention, idempotency keys) moves when a claim or `recover` runs, on the injected clock.
`AdmissionPolicy.max_memory` is not enforced here: a process cannot tell what its jobs cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import uuid
from collections import Counter, deque
from collections.abc import Collection, Iterator, Sequence
from datetime import datetime, timedelta

import attrs

from domain.errors import (
    AdmissionRefusedError,
    IdempotencyConflictError,
    InvalidTransitionError,
    JobNotFoundError,
    UnstorableResultError,
)
from domain.jobs import (
    HISTORY_LIMIT,
    LEASE_EXPIRED,
    REQUEUABLE,
    AttemptOutcome,
    AttemptRecord,
    Job,
    JobError,
    JobStatus,
    JSONValue,
    Lease,
    error_summary,
)
from domain.ports import (
    AdmissionPolicy,
    Capabilities,
    Clock,
    JobPage,
    JobQuery,
    JobQueue,
    JobSituation,
    NewJob,
    QueueStats,
    Submitted,
)

S = JobStatus
_FINISHED = frozenset({S.SUCCEEDED, S.DEAD, S.CANCELLED, S.EXPIRED})


def _with_record(
    job: Job, outcome: AttemptOutcome, now: datetime, error: JobError | None = None
) -> tuple[AttemptRecord, ...]:
    """The job's history with its current attempt recorded as ended now, the last
    HISTORY_LIMIT kept."""
    record = AttemptRecord(
        attempt=job.attempts,
        worker=job.worker,
        started_at=job.started_at,
        ended_at=now,
        outcome=outcome,
        error=None if error is None else error_summary(error),
    )
    return (*job.history, record)[-HISTORY_LIMIT:]


@attrs.define
class _Held:
    token: str
    expires: datetime


@attrs.frozen
class _Key:
    job_id: str
    fingerprint: str
    expires: datetime


@attrs.frozen
class _Presence:
    queues: frozenset[str]
    expires: datetime


class _Lanes:
    """One queue's queued jobs in claim order: higher priority first, FIFO within one."""

    def __init__(self) -> None:
        self._lanes: dict[int, deque[str]] = {}

    def __len__(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    def __iter__(self) -> Iterator[str]:
        for priority in sorted(self._lanes, reverse=True):
            yield from self._lanes[priority]

    def push(self, job: Job, *, head: bool = False) -> None:
        lane = self._lanes.setdefault(job.priority, deque())
        if head:
            lane.appendleft(job.id)
        else:
            lane.append(job.id)

    def pop(self) -> str | None:
        if not self._lanes:
            return None
        priority = max(self._lanes)
        lane = self._lanes[priority]
        job_id = lane.popleft()
        if not lane:
            del self._lanes[priority]
        return job_id

    def remove(self, job: Job) -> None:
        lane = self._lanes[job.priority]
        lane.remove(job.id)
        if not lane:
            del self._lanes[job.priority]

    def ahead_of(self, job: Job) -> int:
        higher = sum(len(lane) for p, lane in self._lanes.items() if p > job.priority)
        return higher + self._lanes[job.priority].index(job.id)


class _Timers:
    """Moments when something may happen to a job, per queue, earliest first.

    An entry is a hint, not a promise: whoever takes it checks the job, so an entry that a
    later move made stale (a cancelled retry, a requeued dead job) is dropped when it falls due.
    """

    def __init__(self) -> None:
        self._heaps: dict[str, list[tuple[datetime, int, str]]] = {}
        self._seq = itertools.count()

    def add(self, queue: str, when: datetime, job_id: str) -> None:
        heapq.heappush(self._heaps.setdefault(queue, []), (when, next(self._seq), job_id))

    def pop_due(self, queues: Collection[str] | None, now: datetime) -> list[str]:
        due: list[str] = []
        for queue in self._heaps if queues is None else queues:
            heap = self._heaps.get(queue)
            while heap and heap[0][0] <= now:
                due.append(heapq.heappop(heap)[2])
        return due


class InMemoryJobQueue(JobQueue):
    capabilities = Capabilities(
        leases=True,
        shared_across_processes=False,
        blocking_claim=True,
        worker_claims=True,
        batch_claims=True,
        priorities=True,
        idempotency=True,
        scheduling=True,
        deadlines=True,
        pause=True,
        cancel_queued=True,
        cancel_active=True,
        admission=True,
        queue_stats=True,
        worker_presence=True,
    )

    def __init__(
        self,
        clock: Clock,
        *,
        result_ttl: float = 86400.0,
        dead_ttl: float = 7 * 86400.0,
        idempotency_ttl: float = 86400.0,
        admission: AdmissionPolicy | None = None,
    ) -> None:
        self._clock = clock
        # How long finished jobs (dead ones apart) and idempotency keys are kept.
        self._result_ttl = timedelta(seconds=result_ttl)
        self._dead_ttl = timedelta(seconds=dead_ttl)
        self._idempotency_ttl = timedelta(seconds=idempotency_ttl)
        self._admission = admission if admission is not None and admission.enabled else None
        self._jobs: dict[str, Job] = {}
        # Submission order, for listing; a forgotten job leaves a hole so positions hold.
        self._order: list[str | None] = []
        self._position: dict[str, int] = {}
        self._ready: dict[str, _Lanes] = {}
        self._queued_since: dict[str, datetime] = {}
        self._due = _Timers()  # scheduled jobs and retries
        self._deadlines = _Timers()  # waiting jobs with a deadline
        self._retention = _Timers()  # finished jobs
        self._held: dict[str, _Held] = {}
        self._keys: dict[str, _Key] = {}
        self._key_expiry: list[tuple[datetime, str]] = []
        self._paused: set[str] = set()
        self._workers: dict[str, _Presence] = {}
        self._wakeup = asyncio.Event()
        self.stale_writes = 0

    # -- submitting and reading -------------------------------------------------------------

    async def submit(self, jobs: Sequence[NewJob]) -> Sequence[Submitted]:
        now = self._clock.now()
        answers: list[Submitted] = []
        new: list[Job] = []
        new_ids: set[str] = set()
        taken: dict[str, _Key] = {}  # the keys this call takes
        for index, item in enumerate(jobs):
            job, key = item.job, item.idempotency_key
            if job.status not in (S.QUEUED, S.SCHEDULED):
                raise ValueError(
                    f"job {job.id} must be queued or scheduled to be submitted, not {job.status}"
                )
            if key is not None:
                held = taken.get(key) or self._key(key, now)
                if held is not None:
                    if held.fingerprint != item.fingerprint:
                        raise IdempotencyConflictError(key, index)
                    answers.append(Submitted(held.job_id, created=False))
                    continue
            if job.id in self._jobs or job.id in new_ids:
                answers.append(Submitted(job.id, created=False))
                continue
            if key is not None:
                taken[key] = _Key(job.id, item.fingerprint, now + self._idempotency_ttl)
                job = attrs.evolve(job, idempotency_key=key)
            new.append(job)
            new_ids.add(job.id)
            answers.append(Submitted(job.id, created=True))
        self._admit(new, now)
        for key, held in taken.items():
            self._keys[key] = held
            heapq.heappush(self._key_expiry, (held.expires, key))
        for job in new:
            self._position[job.id] = len(self._order)
            self._order.append(job.id)
            # Scheduled or due on this queue's clock, whatever the submitter's clock said.
            later = job.run_at is not None and job.run_at > now
            self._put(attrs.evolve(job, status=S.SCHEDULED if later else S.QUEUED), now)
        return answers

    def _key(self, key: str, now: datetime) -> _Key | None:
        held = self._keys.get(key)
        return held if held is not None and held.expires > now else None

    def _admit(self, jobs: Sequence[Job], now: datetime) -> None:
        if self._admission is None:
            return
        for queue, count in Counter(job.queue for job in jobs).items():
            limits = self._admission.limits(queue)
            depth = len(self._ready.get(queue, ()))
            if limits.max_depth is not None and depth + count > limits.max_depth:
                reason = f"{depth} jobs queued and {count} more would pass {limits.max_depth}"
                raise AdmissionRefusedError(queue, reason, self._admission.retry_after)
            age = self._oldest_age(queue, now)
            if limits.max_age is not None and age is not None and age > limits.max_age:
                reason = f"the oldest queued job has waited {age:g} s, over {limits.max_age:g} s"
                raise AdmissionRefusedError(queue, reason, self._admission.retry_after)

    async def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    async def list_jobs(self, query: JobQuery) -> JobPage:
        # The cursor is a position in `_order`, which only grows at its end: jobs submitted
        # while a client pages do not shift the pages it has yet to read.
        end = len(self._order)
        if query.cursor and query.cursor.isdigit():
            end = min(end, int(query.cursor))
        page: list[Job] = []
        for position in range(end - 1, -1, -1):
            job_id = self._order[position]
            if job_id is None:
                continue
            job = self._jobs[job_id]
            if (
                (query.status is None or job.status == query.status)
                and (query.type is None or job.type == query.type)
                and (query.queue is None or job.queue == query.queue)
            ):
                if len(page) == query.limit:
                    return JobPage(page, str(position + 1))
                page.append(job)
        return JobPage(page, None)

    # -- where each job is filed ------------------------------------------------------------

    def _put(self, job: Job, now: datetime, *, head: bool = False) -> None:
        """Store `job` and file it as its status says: ready to claim, waiting for a time,
        or finished (kept for its retention). The caller has taken it out of `_ready`."""
        self._jobs[job.id] = job
        if job.status is S.QUEUED:
            self._ready.setdefault(job.queue, _Lanes()).push(job, head=head)
            self._queued_since[job.id] = now
            self._wakeup.set()
        elif job.status in (S.SCHEDULED, S.FAILED):
            due = job.run_at if job.status is S.SCHEDULED else job.retry_at
            self._due.add(job.queue, due or now, job.id)
        elif job.status in _FINISHED:
            ttl = self._dead_ttl if job.status is S.DEAD else self._result_ttl
            self._retention.add(job.queue, (job.finished_at or now) + ttl, job.id)
        if job.status.is_waiting and job.deadline is not None:
            self._deadlines.add(job.queue, job.deadline, job.id)

    def _unready(self, job: Job) -> None:
        if job.status is S.QUEUED:
            self._ready[job.queue].remove(job)
            del self._queued_since[job.id]

    def _forget(self, job_id: str) -> None:
        del self._jobs[job_id]
        self._order[self._position.pop(job_id)] = None

    def _oldest_age(self, queue: str, now: datetime) -> float | None:
        ready = self._ready.get(queue)
        if not ready:
            return None
        return max((now - self._queued_since[job_id]).total_seconds() for job_id in ready)

    # -- claims and what time moves ---------------------------------------------------------

    async def claim(
        self,
        queues: Sequence[str],
        *,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        wait_seconds: float,
    ) -> Sequence[Lease]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            self._wakeup.clear()
            leases = self._claim_now(queues, worker_id, limit, lease_seconds)
            remaining = deadline - loop.time()
            if leases or remaining <= 0:
                return leases
            # Wake for new work, or soon enough to promote retries and reclaim leases.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=min(remaining, 0.05))

    def _claim_now(
        self, queues: Sequence[str], worker_id: str, limit: int, lease_seconds: float
    ) -> list[Lease]:
        now = self._clock.now()
        self._maintain(now, None)
        leases: list[Lease] = []
        for queue in queues:
            ready = self._ready.get(queue)
            if ready is None or queue in self._paused:
                continue
            while len(leases) < limit and (job_id := ready.pop()) is not None:
                del self._queued_since[job_id]
                job = self._jobs[job_id].transition(
                    S.ACTIVE,
                    attempts=self._jobs[job_id].attempts + 1,
                    started_at=now,
                    progress=None,
                    worker=worker_id,
                    retry_at=None,
                    heartbeat_at=None,
                )
                self._jobs[job_id] = job
                token = uuid.uuid4().hex
                self._held[job_id] = _Held(token, now + timedelta(seconds=lease_seconds))
                leases.append(Lease(job, token))
        return leases

    async def recover(self, queues: Sequence[str]) -> int:
        moved = self._maintain(self._clock.now(), frozenset(queues))
        if moved:
            self._wakeup.set()
        return moved

    def _maintain(self, now: datetime, queues: Collection[str] | None) -> int:
        """Expire waiting jobs past their deadline, promote due ones, reclaim lapsed leases
        (of `queues`, or all), forget what is past its retention; answers how many jobs
        changed status. What claim does first, and `recover` on its own."""
        moved = self._expire_waiting(now, queues)
        moved += self._promote_due(now, queues)
        moved += self._reclaim_expired(now, queues)
        self._forget_finished(now, queues)
        while self._key_expiry and self._key_expiry[0][0] <= now:
            _, key = heapq.heappop(self._key_expiry)
            if self._key(key, now) is None:
                self._keys.pop(key, None)
        return moved

    def _expire_waiting(self, now: datetime, queues: Collection[str] | None) -> int:
        moved = 0
        for job_id in self._deadlines.pop_due(queues, now):
            job = self._jobs.get(job_id)
            if job is not None and job.status.is_waiting:
                self._unready(job)
                self._put(job.transition(S.EXPIRED, finished_at=now), now)
                moved += 1
        return moved

    def _promote_due(self, now: datetime, queues: Collection[str] | None) -> int:
        moved = 0
        for job_id in self._due.pop_due(queues, now):
            job = self._jobs.get(job_id)
            if job is None or job.status not in (S.SCHEDULED, S.FAILED):
                continue
            due = job.run_at if job.status is S.SCHEDULED else job.retry_at
            if due is None or due <= now:
                self._put(job.transition(S.QUEUED), now)
                moved += 1
        return moved

    def _reclaim_expired(self, now: datetime, queues: Collection[str] | None) -> int:
        moved = 0
        for job_id, held in list(self._held.items()):
            job = self._jobs[job_id]
            if held.expires > now or (queues is not None and job.queue not in queues):
                continue
            del self._held[job_id]
            # The attempt it had is spent; the job is retried at once, first in line.
            retry_at = now if job.attempts < job.max_attempts else None
            ending = self._ending(job, now, retry_at)
            error = LEASE_EXPIRED
            if ending is not None:
                job = self._ended(job, ending, now, error)
            elif retry_at is None:
                job = job.transition(
                    S.DEAD,
                    error=error,
                    finished_at=now,
                    history=_with_record(job, AttemptOutcome.WORKER_LOST, now, error),
                )
            else:
                history = _with_record(job, AttemptOutcome.WORKER_LOST, now, error)
                job = job.transition(S.QUEUED, error=error, history=history)
            self._put(job, now, head=True)
            moved += 1
        return moved

    def _forget_finished(self, now: datetime, queues: Collection[str] | None) -> None:
        for job_id in self._retention.pop_due(queues, now):
            job = self._jobs.get(job_id)
            if job is None or job.status not in _FINISHED or job.finished_at is None:
                continue
            ttl = self._dead_ttl if job.status is S.DEAD else self._result_ttl
            if job.finished_at + ttl <= now:
                self._forget(job_id)

    @staticmethod
    def _ending(job: Job, now: datetime, retry_at: datetime | None) -> JobStatus | None:
        """What ends a job whose attempt stopped short, instead of a retry (at `retry_at`)
        or the dead-letter set: its cancel request, or its deadline. None: neither."""
        if job.cancel_requested_at is not None:
            return S.CANCELLED
        if job.deadline is not None and (
            job.deadline <= now or (retry_at is not None and retry_at >= job.deadline)
        ):
            return S.EXPIRED
        return None

    @staticmethod
    def _ended(job: Job, ending: JobStatus, now: datetime, error: JobError | None) -> Job:
        """The job cancelled or expired as its current attempt ends."""
        history = _with_record(job, AttemptOutcome(ending.value), now, error)
        changes = {} if error is None else {"error": error}
        return job.transition(ending, finished_at=now, history=history, **changes)

    # -- a worker's writes, fenced by its lease ---------------------------------------------

    def _current(self, lease: Lease) -> bool:
        held = self._held.get(lease.job_id)
        if held is None or held.token != lease.token:
            self.stale_writes += 1
            return False
        return True

    async def renew(self, leases: Sequence[Lease], lease_seconds: float) -> set[str]:
        now = self._clock.now()
        kept: set[str] = set()
        for lease in leases:
            held = self._held.get(lease.job_id)
            if held is not None and held.token == lease.token and held.expires > now:
                held.expires = now + timedelta(seconds=lease_seconds)
                self._jobs[lease.job_id] = attrs.evolve(self._jobs[lease.job_id], heartbeat_at=now)
                kept.add(lease.job_id)
        return kept

    async def set_progress(self, lease: Lease, progress: int) -> bool:
        if not self._current(lease):
            return False
        job = self._jobs[lease.job_id]
        self._jobs[job.id] = attrs.evolve(job, progress=progress)
        return True

    async def complete(self, lease: Lease, result: JSONValue) -> bool:
        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise UnstorableResultError(str(exc)) from None
        if not self._current(lease):
            return False
        del self._held[lease.job_id]
        job = self._jobs[lease.job_id]
        now = self._clock.now()
        job = job.transition(
            S.SUCCEEDED,
            result=result,
            progress=100,
            finished_at=now,
            history=_with_record(job, AttemptOutcome.SUCCEEDED, now),
        )
        self._put(job, now)
        return True

    async def fail(self, lease: Lease, error: JobError, retry_in: float | None) -> bool:
        if not self._current(lease):
            return False
        del self._held[lease.job_id]
        job = self._jobs[lease.job_id]
        now = self._clock.now()
        retry_at = None if retry_in is None else now + timedelta(seconds=retry_in)
        ending = self._ending(job, now, retry_at)
        history = _with_record(job, AttemptOutcome.of(error.kind), now, error)
        if ending is not None:
            job = self._ended(job, ending, now, error)
        elif retry_at is None:
            job = job.transition(S.DEAD, error=error, finished_at=now, history=history)
        else:
            job = job.transition(S.FAILED, error=error, history=history, retry_at=retry_at)
        self._put(job, now)
        return True

    async def release(self, lease: Lease) -> bool:
        if not self._current(lease):
            return False
        del self._held[lease.job_id]
        job = self._jobs[lease.job_id]
        now = self._clock.now()
        ending = self._ending(job, now, now)
        if ending is not None:
            job = self._ended(job, ending, now, None)
        else:
            # Handed back, not failed: the attempt is not counted, and the job is next in line.
            job = job.transition(
                S.QUEUED,
                attempts=job.attempts - 1,
                history=_with_record(job, AttemptOutcome.RELEASED, now),
            )
        self._put(job, now, head=True)
        return True

    async def cancelled(self, lease: Lease) -> bool:
        if not self._current(lease):
            return False
        del self._held[lease.job_id]
        now = self._clock.now()
        self._put(self._ended(self._jobs[lease.job_id], S.CANCELLED, now, None), now)
        return True

    async def cancel_requested(self, leases: Sequence[Lease]) -> set[str]:
        asked: set[str] = set()
        for lease in leases:
            held = self._held.get(lease.job_id)
            current = held is not None and held.token == lease.token
            if current and self._jobs[lease.job_id].cancel_requested_at is not None:
                asked.add(lease.job_id)
        return asked

    async def held_by(self, worker_id: str, queues: Sequence[str]) -> Sequence[Lease]:
        wanted = frozenset(queues)
        leases: list[Lease] = []
        for job_id, held in self._held.items():
            job = self._jobs[job_id]
            if job.worker == worker_id and job.queue in wanted:
                leases.append(Lease(job, held.token))
        return leases

    # -- operators --------------------------------------------------------------------------

    async def requeue(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        if job.status not in REQUEUABLE:
            raise InvalidTransitionError(job_id, job.status, S.QUEUED)
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
        self._put(job, self._clock.now())
        return job

    async def cancel(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        now = self._clock.now()
        if job.status.is_waiting:
            self._unready(job)
            job = job.transition(S.CANCELLED, finished_at=now)
            self._put(job, now)
        elif job.status is S.ACTIVE:
            if job.cancel_requested_at is None:
                job = attrs.evolve(job, cancel_requested_at=now)
                self._jobs[job_id] = job
        else:
            raise InvalidTransitionError(job_id, job.status, S.CANCELLED)
        return job

    async def pause(self, queue: str) -> None:
        self._paused.add(queue)

    async def resume(self, queue: str) -> None:
        self._paused.discard(queue)
        self._wakeup.set()

    # -- figures ----------------------------------------------------------------------------

    async def queue_stats(self, queues: Sequence[str] | None = None) -> Sequence[QueueStats]:
        now = self._clock.now()
        counts: dict[str, Counter[JobStatus]] = {}
        for job in self._jobs.values():
            counts.setdefault(job.queue, Counter())[job.status] += 1
        workers = self._live_workers(now)
        names = sorted({*counts, *self._paused, *workers}) if queues is None else queues
        return [
            QueueStats(
                name=name,
                counts={status: counts.get(name, Counter())[status] for status in JobStatus},
                oldest_queued_age=self._oldest_age(name, now),
                paused=name in self._paused,
                workers=workers.get(name, 0),
            )
            for name in names
        ]

    async def situation(self, job_id: str) -> JobSituation | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        ahead = self._ready[job.queue].ahead_of(job) if job.status is S.QUEUED else None
        return JobSituation(
            job=job,
            ahead=ahead,
            paused=job.queue in self._paused,
            workers=self._live_workers(self._clock.now()).get(job.queue, 0),
        )

    async def heartbeat(self, worker_id: str, queues: Sequence[str], ttl: float) -> None:
        expires = self._clock.now() + timedelta(seconds=ttl)
        self._workers[worker_id] = _Presence(frozenset(queues), expires)

    async def forget_worker(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    def _live_workers(self, now: datetime) -> dict[str, int]:
        """How many live workers serve each queue; forgets the ones whose heartbeat lapsed."""
        for worker_id, presence in list(self._workers.items()):
            if presence.expires <= now:
                del self._workers[worker_id]
        return dict(Counter(q for p in self._workers.values() for q in p.queues))

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
