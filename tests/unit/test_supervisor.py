"""What the supervisor makes of the jobs a dead worker process held, on the memory backend."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any, cast

from adapters.memory import memory_backend
from adapters.system_clock import SystemClock
from domain.job_service import JobService
from domain.job_types.registry import default_registry
from domain.jobs import AttemptOutcome, ErrorKind, JobError, JobStatus
from domain.ports import ClaimRequest
from domain.processing import JobProcessor
from domain.submission import Submission
from entrypoints.worker.board import Board
from entrypoints.worker.supervisor import PoolConfig, Supervisor, _Child
from tests.fakes import RecordingEmailSender
from tests.unit.backends import leases_of

WORKER = "host:1/0.1"
LOST = JobError(
    message="worker process 7 killed by SIGKILL", type="WorkerLost", kind=ErrorKind.WORKER_LOST
)


def test_a_dead_workers_executing_job_is_charged_and_its_waiting_one_goes_back_uncharged() -> None:
    clock = SystemClock()
    backend = memory_backend(clock)
    registry = default_registry(RecordingEmailSender())
    service = JobService(backend, registry, clock)
    leases = leases_of(backend)
    config = PoolConfig(
        processes=1, concurrency=2, queues=("default",), drain_grace=1.0, kill_grace=1.0
    )
    supervisor = Supervisor(
        backend.connection,
        leases,
        JobProcessor(leases, registry, lambda: 0.99),
        config,
        monitor=backend.monitor,
    )
    child = _Child(0, WORKER, cast(Any, None), started=0.0)

    async def scenario() -> tuple[Any, Any]:
        ids = [
            (await service.submit(Submission(type="dummy", payload={"mode": "succeed"}))).job.id
            for _ in range(2)
        ]
        request = ClaimRequest(queues=("default",), worker_id=WORKER, limit=2, lease_seconds=30)
        assert len(await leases.claim(request)) == 2
        # The board says which job's code the process was running when it died.
        Board(supervisor._board_path(WORKER), threads=1).mark_loop(ids[0])
        await supervisor._settle(child, expected=False, error=LOST)
        return await service.get(ids[0]), await service.get(ids[1])

    try:
        charged, waiting = asyncio.run(scenario())
    finally:
        shutil.rmtree(supervisor._boards)

    assert (charged.status, charged.attempts) == (JobStatus.FAILED, 1)
    assert [r.outcome for r in charged.history] == [AttemptOutcome.WORKER_LOST]
    assert charged.error == LOST
    assert (waiting.status, waiting.attempts) == (JobStatus.QUEUED, 0)
    assert [r.outcome for r in waiting.history] == [AttemptOutcome.RELEASED]
    assert not supervisor._board_path(WORKER).exists()
