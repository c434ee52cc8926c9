"""Storing new jobs in memory: idempotency keys and admission limits, all or nothing."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

import attrs

from adapters.memory.state import HeldKey, MemoryState
from domain.errors import AdmissionRefusedError, IdempotencyConflictError
from domain.jobs import Job, JobStatus
from domain.ports import JobSubmitter, NewJob, Submitted, SubmitTraits

S = JobStatus


class MemorySubmitter(JobSubmitter):
    """`AdmissionPolicy.max_memory` is not enforced here: a process cannot tell what its jobs
    cost."""

    traits = SubmitTraits(deadlines=True, priorities=True, unique_keys=True)

    def __init__(self, state: MemoryState) -> None:
        self._state = state

    async def submit(self, jobs: Sequence[NewJob]) -> Sequence[Submitted]:
        state = self._state
        now = state.clock.now()
        answers: list[Submitted] = []
        new: list[Job] = []
        new_ids: set[str] = set()
        taken: dict[str, HeldKey] = {}  # the keys this call takes
        uniques: dict[tuple[str, str], str] = {}  # the unique keys this call takes
        for index, item in enumerate(jobs):
            job, key = item.job, item.idempotency_key
            if job.status not in (S.QUEUED, S.SCHEDULED):
                raise ValueError(
                    f"job {job.id} must be queued or scheduled to be submitted, not {job.status}"
                )
            if key is not None:
                held = taken.get(key) or state.key(key, now)
                if held is not None:
                    if held.fingerprint != item.fingerprint:
                        raise IdempotencyConflictError(key, index)
                    answers.append(Submitted(held.job_id, created=False))
                    continue
            unique = None if job.unique_key is None else (job.queue, job.unique_key)
            holder = None
            if unique is not None:
                holder = uniques.get(unique) or state.unique_holder(*unique)
            if holder is not None:
                # The request is answered with the live job: a repeat under its idempotency
                # key answers that job too.
                if key is not None:
                    taken[key] = HeldKey(holder, item.fingerprint, now + state.idempotency_ttl)
                answers.append(Submitted(holder, created=False, unique=True))
                continue
            if job.id in state.jobs or job.id in new_ids:
                answers.append(Submitted(job.id, created=False))
                continue
            if key is not None:
                taken[key] = HeldKey(job.id, item.fingerprint, now + state.idempotency_ttl)
                job = attrs.evolve(job, idempotency_key=key)
            if unique is not None:
                uniques[unique] = job.id
            new.append(job)
            new_ids.add(job.id)
            answers.append(Submitted(job.id, created=True))
        state.admit_queues({job.queue for job in new}, now)
        self._admit(new, now)
        for key, held in taken.items():
            state.keys[key] = held
            heapq.heappush(state.key_expiry, (held.expires, key))
        state.unique.update(uniques)
        for queue, count in Counter(job.queue for job in new).items():
            state.rates_of(queue).submitted(count, now.timestamp())
        for job in new:
            state.position[job.id] = len(state.order)
            state.order.append(job.id)
            state.jobs_in[job.queue] += 1
            # Scheduled or due on this backend's clock, whatever the submitter's clock said.
            later = job.run_at is not None and job.run_at > now
            state.put(attrs.evolve(job, status=S.SCHEDULED if later else S.QUEUED), now)
        return answers

    def _admit(self, jobs: Sequence[Job], now: datetime) -> None:
        admission = self._state.admission
        if admission is None:
            return
        for queue, count in Counter(job.queue for job in jobs).items():
            limits = admission.limits(queue)
            depth = self._state.depth(queue)
            if limits.max_depth is not None and depth + count > limits.max_depth:
                reason = f"{depth} jobs waiting and {count} more would pass {limits.max_depth}"
                raise AdmissionRefusedError(queue, reason, admission.retry_after)
            age = self._state.oldest_age(queue, now)
            if limits.max_age is not None and age is not None and age > limits.max_age:
                reason = f"the oldest queued job has waited {age:g} s, over {limits.max_age:g} s"
                raise AdmissionRefusedError(queue, reason, admission.retry_after)
