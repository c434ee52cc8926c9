"""The port contracts on the in-memory queue, with a settable clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest

from adapters.memory_queue import InMemoryJobQueue
from domain.ports import Clock, JobQueue
from tests.queue_contract import DEFAULTS, QueueContract, QueueFactory, QueueOptions
from tests.queue_contract_lifecycle import LifecycleContract


class FakeClock(Clock):
    def __init__(self) -> None:
        self._now = datetime(2030, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


class MemoryFactory(QueueFactory):
    def __init__(self) -> None:
        self.clock = FakeClock()

    def __call__(self) -> AbstractAsyncContextManager[JobQueue]:
        return self.configured(DEFAULTS)

    def configured(self, options: QueueOptions) -> AbstractAsyncContextManager[JobQueue]:
        return self._open(options)

    @asynccontextmanager
    async def _open(self, options: QueueOptions) -> AsyncIterator[JobQueue]:
        queue = InMemoryJobQueue(self.clock, **options.kwargs())
        try:
            yield queue
        finally:
            await queue.close()

    async def elapse(self, seconds: float) -> None:
        self.clock.advance(seconds)

    async def now(self, queue: JobQueue) -> datetime:
        return self.clock.now()

    async def stale_writes(self, queue: JobQueue) -> int | None:
        assert isinstance(queue, InMemoryJobQueue)
        return queue.stale_writes


class TestInMemoryJobQueue(QueueContract):
    @pytest.fixture
    def queue_factory(self) -> QueueFactory:
        return MemoryFactory()


class TestInMemoryJobQueueLifecycle(LifecycleContract):
    @pytest.fixture
    def queue_factory(self) -> QueueFactory:
        return MemoryFactory()
