"""Tracing of submissions and attempts with OpenTelemetry's in-memory exporter, and what
tracing off costs: nothing imported, nothing stored."""

from __future__ import annotations

import asyncio
import logging
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest
from dependency_injector import providers
from litestar import Litestar
from litestar.testing import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from adapters.memory import memory_backend
from adapters.system_clock import SystemClock
from domain.job_types import JobContext, JobType, JobTypeRegistry
from domain.jobs import Job
from domain.ports import Backend, store_new
from domain.processing import JobProcessor, describe
from domain.schema import PayloadSchema
from entrypoints.api.app import create_app
from entrypoints.cli import main as cli_main
from entrypoints.container import Container, build_container
from entrypoints.otel import OtelTracing, provider_from_env
from entrypoints.settings import QueueBackend, Settings, SettingsError
from entrypoints.tracing import NO_TRACING, tracing_from
from entrypoints.worker.config import WorkerConfig
from entrypoints.worker.runner import Worker
from entrypoints.worker.tracing import TracingObserver
from tests.unit.backends import leases_of, stored_jobs

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
EMAIL = {"to": "user@example.com", "subject": "Hi", "body": "secret-body"}


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def container(spans: InMemorySpanExporter) -> Container:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    container = build_container(Settings(queue_backend=QueueBackend.MEMORY))
    container.tracing.override(providers.Object(OtelTracing(provider)))
    return container


def only_job(container: Container) -> Job:
    backend: Backend = container.backend()
    (job,) = stored_jobs(backend)
    return job


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def names_span(traceparent: str | None, trace_id: str, span_id: str) -> bool:
    """Is `traceparent` the context of that span (whatever its flags)?"""
    return traceparent is not None and traceparent[:52] == f"00-{trace_id}-{span_id}"


def test_a_submission_continues_the_clients_trace_and_the_job_stores_its_span(
    client: TestClient[Litestar], container: Container, spans: InMemorySpanExporter
) -> None:
    response = client.post(
        "/jobs", json={"type": "email", "payload": EMAIL}, headers={"traceparent": TRACEPARENT}
    )

    assert response.status_code == 202
    (span,) = spans.get_finished_spans()
    assert span.name == "POST /jobs"
    assert span.kind is SpanKind.SERVER
    assert span.parent is not None
    assert (f"{span.parent.trace_id:032x}", f"{span.parent.span_id:016x}") == (
        CLIENT_TRACE,
        CLIENT_SPAN,
    )
    trace_id, span_id = hex_ids(span)
    assert trace_id == CLIENT_TRACE
    assert names_span(only_job(container).trace_context, trace_id, span_id)
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 202


def test_a_submission_without_a_traceparent_starts_a_trace(
    client: TestClient[Litestar], container: Container, spans: InMemorySpanExporter
) -> None:
    assert client.post("/jobs", json={"type": "email", "payload": EMAIL}).status_code == 202

    (span,) = spans.get_finished_spans()
    assert span.parent is None
    assert names_span(only_job(container).trace_context, *hex_ids(span))


def test_a_malformed_traceparent_is_ignored_and_a_trace_started(
    client: TestClient[Litestar], container: Container, spans: InMemorySpanExporter
) -> None:
    response = client.post(
        "/jobs", json={"type": "email", "payload": EMAIL}, headers={"traceparent": "00-zz-01"}
    )

    assert response.status_code == 202
    (span,) = spans.get_finished_spans()
    assert span.parent is None
    assert only_job(container).trace_context is not None


def test_every_job_of_a_batch_joins_the_batch_requests_trace(
    client: TestClient[Litestar], container: Container, spans: InMemorySpanExporter
) -> None:
    item = {"type": "email", "payload": EMAIL}
    response = client.post(
        "/jobs/batch", json={"jobs": [item, item, item]}, headers={"traceparent": TRACEPARENT}
    )

    assert response.status_code == 202
    (span,) = spans.get_finished_spans()
    assert span.name == "POST /jobs/batch"
    trace_id, span_id = hex_ids(span)
    backend: Backend = container.backend()
    assert trace_id == CLIENT_TRACE
    jobs = stored_jobs(backend)
    assert len(jobs) == 3
    assert all(names_span(job.trace_context, trace_id, span_id) for job in jobs)


def test_a_refused_submission_says_why_on_its_span_and_stores_nothing(
    client: TestClient[Litestar], container: Container, spans: InMemorySpanExporter
) -> None:
    response = client.post("/jobs", json={"type": "nope", "payload": {}})

    assert response.status_code == 422
    (span,) = spans.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["error.type"] == "UnknownJobTypeError"
    # A client's mistake is not the server's error.
    assert span.status.status_code is StatusCode.UNSET
    backend: Backend = container.backend()
    assert stored_jobs(backend) == []


def test_spans_never_carry_a_payload_value(
    client: TestClient[Litestar], spans: InMemorySpanExporter
) -> None:
    client.post(
        "/jobs", json={"type": "email", "payload": EMAIL}, headers={"traceparent": TRACEPARENT}
    )

    (span,) = spans.get_finished_spans()
    assert "secret-body" not in span.to_json()


def test_with_tracing_off_a_job_stores_no_trace_context() -> None:
    container = build_container(Settings(queue_backend=QueueBackend.MEMORY))
    assert container.tracing() is NO_TRACING
    with TestClient(create_app(container)) as client:
        response = client.post(
            "/jobs", json={"type": "email", "payload": EMAIL}, headers={"traceparent": TRACEPARENT}
        )
    assert response.status_code == 202
    assert only_job(container).trace_context is None


# A process whose tracing is off: it submits a job, then says which tracing modules it loaded.
_OFF_PROGRAM = """
import sys
from litestar.testing import TestClient
from entrypoints.api.app import create_app
from entrypoints.cli import main as cli_main
from entrypoints.container import build_container
from entrypoints.settings import QueueBackend, Settings
import entrypoints.worker.child
container = build_container(Settings(queue_backend=QueueBackend.MEMORY))
with TestClient(create_app(container)) as client:
    answer = client.post("/jobs", json={"type": "dummy", "payload": {"mode": "succeed"}})
    assert answer.status_code == 202, answer.text
tracing = ("entrypoints.otel", "opentelemetry.sdk.trace", "opentelemetry.propagate")
print(sorted(m for m in sys.modules if m.startswith(tracing)))
"""


def test_with_tracing_off_no_tracing_module_is_loaded() -> None:
    # (redis-py loads OpenTelemetry's metrics SDK when it is installed; not its tracing.)
    done = subprocess.run(
        [sys.executable, "-c", _OFF_PROGRAM], capture_output=True, text=True, check=True, timeout=60
    )

    assert done.stdout.strip() == "[]"


def test_without_the_tracing_extra_the_service_runs() -> None:
    unimportable = "import sys; sys.modules['opentelemetry'] = None\n"
    done = subprocess.run(
        [sys.executable, "-c", unimportable + _OFF_PROGRAM],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )

    assert done.stdout.strip() == "[]"


def test_tracing_on_without_the_extra_stops_start_up_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("opentelemetry", "opentelemetry.sdk"):  # as if never installed
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(SettingsError, match=r"CONVEYOR_TRACING=.*conveyor\[tracing\]"):
        Settings.from_env({"CONVEYOR_TRACING": "1"})


def test_otel_sdk_disabled_turns_tracing_off() -> None:
    settings = Settings.from_env({"CONVEYOR_TRACING": "1", "OTEL_SDK_DISABLED": "true"})
    assert not settings.tracing
    assert tracing_from(settings) is NO_TRACING


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
    ],
)
def test_an_exporter_this_service_does_not_ship_stops_start_up_naming_the_variable(
    variable: str, value: str
) -> None:
    with pytest.raises(SettingsError, match=variable):
        provider_from_env({variable: value})


def test_the_exporters_are_the_ones_otel_traces_exporter_names() -> None:
    provider = provider_from_env({"OTEL_TRACES_EXPORTER": "console,otlp"})
    try:
        processors = provider._active_span_processor._span_processors
        exporters = [type(p.span_exporter).__name__ for p in processors]  # type: ignore[attr-defined]
        assert exporters == ["ConsoleSpanExporter", "OTLPSpanExporter"]
    finally:
        provider.shutdown()
    assert (
        provider_from_env({"OTEL_TRACES_EXPORTER": "none"})._active_span_processor._span_processors
        == ()
    )


# -- the worker's attempts ------------------------------------------------------------------


def test_an_attempts_span_is_current_in_its_handler_and_in_the_handlers_blocking_calls(
    spans: InMemorySpanExporter,
) -> None:
    seen: dict[str, int] = {}

    def blocking() -> None:
        seen["thread"] = trace.get_current_span().get_span_context().span_id

    async def spy(payload: object, context: JobContext) -> object:
        seen["handler"] = trace.get_current_span().get_span_context().span_id
        await context.run_blocking(blocking)
        return None

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    registry = JobTypeRegistry(
        [JobType(name="spy", description="", schema=PayloadSchema(()), handler=spy)]
    )
    backend = memory_backend(SystemClock())
    job = attrs.evolve(
        Job.submitted(
            id=uuid.uuid4().hex,
            type="spy",
            payload={},
            queue="default",
            max_attempts=1,
            timeout=10.0,
            now=datetime.now(UTC),
        ),
        trace_context=TRACEPARENT,
    )

    async def run() -> None:
        await store_new(backend.submitter, job)
        leases = leases_of(backend)
        worker = Worker(
            leases,
            JobProcessor(leases, registry, random.random),
            WorkerConfig(worker_id="w", queues=("default",), concurrency=1, claim_wait=0.05),
            observers=[TracingObserver(OtelTracing(provider))],
        )
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        for _ in range(500):
            if worker.completed:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await running

    asyncio.run(run())

    (span,) = spans.get_finished_spans()
    assert span.name == "process default"
    assert span.kind is SpanKind.CONSUMER
    assert parent_ids(span) == (CLIENT_TRACE, CLIENT_SPAN)
    context = span.get_span_context()
    assert context is not None
    assert seen == {"handler": context.span_id, "thread": context.span_id}
    assert span.attributes is not None
    assert span.attributes["conveyor.job.outcome"] == "succeeded"


def parent_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.parent is not None
    return f"{span.parent.trace_id:032x}", f"{span.parent.span_id:016x}"


def test_a_job_log_line_carries_the_trace_id_of_the_jobs_trace() -> None:
    job = Job.submitted(
        id=uuid.uuid4().hex,
        type="email",
        payload={"body": "never logged"},
        queue="mail",
        max_attempts=1,
        timeout=1.0,
        now=datetime.now(UTC),
        trace_context=TRACEPARENT,
    )

    fields = describe(job)

    assert fields == {
        "job_id": job.id,
        "type": "email",
        "queue": "mail",
        "attempt": 0,
        "trace_id": CLIENT_TRACE,
    }
    assert "trace_id" not in describe(attrs.evolve(job, trace_context=None))


def test_the_tracing_and_access_log_settings_are_read_and_documented_in_env_example() -> None:
    example = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    settings = Settings.from_env({"CONVEYOR_TRACING": "1", "CONVEYOR_ACCESS_LOG": "1"})

    assert (settings.tracing, settings.access_log) == (True, True)
    assert (Settings().tracing, Settings().access_log) == (False, False)
    assert [n for n in ("CONVEYOR_TRACING", "CONVEYOR_ACCESS_LOG") if n not in example] == []


@pytest.fixture
def process_logging() -> Iterator[None]:
    """Restores the root logger, which the command configures from the environment."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("process_logging")
@pytest.mark.parametrize("command", ["api", "worker"])
def test_a_process_asked_for_an_exporter_it_does_not_ship_stops_before_starting(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONVEYOR_TRACING", "1")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")

    assert cli_main([command]) == 2

    assert "OTEL_TRACES_EXPORTER='zipkin' is not valid" in capsys.readouterr().err
