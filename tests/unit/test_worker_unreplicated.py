"""What a worker does with a settlement the replicas did not confirm in time: it says so in
its log (never with the payload) and counts it, and goes on."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from adapters.memory import memory_backend
from domain.errors import NotReplicatedError
from domain.job_service import JobService
from domain.job_types.registry import default_registry
from domain.jobs import JobStatus, Lease
from domain.ports import ClaimRequest
from domain.processing import ProcessResult
from domain.settlement import Ending
from domain.submission import Submission
from entrypoints.worker.endings import log_result
from entrypoints.worker.metrics import WorkerMetrics
from entrypoints.worker.observers import AttemptEnd
from tests.fakes import FakeClock, RecordingEmailSender

SECRET = "hunter2-in-the-payload"


def claimed() -> Lease:
    async def scenario() -> Lease:
        backend = memory_backend(FakeClock())
        service = JobService(backend, default_registry(RecordingEmailSender()), FakeClock())
        await service.submit(
            Submission(
                type="email", payload={"to": "a@example.com", "subject": SECRET, "body": "x"}
            )
        )
        assert backend.leases is not None
        request = ClaimRequest(queues=("default",), worker_id="w", limit=1, lease_seconds=30)
        (lease,) = await backend.leases.claim(request)
        return lease

    return asyncio.run(scenario())


def test_an_unconfirmed_settlement_is_logged_as_a_warning_without_the_payload(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lease = claimed()
    shortfall = NotReplicatedError(0, 1, 0.5, settled=JobStatus.SUCCEEDED)
    result = ProcessResult(Ending.succeeded(None), JobStatus.SUCCEEDED, unreplicated=shortfall)
    with caplog.at_level(logging.INFO, logger="conveyor.worker"):
        log_result(lease, result, 0.01)

    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "not confirmed by replicas" in warning.getMessage()
    assert warning.__dict__["job_id"] == lease.job_id
    assert (warning.__dict__["replicas"], warning.__dict__["replicas_required"]) == (0, 1)
    assert warning.__dict__["settled"] == "succeeded"
    assert SECRET not in caplog.text
    assert all(SECRET not in repr(r.__dict__) for r in caplog.records)


def test_an_unconfirmed_settlement_is_counted_in_the_worker_metrics() -> None:
    lease = claimed()
    metrics = WorkerMetrics()
    metrics.ended(lease, AttemptEnd("succeeded"))
    metrics.ended(lease, AttemptEnd("succeeded", unreplicated=True))
    metrics.ended(lease, AttemptEnd("failed", unreplicated=True))

    (family,) = metrics._unreplicated.collect()
    totals = [s.value for s in family.samples if s.name.endswith("_total")]
    assert totals == [2.0]


def test_the_audit_line_of_an_unconfirmed_settlement_says_so(tmp_path: Path) -> None:
    from entrypoints.worker.audit import AuditLog

    lease = claimed()
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(path), "host:1/0.1")
    audit.ended(lease, AttemptEnd("succeeded", unreplicated=True))
    audit.ended(lease, AttemptEnd("succeeded"))
    audit.close()
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert (first["outcome"], first["unreplicated"]) == ("succeeded", True)
    assert "unreplicated" not in second
