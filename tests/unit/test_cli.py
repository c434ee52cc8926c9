"""The `conveyor` job and queue commands, on the in-memory backend."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading
import time
from typing import Any

import attrs
import pytest

from adapters.memory import memory_backend
from adapters.system_clock import SystemClock
from domain.errors import QueueUnavailableError
from domain.job_service import JobService
from domain.job_types.registry import default_registry
from domain.jobs import Job, JobError, Lease
from domain.ports import (
    Backend,
    ClaimRequest,
    JobPage,
    JobQuery,
    JobSituation,
    JobStore,
    WorkerLoad,
)
from domain.settlement import Ending
from domain.submission import Submission
from entrypoints.cli import follow, main
from entrypoints.container import Container
from tests.fakes import RecordingEmailSender
from tests.unit.backends import claim, leases_of, settle, stored_jobs

SUCCEED = '{"mode": "succeed"}'


class Run:
    """One command's exit code and output."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code = code
        self.out = out
        self.err = err

    def json(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.out)
        return document


@pytest.fixture
def conveyor(container: Container, capsys: pytest.CaptureFixture[str]) -> Any:
    def run(*argv: str) -> Run:
        code = main(list(argv), container=container)
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def stored(backend: Backend) -> int:
    return len(stored_jobs(backend))


# -- submit ---------------------------------------------------------------------------------


def test_submit_takes_every_option_and_prints_the_job(conveyor: Any) -> None:
    run = conveyor(
        "submit",
        "dummy",
        SUCCEED,
        "--queue",
        "reports",
        "--priority",
        "9",
        "--delay",
        "600",
        "--deadline",
        "3600",
        "--max-attempts",
        "2",
    )

    assert run.code == 0, run.err
    view = run.json()
    assert (view["queue"], view["priority"], view["status"]) == ("reports", 9, "scheduled")
    assert view["run_at"] is not None
    assert view["deadline"] is not None
    assert view["max_attempts"] == 2


def test_submit_with_a_run_at_and_an_rfc3339_deadline(conveyor: Any) -> None:
    run = conveyor(
        "submit",
        "dummy",
        SUCCEED,
        "--run-at",
        "2020-01-01T00:00:00Z",
        "--deadline",
        "2099-01-01T00:00:00Z",
    )

    assert run.code == 2
    assert "deadline: expected a time within a year" in run.err


def test_submit_under_the_same_idempotency_key_answers_the_first_job(
    conveyor: Any, backend: Backend
) -> None:
    first = conveyor("submit", "dummy", SUCCEED, "--idempotency-key", "k-1")
    again = conveyor("submit", "dummy", SUCCEED, "--idempotency-key", "k-1")
    other = conveyor("submit", "dummy", '{"mode": "fail"}', "--idempotency-key", "k-1")

    assert (first.code, again.code) == (0, 0)
    assert first.json()["id"] == again.json()["id"]
    assert "was used before" in again.err
    assert other.code == 1
    assert "'k-1'" in other.err
    assert stored(backend) == 1


def test_submit_under_a_held_unique_key_answers_the_job_holding_it(
    conveyor: Any, backend: Backend
) -> None:
    report = '{"name": "q3", "rows": 5}'
    first = conveyor("submit", "report", report, "--unique-key", "q3")
    again = conveyor("submit", "report", report, "--unique-for", "name")
    by_name = conveyor("submit", "report", '{"name": "q3", "rows": 9}', "--unique-for", "name")
    bad = conveyor("submit", "report", report, "--unique-for", "name,owner")

    assert (first.code, again.code, by_name.code) == (0, 0, 0)
    assert first.json()["unique_key"] == "q3"
    assert again.json()["id"] != first.json()["id"]  # another key: the type and the name
    assert by_name.json()["id"] == again.json()["id"]
    assert "holds the unique key" in by_name.err
    assert bad.code == 2
    assert "unique_for[1]" in bad.err
    assert stored(backend) == 2


def test_submit_names_every_bad_option_and_exits_2(conveyor: Any, backend: Backend) -> None:
    run = conveyor("submit", "dummy", SUCCEED, "--priority", "500", "--delay", "-1")

    assert run.code == 2
    assert "priority: expected -100 to 100" in run.err
    assert "delay:" in run.err
    assert stored(backend) == 0


def test_delay_and_run_at_cannot_be_given_together(conveyor: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        conveyor("submit", "dummy", SUCCEED, "--delay", "1", "--run-at", "2030-01-01T00:00:00Z")

    assert exited.value.code == 2


def wait_and_finish(
    container: Container, finish: Any, outcome: dict[str, Any], argv: list[str]
) -> None:
    """Run `conveyor submit --wait` in a thread while this one plays the worker."""
    backend: Backend = container.backend()
    thread = threading.Thread(
        target=lambda: outcome.update(code=main(argv, container=container)), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    leases: list[Lease] = []
    while not leases:
        assert time.monotonic() < deadline, "the job was never submitted"
        time.sleep(0.05)
        leases = claim(backend)
    asyncio.run(leases_of(backend).set_progress(leases[0], 40))
    time.sleep(0.4)  # the bar shows the progress at least once
    finish(backend, leases[0])
    thread.join(timeout=10)
    assert not thread.is_alive(), "submit --wait did not return"


def test_submit_and_wait_follows_the_job_to_success_with_a_progress_bar(
    container: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome: dict[str, Any] = {}

    def succeed(backend: Backend, lease: Lease) -> None:
        settle(backend, lease, Ending.succeeded({"answer": 42}))

    wait_and_finish(
        container, succeed, outcome, ["submit", "report", '{"name": "q", "rows": 1}', "--wait"]
    )

    captured = capsys.readouterr()
    assert outcome["code"] == 0
    view = json.loads(captured.out)
    assert (view["status"], view["result"]) == ("succeeded", {"answer": 42})
    assert "report" in captured.err
    assert "succeeded" in captured.err
    assert "100%" in captured.err


def test_submit_and_wait_exits_1_when_the_job_ends_badly(
    container: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome: dict[str, Any] = {}

    def kill(backend: Backend, lease: Lease) -> None:
        settle(backend, lease, Ending.failed(JobError(message="boom", type="RuntimeError"), None))

    wait_and_finish(container, kill, outcome, ["submit", "dummy", '{"mode": "fatal"}', "--wait"])

    captured = capsys.readouterr()
    assert outcome["code"] == 1
    assert json.loads(captured.out)["status"] == "dead"
    assert "dead" in captured.err


# -- jobs -----------------------------------------------------------------------------------


def test_jobs_list_shows_a_table_and_filters(conveyor: Any, backend: Backend) -> None:
    email = conveyor(
        "submit", "email", '{"to": "a@example.com", "subject": "s", "body": "b"}'
    ).json()["id"]
    dummy = conveyor("submit", "dummy", SUCCEED, "--queue", "other").json()["id"]
    claim(backend, ("other",))

    everything = conveyor("jobs", "list")
    active = conveyor("jobs", "list", "--status", "active")
    emails = conveyor("jobs", "list", "--type", "email", "--queue", "default")

    assert everything.code == 0
    assert email in everything.out
    assert dummy in everything.out
    assert "STATUS" in everything.out
    assert dummy in active.out
    assert email not in active.out
    assert email in emails.out
    assert dummy not in emails.out


def test_jobs_list_pages_with_a_cursor(conveyor: Any) -> None:
    ids = [conveyor("submit", "dummy", SUCCEED).json()["id"] for _ in range(3)]

    first = conveyor("jobs", "list", "--limit", "2")
    cursor = first.err.split("--cursor ", 1)[1].strip()
    second = conveyor("jobs", "list", "--limit", "2", "--cursor", cursor)

    assert [job_id in first.out for job_id in ids] == [False, True, True]
    assert [job_id in second.out for job_id in ids] == [True, False, False]


@pytest.mark.parametrize(
    "argv",
    [
        ["jobs", "list", "--status", "finished"],
        ["jobs", "list", "--limit", "0"],
        ["jobs", "list", "--queue", "Bad Name"],
        ["queues", "pause", "a}:{b"],
    ],
)
def test_bad_arguments_exit_2(conveyor: Any, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        conveyor(*argv)

    assert exited.value.code == 2


def test_jobs_show_explains_the_job(conveyor: Any) -> None:
    job_id = conveyor("submit", "dummy", SUCCEED, "--delay", "60").json()["id"]

    view = conveyor("jobs", "show", job_id).json()

    assert view["waiting_reason"]["kind"] == "scheduled"
    assert [event["kind"] for event in view["timeline"]] == ["submitted", "scheduled"]


def test_jobs_cancel_then_retry(conveyor: Any, backend: Backend) -> None:
    job_id = conveyor("submit", "dummy", SUCCEED).json()["id"]

    cancelled = conveyor("jobs", "cancel", job_id)
    again = conveyor("jobs", "cancel", job_id)
    retried = conveyor("jobs", "retry", job_id)

    assert (cancelled.code, cancelled.json()["status"]) == (0, "cancelled")
    assert again.code == 1
    assert "cannot go from cancelled to cancelled" in again.err
    assert (retried.code, retried.json()["status"]) == (0, "queued")
    assert [lease.job_id for lease in claim(backend)] == [job_id]


def test_an_unknown_job_is_exit_1_with_a_message(conveyor: Any) -> None:
    for action in ("show", "cancel", "retry"):
        run = conveyor("jobs", action, "0" * 32)
        assert run.code == 1
        assert "no job with id" in run.err


def test_the_status_command_still_prints_a_job(conveyor: Any) -> None:
    job_id = conveyor("submit", "dummy", SUCCEED).json()["id"]

    assert conveyor("status", job_id).json()["id"] == job_id


# -- queues ---------------------------------------------------------------------------------


def test_queues_list_pause_and_resume(conveyor: Any, backend: Backend) -> None:
    conveyor("submit", "dummy", SUCCEED)
    conveyor("submit", "dummy", SUCCEED, "--queue", "bulk")

    paused = conveyor("queues", "pause", "default")
    listed = conveyor("queues", "list")
    claimed = claim(backend)
    resumed = conveyor("queues", "resume", "default")

    assert (paused.code, paused.json()["paused"]) == (0, True)
    assert paused.json()["counts"]["queued"] == 1
    assert claimed == []
    rows = {line.split()[1]: line for line in listed.out.splitlines() if "│" in line[:2]}
    assert "yes" in rows["default"]
    assert "no" in rows["bulk"]
    assert "QUEUED" in listed.out
    assert (resumed.code, resumed.json()["paused"]) == (0, False)
    assert len(claim(backend)) == 1


class FlakyStore(JobStore):
    """A job store unreachable for its first `outages` reads."""

    def __init__(self, inner: JobStore, outages: int) -> None:
        self._inner = inner
        self.outages = outages

    async def get(self, job_id: str) -> Job | None:
        if self.outages:
            self.outages -= 1
            raise QueueUnavailableError("connection refused")
        return await self._inner.get(job_id)

    async def list_jobs(self, query: JobQuery) -> JobPage:
        return await self._inner.list_jobs(query)

    async def situation(self, job_id: str) -> JobSituation | None:
        return await self._inner.situation(job_id)


def test_following_a_job_rides_out_an_unreachable_store() -> None:
    from rich.console import Console

    clock = SystemClock()
    memory = memory_backend(clock)
    flaky = FlakyStore(memory.store, outages=0)
    backend = attrs.evolve(memory, store=flaky)
    service = JobService(backend, default_registry(RecordingEmailSender()), clock)
    console = Console(file=io.StringIO(), width=120)

    async def scenario() -> str:
        job_id = (
            await service.submit(Submission(type="dummy", payload={"mode": "succeed"}))
        ).job.id
        request = ClaimRequest(queues=("default",), worker_id="w", limit=1, lease_seconds=30)
        [lease] = await leases_of(backend).claim(request)
        await leases_of(backend).settle(lease, Ending.succeeded(None))
        flaky.outages = 2
        job = await follow(service, job_id, console, interval=0.01)
        return job.status.value

    assert asyncio.run(scenario()) == "succeeded"
    assert flaky.outages == 0  # both failed reads happened, and were ridden out


def test_top_once_prints_the_queues_with_their_rates_and_the_workers(
    conveyor: Any, backend: Backend
) -> None:
    for _ in range(3):
        conveyor("submit", "dummy", SUCCEED)
    assert backend.monitor is not None
    asyncio.run(
        backend.monitor.heartbeat("pool/0.1", ["default"], 30, WorkerLoad(in_flight=2, done=5))
    )

    frame = conveyor("top", "--once")

    assert frame.code == 0
    rows = {line.split()[1]: line.split("│") for line in frame.out.splitlines() if "│" in line[:2]}
    queue = [cell.strip() for cell in rows["default"]]
    assert queue[2:4] == ["3", "0"]  # queued, scheduled
    assert float(queue[8]) > 0  # IN/S: three jobs submitted just now
    assert queue[10] == "-"  # DRAIN/S: never drained yet
    worker = [cell.strip() for cell in rows["pool/0.1"]]
    assert worker[4:7] == ["default", "2", "5"]  # queues, in flight, done


def test_the_cli_imports_neither_litestar_nor_rq_until_a_command_needs_them() -> None:
    """Every worker process runs the `conveyor` script again when it starts (multiprocessing
    prepares a child from the parent's main module): Litestar alone would cost each one about
    0.1 s."""
    code = "import sys, entrypoints.cli; print(sorted({m.split('.')[0] for m in sys.modules}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.replace("'", '"')))
    assert not loaded & {"litestar", "rq", "uvicorn"}
