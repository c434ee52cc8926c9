"""The span of each attempt a worker runs (with tracing on; off, the worker has no such
observer and pays nothing).

The span starts as the attempt runs and is current while the handler runs, so the handler's
own spans are its children; it ends once the worker knows what the backend stored, which
the span then says (`conveyor.job.outcome`, and an error status for an attempt that failed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from domain.jobs import Lease
from entrypoints.tracing import AttemptSpan, Tracing
from entrypoints.worker.observers import AttemptEnd, AttemptObserver


class TracingObserver(AttemptObserver):
    def __init__(self, tracing: Tracing) -> None:
        self._tracing = tracing
        # The spans of attempts running or ending, by lease token (one per attempt).
        self._open: dict[str, AttemptSpan] = {}

    @contextmanager
    def running(self, lease: Lease) -> Iterator[object]:
        span = self._tracing.start_attempt(lease.job)
        self._open[lease.token] = span
        with span.current():
            try:
                yield span
            except asyncio.CancelledError:
                raise  # the worker stopped the attempt: `ended` says how it ended
            except BaseException:
                # The machinery failed (the worker logs it); no `ended` follows.
                self._open.pop(lease.token, None)
                span.ended("crashed", "machinery")
                raise

    def ended(self, lease: Lease, end: AttemptEnd) -> None:
        span = self._open.pop(lease.token, None)
        if span is not None:
            span.ended(end.outcome, None if end.error_kind is None else end.error_kind.value)


def traced(tracing: Tracing) -> TracingObserver | None:
    """The observer that traces attempts, or None when tracing is off."""
    return TracingObserver(tracing) if tracing.enabled else None
