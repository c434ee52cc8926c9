"""Leases on jobs in memory: claims, renewals, progress and settlements, fenced by tokens."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

import attrs

from adapters.memory.state import Held, Lanes, MemoryState
from domain.errors import ResultTooLargeError, UnstorableResultError
from domain.jobs import AttemptOutcome, JobStatus, Lease
from domain.ports import ClaimRequest, LeaseQueue
from domain.settlement import Ending

S = JobStatus


class MemoryLeaseQueue(LeaseQueue):
    def __init__(self, state: MemoryState) -> None:
        self._state = state
        self._stopped: set[str] = set()  # workers whose waiting claim is to end now

    async def claim(self, request: ClaimRequest) -> Sequence[Lease]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.wait_seconds
        wakeup = self._state.wakeup
        while True:
            wakeup.clear()
            leases = self._claim_now(request)
            remaining = deadline - loop.time()
            if request.worker_id in self._stopped:
                self._stopped.discard(request.worker_id)
                return leases
            if leases or remaining <= 0:
                return leases
            # Wake for new work, or soon enough to promote retries and reclaim leases.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout=min(remaining, 0.05))

    async def stop_waiting(self, worker_id: str, queues: Sequence[str]) -> None:
        self._stopped.add(worker_id)
        self._state.wakeup.set()

    def _claim_now(self, request: ClaimRequest) -> list[Lease]:
        state = self._state
        now = state.clock.now()
        state.maintain(now, None)
        leases: list[Lease] = []
        for queue in request.queues:
            ready = state.ready.get(queue)
            if ready is None or queue in state.paused:
                state.rates_of(queue).claimed(0, False, now.timestamp())
                continue
            taken = 0
            expires = now + timedelta(seconds=request.lease_seconds)
            for job_id in self._claimable(ready, request.limit - len(leases), now, expires):
                taken += 1
                job = state.jobs[job_id]
                if not ready:
                    state.ready.pop(queue, None)
                del state.queued_since[job_id]
                job = job.transition(
                    S.ACTIVE,
                    attempts=job.attempts + 1,
                    started_at=now,
                    progress=None,
                    worker=request.worker_id,
                    retry_at=None,
                    heartbeat_at=None,
                )
                state.jobs[job_id] = job
                token = uuid.uuid4().hex
                state.held[job_id] = Held(token, expires)
                leases.append(Lease(job, token))
            state.rates_of(queue).claimed(taken, queue in state.ready, now.timestamp())
        return leases

    def _claimable(
        self, ready: Lanes, wanted: int, now: datetime, expires: datetime
    ) -> Iterator[str]:
        """Take up to `wanted` of `ready` out of it, in claim order; with limits, the first
        ones whose type's limits let them start (each start counted), the others left in
        line."""
        gate = self._state.gate
        if gate is None:
            while wanted > 0 and (job_id := ready.pop()) is not None:
                wanted -= 1
                yield job_id
            return
        if wanted <= 0:
            return
        picked: list[str] = []
        held_back: set[str] = set()
        at, until = now.timestamp(), expires.timestamp()
        for job_id in ready:
            job_type = self._state.jobs[job_id].type
            if job_type in held_back:
                continue
            if gate.take(job_type, job_id, at, until):
                picked.append(job_id)
                if len(picked) == wanted:
                    break
            else:
                held_back.add(job_type)
        for job_id in picked:
            ready.remove(self._state.jobs[job_id])
            yield job_id

    async def recover(self, queues: Sequence[str]) -> int:
        moved = self._state.maintain(self._state.clock.now(), frozenset(queues))
        if moved:
            self._state.wakeup.set()
        return moved

    async def renew(self, leases: Sequence[Lease], lease_seconds: float) -> set[str]:
        state = self._state
        now = state.clock.now()
        kept: set[str] = set()
        for lease in leases:
            held = state.held.get(lease.job_id)
            if held is not None and held.token == lease.token and held.expires > now:
                held.expires = now + timedelta(seconds=lease_seconds)
                if state.gate is not None:
                    state.gate.extend(lease.job_id, held.expires.timestamp())
                state.jobs[lease.job_id] = attrs.evolve(state.jobs[lease.job_id], heartbeat_at=now)
                kept.add(lease.job_id)
        return kept

    async def set_progress(self, lease: Lease, progress: int) -> bool:
        if not 0 <= progress <= 100:
            raise ValueError(f"progress must be 0-100, got {progress}")
        if not self._state.current(lease.job_id, lease.token):
            return False
        job = self._state.jobs[lease.job_id]
        self._state.jobs[job.id] = attrs.evolve(job, progress=progress)
        return True

    async def settle(self, lease: Lease, ending: Ending) -> JobStatus | None:
        if ending.outcome is AttemptOutcome.SUCCEEDED:
            try:
                encoded = json.dumps(ending.result, allow_nan=False, separators=(",", ":"))
            except (TypeError, ValueError) as exc:
                raise UnstorableResultError(str(exc)) from None
            limit = self._state.max_result_bytes
            if limit is not None and len(encoded) > limit:  # at most as many bytes as chars
                size = len(encoded.encode())
                if size > limit:
                    raise ResultTooLargeError(size, limit)
        if not self._state.current(lease.job_id, lease.token):
            return None
        return self._state.settle(lease.job_id, ending, self._state.clock.now())

    async def cancel_requested(self, leases: Sequence[Lease]) -> set[str]:
        state = self._state
        asked: set[str] = set()
        for lease in leases:
            held = state.held.get(lease.job_id)
            current = held is not None and held.token == lease.token
            if current and state.jobs[lease.job_id].cancel_requested_at is not None:
                asked.add(lease.job_id)
        return asked

    async def held_by(self, worker_id: str, queues: Sequence[str]) -> Sequence[Lease]:
        wanted = frozenset(queues)
        leases: list[Lease] = []
        for job_id, held in self._state.held.items():
            job = self._state.jobs[job_id]
            if job.worker == worker_id and job.queue in wanted:
                leases.append(Lease(job, held.token))
        return leases
