"""The JobContext a running handler sees, as the worker provides it."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from adapters.system_clock import SystemClock
from domain.errors import QueueUnavailableError
from domain.job_types import JobContext
from domain.jobs import Lease
from domain.ports import AttemptReporter, Clock
from domain.processing import describe
from entrypoints.worker.board import Board, Observed

T = TypeVar("T")
log = logging.getLogger("conveyor.worker")


class WorkerJobContext(JobContext):
    def __init__(
        self,
        lease: Lease,
        reporter: AttemptReporter,
        executor: Executor,
        board: Board | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._lease = lease
        self._board = board
        self._reporter = reporter
        self._executor = executor
        self._clock = clock or SystemClock()
        # Set once by the worker; read by the handler, possibly from one of its threads.
        self._cancel_requested = False
        self._loop = asyncio.get_running_loop()
        # Progress writes are coalesced: at most one in flight, the latest value wins.
        self._pending: int | None = None
        self._writer: asyncio.Task[None] | None = None
        # When the handler was done (wall clock), once it is: what `settle` records.
        self.handler_ended: float | None = None
        self._blocking: set[Future[Any]] = set()

    @property
    def job_id(self) -> str:
        return self._lease.job_id

    @property
    def attempt(self) -> int:
        return self._lease.attempt

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    def request_cancel(self) -> None:
        """The worker learnt that the job's cancellation was asked for."""
        self._cancel_requested = True

    @property
    def remaining(self) -> float | None:
        return self._lease.job.remaining(self._clock.now())

    def report_progress(self, percent: int) -> None:
        percent = max(0, min(100, int(percent)))
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._schedule(percent)
        else:  # called from a handler's blocking function, in a worker thread
            self._loop.call_soon_threadsafe(self._schedule, percent)

    def _schedule(self, percent: int) -> None:
        self._pending = percent
        if self._writer is None or self._writer.done():
            self._writer = self._loop.create_task(self._write_progress())

    async def _write_progress(self) -> None:
        while self._pending is not None:
            percent, self._pending = self._pending, None
            try:
                await self._reporter.set_progress(self._lease, percent)
            except QueueUnavailableError as exc:
                log.warning(
                    "progress not recorded",
                    extra={**describe(self._lease.job), "reason": exc.reason},
                )

    async def settle(self) -> None:
        """Wait for the last progress write, so it cannot land after the completion."""
        # The handler is done: when, for the audit log (its settlement is written later).
        self.handler_ended = time.time()
        if self._writer is not None and not self._writer.done():
            await asyncio.wait([self._writer])

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def observe(self, work: Awaitable[T]) -> Awaitable[T]:
        if self._board is None:
            return work
        return Observed(work, self._board, self.job_id)

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        board, job_id = self._board, self.job_id

        def call() -> T:
            if board is None:
                return fn(*args)
            slot = board.take_thread_slot()
            board.mark_thread(slot, job_id)
            try:
                return fn(*args)
            finally:
                board.give_back_thread_slot(slot)

        # In the attempt's context (its span, with tracing on): threads do not inherit it.
        future = self._executor.submit(contextvars.copy_context().run, call)
        self._blocking.add(future)
        return await asyncio.wrap_future(future)

    @property
    def blocking_calls_running(self) -> bool:
        """Blocking code this job started still runs, although the attempt may be over."""
        return any(not f.done() for f in self._blocking)
