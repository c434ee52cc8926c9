"""A real `conveyor worker` on a real Redis: cancelling running jobs, and worker presence.

The jobs are driven through the job service (the same container the API builds), so these tests
stand on the worker and the Redis adapter alone. What really ran is read from the workers'
audit log, written outside Redis.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from domain.job_service import JobService
from domain.jobs import Job, JobStatus
from domain.submission import Submission
from entrypoints.container import build_container
from entrypoints.settings import Settings
from tests.integration.processes import Conveyor, service_env

GRACE = 2.0  # CONVEYOR_CANCEL_GRACE_SECONDS in these tests
REPORT = {"name": "r", "rows": 1, "seconds": 30}


def _env(redis_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return service_env(
        redis_url,
        CONVEYOR_AUDIT_LOG=str(tmp_path / "audit.jsonl"),
        CONVEYOR_CANCEL_GRACE_SECONDS=str(GRACE),
        CONVEYOR_DRAIN_GRACE_SECONDS="2",
        CONVEYOR_KILL_GRACE_SECONDS="2",
        **extra,
    )


def _audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@asynccontextmanager
async def _service(env: dict[str, str]) -> AsyncIterator[JobService]:
    container = build_container(Settings.from_env(env))
    try:
        yield container.job_service()
    finally:
        await container.backend().connection.close()


async def _until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not reached within {within} s"
        await asyncio.sleep(0.05)


async def _submit(service: JobService, type_: str, payload: dict[str, Any]) -> str:
    return (await service.submit(Submission(type=type_, payload=payload))).job.id


async def _cancel_once_active(service: JobService, job_id: str) -> tuple[Job, float]:
    """Cancel the job as soon as it runs; answers it once finished and how long that took."""

    async def active() -> bool:
        return (await service.get(job_id)).status is JobStatus.ACTIVE

    await _until(active, 20.0, f"job {job_id} active")
    asked = time.monotonic()
    requested = await service.cancel(job_id)
    assert requested.status is JobStatus.ACTIVE
    assert requested.cancel_requested_at is not None
    done = await service.wait(job_id, GRACE + 10.0)
    return done, time.monotonic() - asked


def test_a_running_report_cancelled_through_the_job_service_stops_within_the_grace(
    redis_url: str, tmp_path: Path
) -> None:
    env = _env(redis_url, tmp_path)

    async def scenario() -> tuple[Job, float, Job]:
        async with _service(env) as service:
            report = await _submit(service, "report", REPORT)
            done, took = await _cancel_once_active(service, report)
            after = await _submit(service, "dummy", {"mode": "succeed"})
            return done, took, await service.wait(after, 20.0)

    with Conveyor(["worker"], env, tmp_path) as worker:
        done, took, after = asyncio.run(scenario())
        assert worker.stop() == 0, worker.output()[-3000:]
    assert done.status is JobStatus.CANCELLED, done
    assert took < GRACE, took  # the handler saw the request and stopped by itself
    assert done.attempts == 1
    assert [r.outcome for r in done.history] == ["cancelled"]
    assert done.progress is not None
    assert done.progress < 100
    assert after.status is JobStatus.SUCCEEDED
    ends = [e for e in _audit(tmp_path) if e["event"] == "end" and e["job_id"] == done.id]
    assert [e["outcome"] for e in ends] == ["cancelled"]
    assert "did not stop" not in worker.output()


def test_a_handler_that_ignores_the_cancel_request_is_stopped_after_the_grace(
    redis_url: str, tmp_path: Path
) -> None:
    env = _env(redis_url, tmp_path)

    async def scenario() -> tuple[Job, float, Job]:
        async with _service(env) as service:
            # A blocking sleep in a thread: it never looks at the request and cannot be
            # interrupted, so the worker cancels the attempt and replaces its process.
            stuck = await _submit(service, "dummy", {"mode": "hang", "seconds": 60})
            done, took = await _cancel_once_active(service, stuck)
            after = await _submit(service, "dummy", {"mode": "succeed"})
            return done, took, await service.wait(after, 20.0)

    with Conveyor(["worker"], env, tmp_path) as worker:
        done, took, after = asyncio.run(scenario())
        assert worker.stop() == 0, worker.output()[-3000:]
        output = worker.output()
    assert done.status is JobStatus.CANCELLED, done
    # Not before the grace (the request is seen within one poll of 0.5 s), and soon after.
    assert GRACE <= took <= GRACE + 2.5, took
    assert [r.outcome for r in done.history] == ["cancelled"]
    assert after.status is JobStatus.SUCCEEDED  # the pool serves on
    events = _audit(tmp_path)
    starts = [e for e in events if e["event"] == "start" and e["job_id"] == done.id]
    ends = [e for e in events if e["event"] == "end" and e["job_id"] == done.id]
    assert len(starts) == 1  # never run again
    assert [e["outcome"] for e in ends] == ["cancelled"]
    assert "did not stop after its cancel request" in output
    assert "replacing a retiring child" in output


def test_live_workers_are_counted_while_they_run_and_forgotten_when_they_stop(
    redis_url: str, tmp_path: Path
) -> None:
    env = _env(redis_url, tmp_path, CONVEYOR_WORKER_PROCESSES="2")

    async def workers() -> int | None:
        async with _service(env) as service:
            (stats,) = await service.queues(["default"])
            return stats.workers

    async def both_live() -> None:
        async def counted() -> bool:
            return await workers() == 2

        await _until(counted, 20.0, "2 live workers")

    assert asyncio.run(workers()) == 0
    with Conveyor(["worker"], env, tmp_path) as worker:
        asyncio.run(both_live())
        assert worker.stop() == 0, worker.output()[-3000:]
    # Each child said it stopped: not counted now, long before its heartbeat would lapse.
    assert asyncio.run(workers()) == 0
