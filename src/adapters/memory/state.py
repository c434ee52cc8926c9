"""The in-memory backend's state, shared by its roles, and what time moves in it.

No method awaits between reading and writing the state, so each one is atomic for the tasks
of its event loop. What time moves (due retries and scheduled jobs, deadlines, lapsed leases,
retention, idempotency keys) moves when a claim or `recover` runs, on the injected clock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import Counter, deque
from collections.abc import Collection, Iterator
from datetime import datetime, timedelta

import attrs

from domain.errors import TooManyQueuesError
from domain.jobs import Job, JobStatus
from domain.limits import FlowGate, FlowLimits
from domain.ports import AdmissionPolicy, Clock, WorkerLoad
from domain.rates import QueueRates
from domain.settlement import FINISHED, Ending, settle_job

S = JobStatus


@attrs.define
class Held:
    """A lease: its token, and when it lapses unless renewed."""

    token: str
    expires: datetime


@attrs.frozen
class HeldKey:
    """An idempotency key: the job it names, the request's fingerprint, when it lapses."""

    job_id: str
    fingerprint: str
    expires: datetime


@attrs.frozen
class Presence:
    queues: frozenset[str]
    expires: datetime
    load: WorkerLoad | None = None


class Lanes:
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


class Timers:
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
        for queue in list(self._heaps) if queues is None else queues:
            heap = self._heaps.get(queue)
            while heap and heap[0][0] <= now:
                due.append(heapq.heappop(heap)[2])
            if heap is not None and not heap:
                del self._heaps[queue]  # nothing kept per queue once it is empty
        return due


class MemoryState:
    """Every job, where each is filed, the leases, keys, paused queues and live workers."""

    def __init__(
        self,
        clock: Clock,
        *,
        result_ttl: float,
        dead_ttl: float,
        idempotency_ttl: float,
        admission: AdmissionPolicy | None,
        max_queues: int | None = None,
        max_result_bytes: int | None = None,
        limits: FlowLimits | None = None,
    ) -> None:
        self.clock = clock
        # How long finished jobs (dead ones apart) and idempotency keys are kept.
        self.result_ttl = timedelta(seconds=result_ttl)
        self.dead_ttl = timedelta(seconds=dead_ttl)
        self.idempotency_ttl = timedelta(seconds=idempotency_ttl)
        self.admission = admission if admission is not None and admission.enabled else None
        self.max_queues = max_queues
        self.max_result_bytes = max_result_bytes
        self.jobs: dict[str, Job] = {}
        # Per queue: how many jobs it holds, and which wait for a time (scheduled, or due for
        # a retry). Entries go with their last job: nothing is kept for a queue unused.
        self.jobs_in: Counter[str] = Counter()
        self.waiting_later: dict[str, set[str]] = {}
        # Submission order, for listing; a forgotten job leaves a hole so positions hold.
        self.order: list[str | None] = []
        self.position: dict[str, int] = {}
        self.ready: dict[str, Lanes] = {}
        self.queued_since: dict[str, datetime] = {}
        self.due = Timers()  # scheduled jobs and retries
        self.deadlines = Timers()  # waiting jobs with a deadline
        self.retention = Timers()  # finished jobs
        self.held: dict[str, Held] = {}
        self.keys: dict[str, HeldKey] = {}
        self.key_expiry: list[tuple[datetime, str]] = []
        # Unique keys, by (queue, key): the job holding each until it finishes.
        self.unique: dict[tuple[str, str], str] = {}
        self.paused: set[str] = set()
        self.workers: dict[str, Presence] = {}
        self.rates: dict[str, QueueRates] = {}  # by queue (`domain.rates`)
        # The rate and concurrency limits per job type and their state; None: no limits.
        self.gate = FlowGate(limits) if limits else None
        self.wakeup = asyncio.Event()
        self.stale_writes = 0
        # The readers waiting for each job to finish (`MemoryJobWatcher`).
        self.watches: dict[str, set[asyncio.Event]] = {}

    # -- where each job is filed ------------------------------------------------------------

    def put(self, job: Job, now: datetime, *, head: bool = False) -> None:
        """Store `job` and file it as its status says: ready to claim, waiting for a time,
        or finished (kept for its retention). The caller has taken it out of `ready`."""
        self.jobs[job.id] = job
        later = self.waiting_later.get(job.queue)
        if job.status in (S.SCHEDULED, S.FAILED):
            self.waiting_later.setdefault(job.queue, set()).add(job.id)
        elif later is not None:
            later.discard(job.id)
            if not later:
                del self.waiting_later[job.queue]
        if job.status in FINISHED:
            for woken in self.watches.get(job.id, ()):
                woken.set()
            if job.unique_key is not None:
                self.release_unique(job)
        if job.status is S.QUEUED:
            self.ready.setdefault(job.queue, Lanes()).push(job, head=head)
            self.queued_since[job.id] = now
            self.wakeup.set()
        elif job.status in (S.SCHEDULED, S.FAILED):
            due = job.run_at if job.status is S.SCHEDULED else job.retry_at
            self.due.add(job.queue, due or now, job.id)
        elif job.status in FINISHED:
            ttl = self.dead_ttl if job.status is S.DEAD else self.result_ttl
            self.retention.add(job.queue, (job.finished_at or now) + ttl, job.id)
        if job.status.is_waiting and job.deadline is not None:
            self.deadlines.add(job.queue, job.deadline, job.id)

    def unready(self, job: Job) -> None:
        if job.status is S.QUEUED:
            ready = self.ready[job.queue]
            ready.remove(job)
            if not ready:
                del self.ready[job.queue]
            del self.queued_since[job.id]

    def depth(self, queue: str) -> int:
        """Jobs waiting in `queue`: queued, scheduled, or due for a retry."""
        return len(self.ready.get(queue, ())) + len(self.waiting_later.get(queue, ()))

    def admit_queues(self, names: Collection[str], now: datetime) -> None:
        """Raise TooManyQueuesError if `names` would take the queues kept past the most. A
        queue is kept while it holds a job, is paused, or a live worker serves it."""
        if self.max_queues is None:
            return
        self._forget_finished(now, None)
        kept = {*self.jobs_in, *self.paused, *self.live_workers(now)}
        new = sorted(set(names) - kept)
        if new and len(kept) + len(new) > self.max_queues:
            raise TooManyQueuesError(new[0], self.max_queues)

    def oldest_age(self, queue: str, now: datetime) -> float | None:
        ready = self.ready.get(queue)
        if not ready:
            return None
        return max((now - self.queued_since[job_id]).total_seconds() for job_id in ready)

    def key(self, key: str, now: datetime) -> HeldKey | None:
        held = self.keys.get(key)
        return held if held is not None and held.expires > now else None

    def unique_holder(self, queue: str, key: str) -> str | None:
        """The job holding unique key `key` in `queue`, if it has not finished: a key naming a
        job that is gone or finished is free (and let go here)."""
        holder = self.unique.get((queue, key))
        if holder is None:
            return None
        job = self.jobs.get(holder)
        if job is None or job.status in FINISHED:
            del self.unique[(queue, key)]
            return None
        return holder

    def release_unique(self, job: Job) -> None:
        """Let go of `job`'s unique key, if it still names `job`."""
        if job.unique_key is not None and self.unique.get((job.queue, job.unique_key)) == job.id:
            del self.unique[(job.queue, job.unique_key)]

    def current(self, job_id: str, token: str) -> bool:
        """Is `token` the lease held on the job now? A write under any other is stale."""
        held = self.held.get(job_id)
        if held is None or held.token != token:
            self.stale_writes += 1
            return False
        return True

    def settle(self, job_id: str, ending: Ending, now: datetime) -> JobStatus:
        """End the active attempt of a job whose lease the caller has checked."""
        del self.held[job_id]
        if self.gate is not None:
            self.gate.release(job_id)
        job, settlement = settle_job(self.jobs[job_id], ending, now)
        self.put(job, now, head=settlement.head)
        return job.status

    # -- what time moves --------------------------------------------------------------------

    def maintain(self, now: datetime, queues: Collection[str] | None) -> int:
        """Expire waiting jobs past their deadline, promote due ones, settle lapsed leases
        (of `queues`, or all), forget what is past its retention; answers how many jobs
        changed status. What a claim does first, and `recover` on its own."""
        moved = self._expire_waiting(now, queues)
        moved += self._promote_due(now, queues)
        moved += self._reclaim_expired(now, queues)
        self._forget_finished(now, queues)
        while self.key_expiry and self.key_expiry[0][0] <= now:
            _, key = heapq.heappop(self.key_expiry)
            if self.key(key, now) is None:
                self.keys.pop(key, None)
        return moved

    def _expire_waiting(self, now: datetime, queues: Collection[str] | None) -> int:
        moved = 0
        for job_id in self.deadlines.pop_due(queues, now):
            job = self.jobs.get(job_id)
            if job is not None and job.status.is_waiting:
                self.unready(job)
                self.put(job.transition(S.EXPIRED, finished_at=now), now)
                moved += 1
        return moved

    def _promote_due(self, now: datetime, queues: Collection[str] | None) -> int:
        moved = 0
        for job_id in self.due.pop_due(queues, now):
            job = self.jobs.get(job_id)
            if job is None or job.status not in (S.SCHEDULED, S.FAILED):
                continue
            due = job.run_at if job.status is S.SCHEDULED else job.retry_at
            if due is None or due <= now:
                self.put(job.transition(S.QUEUED), now)
                moved += 1
        return moved

    def _reclaim_expired(self, now: datetime, queues: Collection[str] | None) -> int:
        moved = 0
        for job_id, held in list(self.held.items()):
            job = self.jobs[job_id]
            if held.expires > now or (queues is not None and job.queue not in queues):
                continue
            self.settle(job_id, Ending.lease_expired(), now)
            moved += 1
        return moved

    def _forget_finished(self, now: datetime, queues: Collection[str] | None) -> None:
        for job_id in self.retention.pop_due(queues, now):
            job = self.jobs.get(job_id)
            if job is None or job.status not in FINISHED or job.finished_at is None:
                continue
            ttl = self.dead_ttl if job.status is S.DEAD else self.result_ttl
            if job.finished_at + ttl <= now:
                del self.jobs[job_id]
                self.order[self.position.pop(job_id)] = None
                self.jobs_in[job.queue] -= 1
                if not self.jobs_in[job.queue]:
                    del self.jobs_in[job.queue]

    def rates_of(self, queue: str) -> QueueRates:
        rates = self.rates.get(queue)
        if rates is None:
            rates = self.rates[queue] = QueueRates()
        return rates

    def live_workers(self, now: datetime) -> dict[str, int]:
        """How many live workers serve each queue; forgets the ones whose heartbeat lapsed."""
        for worker_id, presence in list(self.workers.items()):
            if presence.expires <= now:
                del self.workers[worker_id]
        return dict(Counter(q for p in self.workers.values() for q in p.queues))
