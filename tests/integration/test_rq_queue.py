"""What only real processes show of the RQ backend: hostile jobs planted in Redis, a
SIGKILLed work-horse, a SIGKILLed worker, the scheduler's delayed retries, a Redis restart,
cancelling running jobs, the HTTP API, all with real `conveyor worker` processes
(QUEUE_BACKEND=rq) on a real Redis. The contracts run on it in `test_contracts_rq.py`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from adapters.rq import RqWorkerConfig
from adapters.rq.client import text
from adapters.rq.codec import PID
from domain.jobs import AttemptOutcome, ErrorKind, Job, JobStatus
from domain.ports import Backend, JobControl, JobStore, QueueMonitor
from entrypoints.local_redis import LocalRedis
from tests.contracts.builders import enqueue, status_of
from tests.contracts.driving import driven_job
from tests.integration.processes import Api, wait_for_job
from tests.integration.rq_processes import RqRedisFactory
from tests.unit.rq_support import plant_hostile_jobs

S = JobStatus
BOUND = RqWorkerConfig().abandoned_bound  # what the README promises, with the defaults
TERMINAL = {"succeeded", "dead", "cancelled", "expired"}


@pytest.fixture
def factory(redis_url: str, tmp_path: Path) -> Iterator[RqRedisFactory]:
    factory = RqRedisFactory(redis_url, tmp_path)
    yield factory
    factory.cleanup()


def control(backend: Backend) -> JobControl:
    assert backend.control is not None
    return backend.control


def monitor(backend: Backend) -> QueueMonitor:
    assert backend.monitor is not None
    return backend.monitor


def run(coro: Any, within: float = 90.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, within))


def meta_of(factory: RqRedisFactory, job_id: str) -> dict[str, Any]:
    client = factory.client()
    try:
        raw = client.hget(f"rq:job:{job_id}", "meta")
    finally:
        client.close()
    meta: dict[str, Any] = json.loads(raw) if raw else {}
    return meta


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    with suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found |= {int(p) for p in (task / "children").read_text().split()}
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def wait_until(
    store: JobStore, job_id: str, ok: Any, within: float, what: str = "the condition"
) -> Job:
    deadline = time.monotonic() + within
    while True:
        job = await store.get(job_id)
        if job is not None and ok(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {within} s: {job}")
        await asyncio.sleep(0.05)


async def horse_running(factory: RqRedisFactory, store: JobStore, job_id: str, attempt: int) -> int:
    """The pid of the work-horse running attempt `attempt` of the job, once it runs."""
    await wait_until(
        store, job_id, lambda j: j.status == S.ACTIVE and j.attempts == attempt, 20, "running"
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pid = meta_of(factory, job_id).get(PID)
        if isinstance(pid, int) and alive(pid):
            return pid
        await asyncio.sleep(0.02)
    raise AssertionError("no live work-horse recorded for the job")


# -- untrusted data -------------------------------------------------------------------------


def test_a_real_worker_dead_letters_planted_pickles_and_foreign_calls_running_nothing(
    factory: RqRedisFactory, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"

    async def main() -> None:
        async with factory.open() as backend:
            client = factory.client()
            planted = plant_hostile_jobs(client, marker, factory.prefix)
            good = driven_job({"mode": "succeed"})
            await enqueue(backend.submitter, good)
            await factory.drain(backend, [good.id])
            failed_key = f"rq:failed:{factory.prefix}:default"
            deadline = time.monotonic() + 10
            while {text(m) for m in client.zrange(failed_key, 0, -1)} != set(planted):
                assert time.monotonic() < deadline, client.zrange(failed_key, 0, -1)
                await asyncio.sleep(0.05)
            for job_id in planted:
                assert client.hget(f"rq:job:{job_id}", "status") == b"failed"
            client.close()
            output = factory.workers[0].output()
            assert output.count("refusing job") == len(planted), output[-3000:]

    run(main())
    assert not marker.exists(), "code from a planted job ran"


# -- progress and the scheduler -------------------------------------------------------------


def test_progress_shows_while_a_report_runs_and_a_delayed_retry_comes_from_the_scheduler(
    redis_url: str, tmp_path: Path
) -> None:
    factory = RqRedisFactory(redis_url, tmp_path)

    async def main() -> None:
        async with factory.open() as backend:
            report = Job.submitted(
                id=uuid.uuid4().hex,
                type="report",
                payload={"name": "q3", "rows": 10, "seconds": 1.5},
                queue="default",
                max_attempts=1,
                timeout=30.0,
                now=driven_job({}).created_at,
            )
            flaky = driven_job({"mode": "fail", "times": 1}, max_attempts=3)
            await enqueue(backend.submitter, report)
            await enqueue(backend.submitter, flaky)
            factory.start_worker()
            seen: set[int] = set()
            job = await backend.store.get(report.id)
            while job is not None and not job.status.is_terminal:
                if job.status == S.ACTIVE and job.progress is not None:
                    seen.add(job.progress)
                await asyncio.sleep(0.05)
                job = await backend.store.get(report.id)
            assert job is not None
            assert (job.status, job.progress, job.result["rows"]) == (S.SUCCEEDED, 100, 10)
            assert any(0 < p < 100 for p in seen), seen
            # The flaky job's first attempt failed; its retry waits 1 s in RQ's scheduled
            # registry (our FAILED), and the worker's scheduler process queues it.
            waiting = await wait_until(
                backend.store, flaky.id, lambda j: j.attempts >= 1, 10, "a try"
            )
            if waiting.status != S.SUCCEEDED:
                assert waiting.status in (S.FAILED, S.ACTIVE, S.QUEUED), waiting
            done = await wait_until(
                backend.store, flaky.id, lambda j: j.status.is_terminal, 15, "done"
            )
            assert (done.status, done.attempts) == (S.SUCCEEDED, 2)

    try:
        run(main())
    finally:
        factory.stop_workers()
        factory.delete_keys()


# -- SIGKILL ----------------------------------------------------------------------------------


def test_a_sigkilled_work_horse_is_retried_at_once_or_dead_lettered_without_retries_left(
    factory: RqRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            retried = driven_job({"mode": "sleep", "seconds": 3}, max_attempts=2)
            spent = driven_job({"mode": "sleep", "seconds": 3}, max_attempts=1)
            await enqueue(backend.submitter, retried)
            factory.start_worker()

            horse = await horse_running(factory, backend.store, retried.id, 1)
            os.kill(horse, signal.SIGKILL)
            killed = time.monotonic()
            again = await wait_until(
                backend.store, retried.id, lambda j: j.attempts == 2, 10, "the second attempt"
            )
            rerun_after = time.monotonic() - killed
            assert again.error is not None
            assert (again.error.kind, again.error.signal) == (ErrorKind.WORKER_LOST, "SIGKILL")
            done = await wait_until(
                backend.store, retried.id, lambda j: j.status.is_terminal, 15, "done"
            )
            assert (done.status, done.attempts) == (S.SUCCEEDED, 2)
            assert [r.outcome for r in done.history] == [
                AttemptOutcome.WORKER_LOST,
                AttemptOutcome.SUCCEEDED,
            ]
            # The parent sees the horse die at once; the retry then waits in RQ's scheduled
            # registry, which its scheduler polls every second: about 1-2 s in all, and a
            # machine busy with other suites may add a few hundred milliseconds.
            print(f"[rq] a killed work-horse's job ran again {rerun_after:.2f} s after the kill")
            assert rerun_after < 3.0, rerun_after

            await enqueue(backend.submitter, spent)
            horse = await horse_running(factory, backend.store, spent.id, 1)
            os.kill(horse, signal.SIGKILL)
            dead = await wait_until(
                backend.store, spent.id, lambda j: j.status.is_terminal, 5, "dead"
            )
            assert (dead.status, dead.attempts) == (S.DEAD, 1)
            assert dead.error is not None
            assert dead.error.kind == ErrorKind.WORKER_LOST

    run(main())


def test_a_sigkilled_worker_loses_nothing_and_its_job_runs_again_within_the_bound(
    factory: RqRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            jobs = [driven_job({"mode": "sleep", "seconds": 2}, max_attempts=3) for _ in range(6)]
            for job in jobs:
                await enqueue(backend.submitter, job)
            first, second = factory.start_worker(), factory.start_worker()
            by_pid = {w.proc.pid: w for w in (first, second) if w.proc is not None}

            victim_job = jobs[0]
            horse = await horse_running(factory, backend.store, victim_job.id, 1)
            worker_pid = parent_of(horse)
            assert worker_pid in by_pid, (worker_pid, list(by_pid))
            helpers = children_of(worker_pid)  # the work-horse and the scheduler process
            assert horse in helpers
            os.kill(worker_pid, signal.SIGKILL)
            killed = time.monotonic()
            by_pid[worker_pid].wait(timeout=5)

            # Its work-horse and scheduler die with it: nothing runs on behind its back.
            deadline = time.monotonic() + 3
            while any(alive(pid) for pid in helpers):
                assert time.monotonic() < deadline, [p for p in helpers if alive(p)]
                await asyncio.sleep(0.05)

            again = await wait_until(
                backend.store, victim_job.id, lambda j: j.attempts == 2, BOUND + 5, "the re-run"
            )
            rerun_after = time.monotonic() - killed
            assert again.error is not None
            assert again.error.kind == ErrorKind.WORKER_LOST
            for job in jobs:  # lost: 0
                done = await wait_until(
                    backend.store, job.id, lambda j: j.status.is_terminal, BOUND + 30, "all done"
                )
                assert done.status == S.SUCCEEDED, done
            assert rerun_after <= BOUND + 1, rerun_after
            print(f"\nre-run {rerun_after:.1f} s after the SIGKILL (bound {BOUND} s)")

    run(main(), within=BOUND + 90)


# -- the HTTP API on this backend -----------------------------------------------------------


def test_the_api_walkthrough_works_on_rq(factory: RqRedisFactory) -> None:
    env = factory.env()
    with Api(env, factory.log_dir) as api, api.client() as client:
        factory.start_worker()
        ids = {}
        for type_, payload in (
            ("email", {"to": "user@example.com", "subject": "Hi", "body": "Yo"}),
            ("report", {"name": "q3", "rows": 500, "seconds": 1.0}),
            ("dummy", {"mode": "succeed", "result": {"answer": 42}}),
            ("dummy", {"mode": "fatal"}),
        ):
            response = client.post("/jobs", json={"type": type_, "payload": payload})
            assert response.status_code == 202, response.text
            ids[(type_, payload.get("mode"))] = response.json()["id"]
        progress: set[int] = set()
        report = ids[("report", None)]
        deadline = time.monotonic() + 20
        while (view := client.get(f"/jobs/{report}").json())["status"] not in TERMINAL:
            if view["status"] == "active" and view["progress"] is not None:
                progress.add(view["progress"])
            assert time.monotonic() < deadline, view
            time.sleep(0.05)
        assert any(0 < p < 100 for p in progress), progress
        views = {key: wait_for_job(client, job_id, TERMINAL) for key, job_id in ids.items()}
        assert views[("email", None)]["status"] == "succeeded"
        assert "message_id" in views[("email", None)]["result"]
        assert views[("report", None)]["result"]["rows"] == 500
        assert views[("dummy", "succeed")]["result"] == {"answer": 42}
        fatal = ids[("dummy", "fatal")]
        assert views[("dummy", "fatal")]["status"] == "dead"
        listed = client.get("/jobs", params={"status": "dead"}).json()
        assert [job["id"] for job in listed["jobs"]] == [fatal]
        retried = client.post(f"/jobs/{fatal}/retry")
        assert retried.status_code == 202, retried.text
        assert retried.json()["status"] == "queued"
        again = wait_for_job(client, fatal, TERMINAL)
        assert (again["status"], again["attempts"]) == ("dead", 1)
        assert client.post(f"/jobs/{ids[('email', None)]}/retry").status_code == 409


# -- a Redis restart ------------------------------------------------------------------------


def test_a_redis_restart_mid_job_loses_nothing_and_the_worker_carries_on(tmp_path: Path) -> None:
    """Redis (AOF on) stops while a job runs and comes back 3 s later: the worker survives
    (RQ's own worker quits on a lost connection; ours starts it again), the interrupted job is
    retried through the abandoned-job sweep, and every job succeeds."""
    data_dir = tmp_path / "redis"
    server = LocalRedis(data_dir=data_dir).start()
    port = server.port
    factory = RqRedisFactory(server.url, tmp_path)

    async def main() -> None:
        nonlocal server
        async with factory.open() as backend:
            jobs = [driven_job({"mode": "sleep", "seconds": 2}, max_attempts=3) for _ in range(3)]
            for job in jobs:
                await enqueue(backend.submitter, job)
            worker = factory.start_worker()
            await horse_running(factory, backend.store, jobs[0].id, 1)
            server.stop()
            await asyncio.sleep(3)
            assert worker.proc is not None
            assert worker.proc.poll() is None, worker.output()[-3000:]
            server = LocalRedis(data_dir=data_dir, port=port).start()
            for job in jobs:
                done = await wait_until(
                    backend.store, job.id, lambda j: j.status.is_terminal, BOUND + 40, "all done"
                )
                assert done.status == S.SUCCEEDED, (done, worker.output()[-3000:])
            assert worker.proc.poll() is None

    try:
        run(main(), within=BOUND + 90)
    finally:
        factory.stop_workers()
        server.stop()


def test_blocking_work_runs_in_threads_and_a_hung_handler_times_out(
    factory: RqRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            busy = driven_job({"mode": "cpu", "seconds": 0.2})
            hung = Job.submitted(
                id=uuid.uuid4().hex,
                type="dummy",
                payload={"mode": "hang", "seconds": 600},
                queue="default",
                max_attempts=1,
                timeout=1.0,
                now=busy.created_at,
            )
            await enqueue(backend.submitter, busy)
            await enqueue(backend.submitter, hung)
            factory.start_worker(CONVEYOR_KILL_GRACE_SECONDS="1")
            done = await wait_until(
                backend.store, busy.id, lambda j: j.status.is_terminal, 20, "cpu"
            )
            assert done.status == S.SUCCEEDED
            assert done.result["spins"] > 0
            started = time.monotonic()
            dead = await wait_until(
                backend.store, hung.id, lambda j: j.status.is_terminal, 20, "hang"
            )
            assert (dead.status, dead.attempts) == (S.DEAD, 1)
            assert dead.error is not None
            assert dead.error.kind == ErrorKind.TIMED_OUT
            assert time.monotonic() - started < 10  # timeout 1 s + grace 1 s, not RQ's limit

    run(main())


# -- the job lifecycle with real workers ----------------------------------------------------


async def workers_on(backend: Backend, name: str = "default") -> int | None:
    (stats,) = await monitor(backend).queue_stats([name])
    return stats.workers


async def wait_for_workers(backend: Backend, count: int, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while await workers_on(backend) != count:
        assert time.monotonic() < deadline, f"not {count} live workers within {within} s"
        await asyncio.sleep(0.1)


def test_a_cancelled_queued_job_never_runs_on_a_real_worker(factory: RqRedisFactory) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            blocker = driven_job({"mode": "sleep", "seconds": 1.5})
            doomed, after = driven_job({"mode": "succeed"}), driven_job({"mode": "succeed"})
            for job in (blocker, doomed, after):
                await enqueue(backend.submitter, job)
            factory.start_worker()
            await wait_until(
                backend.store, blocker.id, lambda j: j.status == S.ACTIVE, 20, "running"
            )
            cancelled = await control(backend).cancel(doomed.id)
            assert (cancelled.status, cancelled.attempts) == (S.CANCELLED, 0)
            # The job queued behind it ran: the worker went past where it was.
            done = await wait_until(
                backend.store, after.id, lambda j: j.status.is_terminal, 20, "after"
            )
            assert done.status == S.SUCCEEDED
            final = await backend.store.get(doomed.id)
            assert final is not None
            assert (final.status, final.attempts, final.started_at, final.result) == (
                S.CANCELLED,
                0,
                None,
                None,
            )
            client = factory.client()
            try:
                assert client.exists(f"rq:results:{doomed.id}") == 0  # no attempt ended
                assert client.hget(f"rq:job:{doomed.id}", "worker_name") in (None, b"")
            finally:
                client.close()

    run(main())


def test_a_scheduled_job_is_run_by_the_workers_scheduler_after_its_time_and_not_before(
    factory: RqRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            factory.start_worker()
            await wait_for_workers(backend, 1)
            run_at = datetime.now(UTC) + timedelta(seconds=2)
            job = Job.submitted(
                id=uuid.uuid4().hex,
                type="dummy",
                payload={"mode": "succeed"},
                queue="default",
                max_attempts=1,
                timeout=10.0,
                now=datetime.now(UTC),
                run_at=run_at,
            )
            dropped = attrs.evolve(job, id=uuid.uuid4().hex)
            await enqueue(backend.submitter, job)
            await enqueue(backend.submitter, dropped)
            assert await status_of(backend.store, job.id) == S.SCHEDULED
            assert (await control(backend).cancel(dropped.id)).status == S.CANCELLED
            done = await wait_until(
                backend.store, job.id, lambda j: j.status.is_terminal, 15, "done"
            )
            assert done.status == S.SUCCEEDED
            assert done.started_at is not None
            late = (done.started_at - run_at).total_seconds()
            assert 0 <= late < 3.0, late  # the scheduler looks every second, by whole seconds
            await asyncio.sleep(1.0)
            final = await backend.store.get(dropped.id)
            assert final is not None
            assert (final.status, final.attempts, final.started_at) == (S.CANCELLED, 0, None)

    run(main())


def test_a_cancelled_active_job_stops_on_request_or_is_killed_after_the_grace(
    factory: RqRedisFactory,
) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            report = Job.submitted(
                id=uuid.uuid4().hex,
                type="report",
                payload={"name": "q3", "rows": 10, "seconds": 30},
                queue="default",
                max_attempts=3,
                timeout=60.0,
                now=datetime.now(UTC),
            )
            stubborn = driven_job({"mode": "sleep", "seconds": 60}, max_attempts=3)
            then = driven_job({"mode": "succeed"})
            for job in (report, stubborn, then):
                await enqueue(backend.submitter, job)
            factory.start_worker(
                CONVEYOR_CANCEL_GRACE_SECONDS="1", CONVEYOR_RQ_HEARTBEAT_SECONDS="1"
            )

            # A handler that listens stops at once.
            await wait_until(
                backend.store, report.id, lambda j: (j.progress or 0) > 0, 20, "progress"
            )
            asked = await control(backend).cancel(report.id)
            assert (asked.status, asked.cancel_requested_at is not None) == (S.ACTIVE, True)
            started = time.monotonic()
            stopped = await wait_until(
                backend.store, report.id, lambda j: j.status.is_terminal, 5, "cancelled"
            )
            assert time.monotonic() - started < 2.0
            assert (stopped.status, stopped.attempts) == (S.CANCELLED, 1)
            assert [r.outcome for r in stopped.history] == [AttemptOutcome.CANCELLED]

            # One that does not is killed with its work-horse after the grace.
            horse = await horse_running(factory, backend.store, stubborn.id, 1)
            await control(backend).cancel(stubborn.id)
            started = time.monotonic()
            killed = await wait_until(
                backend.store, stubborn.id, lambda j: j.status.is_terminal, 10, "killed"
            )
            took = time.monotonic() - started
            assert took < 1 + 1 + 2.0, took  # grace + heartbeat, and some slack
            assert (killed.status, killed.attempts) == (S.CANCELLED, 1)
            assert [r.outcome for r in killed.history] == [AttemptOutcome.CANCELLED]
            deadline = time.monotonic() + 3
            while alive(horse):
                assert time.monotonic() < deadline, "the work-horse still runs"
                await asyncio.sleep(0.05)

            # Neither is retried; the worker carries on.
            done = await wait_until(
                backend.store, then.id, lambda j: j.status.is_terminal, 10, "then"
            )
            assert done.status == S.SUCCEEDED
            for job_id in (report.id, stubborn.id):
                assert await status_of(backend.store, job_id) == S.CANCELLED

    run(main())


def test_the_queue_figures_count_a_live_worker_until_it_stops(factory: RqRedisFactory) -> None:
    async def main() -> None:
        async with factory.open() as backend:
            first, second = driven_job({"mode": "succeed"}), driven_job({"mode": "succeed"})
            await enqueue(backend.submitter, first)
            await enqueue(backend.submitter, second)
            assert await workers_on(backend) == 0
            situation = await backend.store.situation(second.id)
            assert situation is not None
            assert (situation.ahead, situation.workers) == (1, 0)
            worker = factory.start_worker()
            await wait_for_workers(backend, 1)
            await factory.drain(backend, [first.id, second.id])
            (stats,) = await monitor(backend).queue_stats(["default"])
            assert (stats.counts[S.SUCCEEDED], stats.counts[S.QUEUED]) == (2, 0)
            assert worker.stop() == 0
            assert await workers_on(backend) == 0

    run(main())
