"""What watches a worker's attempts: the audit log, metrics, tracing.

The runner (and the supervisor, for the attempts of a child that died) tells one `Observers`
what happens to each attempt, and it passes the news to every observer that cares. Each
observer overrides only the events it needs; the others cost nothing, so a worker with no
observers pays for none.

What an observer hears is what the backend stored, never what the worker expected: an
attempt's `outcome` is the status its settlement wrote (`succeeded`, `failed` (a retry is
scheduled), `dead`, `cancelled`, `expired`, `queued`), or one of the worker's words for an
attempt that wrote nothing (see `worker.endings`: `lease_lost`, `released`, `left_to_lease`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Final

import attrs

from domain.jobs import ErrorKind, Lease


@attrs.frozen
class AttemptEnd:
    """How one attempt ended."""

    outcome: str  # the stored status, or the worker's word for an attempt that wrote nothing
    error_kind: ErrorKind | None = None  # why it ended badly (`timed_out`, `worker_lost`, ...)
    elapsed: float | None = None  # seconds the processor ran it; None when not run here
    # When its handler was done (wall clock, before the settlement was written); None when
    # not known.
    handler_ended: float | None = None
    # Its settlement is on the primary but fewer replicas than required confirmed it in
    # time (CONVEYOR_MIN_REPLICAS).
    unreplicated: bool = False

    @property
    def timed_out(self) -> bool:
        return self.error_kind is ErrorKind.TIMED_OUT

    @property
    def lost(self) -> bool:
        """Its worker process died while running it (the supervisor settled it)."""
        return self.error_kind is ErrorKind.WORKER_LOST


class AttemptObserver:
    """Hears about attempts. Every event is optional: override those you need.

    Events arrive on the worker's event loop and must not block it or raise: an observer
    that fails must not fail the attempt it watches.
    """

    def started(self, lease: Lease) -> None:
        """A claimed attempt is about to run."""

    def running(self, lease: Lease) -> AbstractContextManager[object]:
        """Entered around the attempt's execution: what it sets up (a span, a context) is
        current while the handler runs, and in the log lines it writes."""
        return contextlib.nullcontext()

    def renewed(self, lease: Lease) -> None:
        """The attempt's lease was extended."""

    def ended(self, lease: Lease, end: AttemptEnd) -> None:
        """The attempt is over (see the module's docstring for `end.outcome`)."""

    def recovered(self, moved: int) -> None:
        """This worker's recovery sweep sent `moved` jobs whose leases had lapsed back."""


_NULL: Final = contextlib.nullcontext()


class Observers:
    """Many observers as one: each event goes to the observers that override it."""

    def __init__(self, observers: Sequence[AttemptObserver] = ()) -> None:
        self._all = tuple(observers)

        def overriding(name: str) -> tuple[AttemptObserver, ...]:
            base = getattr(AttemptObserver, name)
            return tuple(o for o in self._all if getattr(type(o), name) is not base)

        self._started = overriding("started")
        self._running = overriding("running")
        self._renewed = overriding("renewed")
        self._ended = overriding("ended")
        self._recovered = overriding("recovered")

    def __bool__(self) -> bool:
        return bool(self._all)

    def started(self, lease: Lease) -> None:
        for observer in self._started:
            observer.started(lease)

    def running(self, lease: Lease) -> AbstractContextManager[object]:
        if not self._running:
            return _NULL
        if len(self._running) == 1:
            return self._running[0].running(lease)
        return self._nested(lease)

    @contextlib.contextmanager
    def _nested(self, lease: Lease) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for observer in self._running:
                stack.enter_context(observer.running(lease))
            yield

    def renewed(self, lease: Lease) -> None:
        for observer in self._renewed:
            observer.renewed(lease)

    def ended(self, lease: Lease, end: AttemptEnd) -> None:
        for observer in self._ended:
            observer.ended(lease, end)

    def recovered(self, moved: int) -> None:
        for observer in self._recovered:
            observer.recovered(moved)


class PoolObserver:
    """Hears about a supervisor's children. Events arrive on the supervisor's event loop."""

    def child_replaced(self, cause: str) -> None:
        """A child was replaced: `exited` (it ended by itself), `killed` (a signal),
        `unresponsive` (the watchdog killed it) or `retired` (it asked to be)."""
