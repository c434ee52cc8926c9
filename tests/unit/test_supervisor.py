"""What the supervisor makes of the jobs a dead worker process held, on the memory backend."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any, cast

from adapters.memory import memory_backend
from adapters.system_clock import SystemClock
from domain.errors import UnsafeBackendError
from domain.job_service import JobService
from domain.job_types.registry import default_registry
from domain.jobs import AttemptOutcome, ErrorKind, JobError, JobStatus
from domain.ports import ClaimRequest
from domain.processing import JobProcessor
from domain.submission import Submission
from entrypoints.worker.board import Board
from entrypoints.worker.supervisor import EXIT_CONFIG, PoolConfig, Supervisor, _Child
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


class _ExitingChild:
    """A child process stand-in that exits (0) when signalled."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def wait(self) -> asyncio.Future[int]:
        return self._exited

    def send_signal(self, signum: int) -> None:
        if not self._exited.done():
            self._exited.set_result(0)

    def kill(self) -> None:
        self.send_signal(9)


class _RecordingForks:
    def __init__(self, events: list[str]) -> None:
        self._events = events

    def spawn(self, spec: Any, control_fd: int) -> _ExitingChild:
        self._events.append(f"spawn {spec.worker_id.split('/')[1]}")
        return _ExitingChild(1000 + len(self._events))


class _Refusing:
    """A backend connection whose configuration could lose jobs."""

    async def verify(self) -> list[str]:
        raise UnsafeBackendError("maxmemory-policy is allkeys-lru")


def _pool(connection: Any, processes: int) -> Supervisor:
    clock = SystemClock()
    backend = memory_backend(clock)
    leases = leases_of(backend)
    registry = default_registry(RecordingEmailSender())
    config = PoolConfig(
        processes=processes, concurrency=1, queues=("default",), drain_grace=1.0, kill_grace=1.0
    )
    processor = JobProcessor(leases, registry, lambda: 0.5)
    return Supervisor(connection or backend.connection, leases, processor, config)


def test_started_is_called_once_every_first_child_is_asked_for() -> None:
    """What `conveyor worker` starts beside its pool (the scheduler) waits for this: it
    would otherwise come between a new worker and its first job."""
    events: list[str] = []
    supervisor = _pool(None, processes=2)
    supervisor._forks = cast(Any, _RecordingForks(events))

    async def scenario() -> int:
        stop = asyncio.Event()

        def started() -> None:
            events.append("started")
            stop.set()

        return await supervisor.run(stop, started=started)

    assert asyncio.run(scenario()) == 0
    assert events == ["spawn 0.1", "spawn 1.2", "started"]


def test_started_is_not_called_when_the_backend_is_refused() -> None:
    events: list[str] = []
    supervisor = _pool(_Refusing(), processes=1)
    supervisor._forks = cast(Any, _RecordingForks(events))

    code = asyncio.run(supervisor.run(asyncio.Event(), started=lambda: events.append("started")))

    shutil.rmtree(supervisor._boards)
    assert code == EXIT_CONFIG
    assert events == []
