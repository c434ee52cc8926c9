"""Tracing, end to end on a real Redis: a client's `traceparent` on `POST /jobs` is the parent
of the request's span; the job carries that span's context through Redis to a worker; each
attempt is a span of the same trace (a failed one, then its retry, which succeeds); and every
log line of the job's life carries its ids and the trace's.

The spans are caught by OpenTelemetry's in-memory exporter, so the API (Litestar's test
client) and the worker (its runner, as a worker process runs it) run in this process, on
the real Redis backend, each with its own container and connections.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from dependency_injector import providers
from litestar.testing import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from domain.jobs import Job, JobStatus
from domain.ports import JobStore
from entrypoints.api.app import create_app
from entrypoints.container import build_container
from entrypoints.otel import OtelTracing
from entrypoints.settings import QueueBackend, Settings
from entrypoints.worker.config import WorkerConfig
from entrypoints.worker.main import native_roles
from entrypoints.worker.runner import Worker
from entrypoints.worker.tracing import TracingObserver

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
JOB_FIELDS = ("job_id", "type", "queue", "attempt", "trace_id")


@pytest.fixture
def settings(redis_url: str) -> Iterator[Settings]:
    prefix = f"trace-test-{uuid.uuid4().hex[:12]}"
    yield Settings(redis_url=redis_url, queue_backend=QueueBackend.REDIS, key_prefix=prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
        if keys:
            client.unlink(*keys)
    finally:
        client.close()


def ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def parent_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.parent is not None, f"{span.name} has no parent"
    return f"{span.parent.trace_id:032x}", f"{span.parent.span_id:016x}"


async def work_until_finished(settings: Settings, tracing: OtelTracing, job_id: str) -> Job:
    """Run a worker, as a worker process runs it, until the job has finished."""
    container = build_container(settings, redis_socket_timeout=5.0)
    store: JobStore = container.backend().store
    roles = native_roles(container)
    assert roles is not None
    worker = Worker(
        roles.leases,
        container.job_processor(),
        WorkerConfig(worker_id="trace-test", queues=("default",), concurrency=4, claim_wait=0.2),
        monitor=roles.monitor,
        observers=[TracingObserver(tracing)],
        clock=container.clock(),
    )
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        for _ in range(200):
            job = await store.get(job_id)
            if job is not None and job.status.is_terminal:
                return job
            await asyncio.sleep(0.05)
        raise AssertionError(f"job {job_id} did not finish: {job}")
    finally:
        stop.set()
        await running
        await roles.connection.close()


def test_one_trace_runs_from_the_clients_request_through_a_retry_to_success(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing = OtelTracing(provider)
    api = build_container(settings, redis_socket_timeout=settings.redis_timeout)
    api.tracing.override(providers.Object(tracing))
    began = time.monotonic()

    with TestClient(create_app(api)) as client:
        response = client.post(
            "/jobs",
            json={"type": "dummy", "payload": {"mode": "fail", "times": 1}},
            headers={"traceparent": TRACEPARENT},
        )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    with caplog.at_level(logging.INFO, logger="conveyor"):
        job = asyncio.run(work_until_finished(settings, tracing, job_id))
    took = time.monotonic() - began

    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 2)
    finished = spans.get_finished_spans()
    (post,) = [s for s in finished if s.kind is SpanKind.SERVER]
    attempts = sorted(
        (s for s in finished if s.kind is SpanKind.CONSUMER), key=lambda s: s.start_time or 0
    )
    # The request's span is the child of the client's span, in the client's trace.
    assert post.name == "POST /jobs"
    assert parent_ids(post) == (CLIENT_TRACE, CLIENT_SPAN)
    # Each attempt is a span of that trace, the child of the request's span.
    assert [s.name for s in attempts] == ["process default", "process default"]
    assert {ids(s)[0] for s in finished} == {CLIENT_TRACE}
    assert all(parent_ids(s) == ids(post) for s in attempts)
    first, second = (s.attributes or {} for s in attempts)
    assert (first["conveyor.job.attempt"], first["conveyor.job.outcome"]) == (1, "failed")
    assert (second["conveyor.job.attempt"], second["conveyor.job.outcome"]) == (2, "succeeded")
    assert first["messaging.message.id"] == second["messaging.message.id"] == job_id
    assert [s.status.status_code for s in attempts] == [StatusCode.ERROR, StatusCode.UNSET]
    first_ended, second_started = attempts[0].end_time, attempts[1].start_time
    assert first_ended is not None
    assert second_started is not None
    assert first_ended <= second_started
    # Every line the worker wrote about the job carries its ids and the trace's.
    lines = [r for r in caplog.records if getattr(r, "job_id", None) == job_id]
    events = [r.getMessage() for r in lines]
    assert events == ["job claimed", "job failed, will retry", "job claimed", "job succeeded"]
    for record in lines:
        assert all(hasattr(record, field) for field in JOB_FIELDS), record.__dict__
        assert record.__dict__["trace_id"] == CLIENT_TRACE
    assert [r.__dict__["attempt"] for r in lines] == [1, 1, 2, 2]

    print(
        f"\ntrace {CLIENT_TRACE}: {len(finished)} spans (POST /jobs, attempts 1 and 2),"
        f" {len(lines)} log lines with trace_id; POST to success {took:.2f} s"
    )
