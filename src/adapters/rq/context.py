"""What a handler sees of its attempt inside RQ's work-horse."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

from domain.job_types import JobContext
from domain.jobs import Lease
from domain.ports import AttemptReporter

T = TypeVar("T")

# A handler asking whether its job's cancellation was requested reads Redis at most this often.
CANCEL_POLL_SECONDS: Final = 0.25


class RqJobContext(JobContext):
    """The context of one attempt: progress goes to `reporter` in the background, one write
    at a time (the latest value wins); the cancel request is read through `cancel_requested`
    when the handler asks, at most every CANCEL_POLL_SECONDS."""

    def __init__(
        self, lease: Lease, reporter: AttemptReporter, cancel_requested: Callable[[], bool]
    ) -> None:
        self._lease = lease
        self._reporter = reporter
        self._read_cancel = cancel_requested
        self._loop = asyncio.get_running_loop()
        self._cancel_seen = False
        self._cancel_read_at = -math.inf
        self._writes: set[asyncio.Task[bool]] = set()
        self._pending: int | None = None
        # Its own threads (made on first use), never joined: a handler stuck in one must not
        # keep the attempt from ending (the horse exits with os._exit; RQ's death penalty is
        # the backstop).
        self._executor: ThreadPoolExecutor | None = None

    @property
    def job_id(self) -> str:
        return self._lease.job_id

    @property
    def attempt(self) -> int:
        return self._lease.attempt

    @property
    def cancel_requested(self) -> bool:
        # Read lazily (a handler that never asks costs nothing); once seen, it stays.
        if not self._cancel_seen:
            now = time.monotonic()
            if now - self._cancel_read_at >= CANCEL_POLL_SECONDS:
                self._cancel_read_at = now
                self._cancel_seen = self._read_cancel()
        return self._cancel_seen

    def report_progress(self, percent: int) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._write(percent)
        else:  # from a handler's blocking function, in a thread
            self._loop.call_soon_threadsafe(self._write, percent)

    def _write(self, percent: int) -> None:
        if self._writes:
            self._pending = percent
            return
        task = self._loop.create_task(self._reporter.set_progress(self._lease, percent))
        self._writes.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[bool]) -> None:
        self._writes.discard(task)
        if self._pending is not None:
            percent, self._pending = self._pending, None
            self._write(percent)

    async def settle(self) -> None:
        while self._writes:
            await asyncio.wait(set(self._writes))

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rq-blocking")
        return await self._loop.run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
