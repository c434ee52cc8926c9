"""Tracing with OpenTelemetry: imported only when `CONVEYOR_TRACING` is on.

The spans:
- a submission (`POST /jobs`, `POST /jobs/batch`): kind SERVER, the child of the client's
  `traceparent` when the request has one (else the root of a new trace); its context, as a
  `traceparent`, is what each job it submits stores;
- an attempt: kind CONSUMER, named `process <queue>`, the child of the context its job
  stored, so the request and every attempt of the job (retries included) are one trace.
  It is current while the handler runs: the handler's own spans, and its blocking calls'
  (see `WorkerJobContext.run_blocking`), are its children.

The exporter, the sampler, the batch processor's limits and the resource come from the
standard variables: OTEL_TRACES_EXPORTER (`otlp`, the default, over HTTP/protobuf;
`console`; `none`; several separated by commas), OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT and
the other exporter variables, OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_*, OTEL_SERVICE_NAME
(default `conveyor`) and OTEL_RESOURCE_ATTRIBUTES. OTEL_PROPAGATORS chooses how the request's
headers are read (W3C trace context and baggage by default).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Final

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from domain.jobs import Job
from entrypoints.settings import SettingsError
from entrypoints.tracing import AttemptSpan, Tracing

DEFAULT_SERVICE: Final = "conveyor"
_INSTRUMENTATION: Final = "conveyor"
# What a job stores is always W3C trace context, whatever OTEL_PROPAGATORS reads requests with.
_W3C: Final = TraceContextTextMapPropagator()
# Endings of an attempt that are not the job's success: the span's status says error.
_FAILED: Final = frozenset({"failed", "dead", "expired", "lease_lost"})


class _OtelAttempt(AttemptSpan):
    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def current(self) -> AbstractContextManager[object]:
        return trace.use_span(
            self._span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        )

    def ended(self, outcome: str, error_kind: str | None = None) -> None:
        span = self._span
        span.set_attribute("conveyor.job.outcome", outcome)
        if error_kind is not None:
            span.set_attribute("error.type", error_kind)
        if outcome in _FAILED or error_kind is not None:
            span.set_status(Status(StatusCode.ERROR, error_kind or outcome))
        span.end()


class OtelTracing(Tracing):
    """Spans on `provider`; with `install`, it is also the process's global provider, so the
    spans handlers make themselves through the OpenTelemetry API land in the same place."""

    enabled = True

    def __init__(self, provider: TracerProvider, *, install: bool = False) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer(_INSTRUMENTATION)
        if install:
            trace.set_tracer_provider(provider)

    @contextmanager
    def submission(self, headers: Mapping[str, str], route: str) -> Iterator[str | None]:
        parent = propagate.extract(headers)
        with self._tracer.start_as_current_span(
            f"POST {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "http.route": route},
            # A refused submission is the client's error, not the server's: say which, but
            # leave the span's status alone (HTTP semantics: 4xx is not a server error).
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            carrier: dict[str, str] = {}
            _W3C.inject(carrier)
            try:
                yield carrier.get("traceparent")
            except Exception as exc:
                span.set_attribute("error.type", type(exc).__name__)
                raise
            span.set_attribute("http.response.status_code", 202)

    def start_attempt(self, job: Job) -> AttemptSpan:
        parent: Context | None = None
        if job.trace_context is not None:
            parent = _W3C.extract({"traceparent": job.trace_context})
        span = self._tracer.start_span(
            f"process {job.queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "conveyor",
                "messaging.operation.type": "process",
                "messaging.destination.name": job.queue,
                "messaging.message.id": job.id,
                "conveyor.job.type": job.type,
                "conveyor.job.attempt": job.attempts,
            },
        )
        return _OtelAttempt(span)

    def close(self) -> None:
        self._provider.shutdown()


def provider_from_env(environ: Mapping[str, str] | None = None) -> TracerProvider:
    """A tracer provider as the OTEL_* variables describe it; SettingsError naming the
    variable for an exporter or protocol this service does not ship."""
    env = os.environ if environ is None else environ
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE}))
    provider = TracerProvider(resource=resource)
    for exporter in _exporters(env):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def check_env(environ: Mapping[str, str] | None = None) -> None:
    """SettingsError naming the variable if the OTEL_* variables ask for an exporter or a
    protocol this service does not ship; builds nothing (a process checks before it starts)."""
    _exporter_names(os.environ if environ is None else environ)


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()]
    for name in names:
        if name not in ("none", "console", "otlp", "otlp_proto_http"):
            raise SettingsError(
                f"OTEL_TRACES_EXPORTER={name!r} is not valid: expected otlp, console or none"
            )
        if name.startswith("otlp"):
            _require_http(env)
    return names


def _exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in _exporter_names(env):
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name.startswith("otlp"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
    return exporters


def _require_http(env: Mapping[str, str]) -> None:
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(variable, "").strip()
        if protocol and protocol != "http/protobuf":
            raise SettingsError(
                f"{variable}={protocol!r} is not valid: Conveyor's `tracing` extra exports "
                "OTLP over HTTP (http/protobuf)"
            )
        if protocol:
            return
