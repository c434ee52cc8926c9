"""Tracing: what the API and the worker ask of it, and nothing at all when it is off.

With `CONVEYOR_TRACING` on, `POST /jobs` (and a batch) starts or continues a trace from the
request's W3C `traceparent`, each job stores the context of that request's span, and every
attempt a worker runs is a span of the same trace, a child of it (see `entrypoints.otel`).
Off (the default), this module hands out `NO_TRACING`, whose spans are shared do-nothing
context managers: OpenTelemetry is never imported, nothing is stored on the job, and the
cost to a request is one `with` statement; a worker adds no observer for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Final

from domain.jobs import Job
from entrypoints.settings import Settings


class AttemptSpan:
    """The span of one attempt: started when the attempt starts, current while its handler
    runs (`current`), ended once the worker knows how the attempt ended (`ended`)."""

    def current(self) -> AbstractContextManager[object]:
        """Makes the span current (the handler's spans and log lines are in it); leaves it
        open on exit: `ended` ends it."""
        return nullcontext()

    def ended(self, outcome: str, error_kind: str | None = None) -> None:
        """`outcome`: the status the backend stored, or the worker's word for an attempt
        that wrote nothing (`lease_lost`, `released`, ...); `error_kind`: why it ended
        badly, if it did."""


class Tracing:
    """No tracing: every span is nothing. `entrypoints.otel.OtelTracing` is the real one."""

    enabled: bool = False

    def submission(
        self, headers: Mapping[str, str], route: str
    ) -> AbstractContextManager[str | None]:
        """A span for a request that submits jobs, current while it runs, continuing the
        trace in `headers` (`traceparent`); gives the trace context the jobs store (None:
        store none)."""
        return _NO_SUBMISSION

    def start_attempt(self, job: Job) -> AttemptSpan:
        """The span of an attempt of `job` starting now, in the trace the job stored."""
        return _NO_ATTEMPT

    def close(self) -> None:
        """Send the spans not yet exported (a process about to exit)."""


_NO_SUBMISSION: Final = nullcontext(None)
_NO_ATTEMPT: Final = AttemptSpan()
NO_TRACING: Final = Tracing()


def tracing_from(settings: Settings) -> Tracing:
    """The process's tracing: from the OTEL_* variables when `settings.tracing`, else none."""
    if not settings.tracing:
        return NO_TRACING
    from entrypoints.otel import OtelTracing, provider_from_env

    return OtelTracing(provider_from_env(), install=True)


def check_tracing(settings: Settings) -> None:
    """With tracing on, SettingsError naming the variable if the OTEL_* ones ask for what
    this service does not ship: a process checks before it starts anything."""
    if settings.tracing:
        from entrypoints.otel import check_env

        check_env()
