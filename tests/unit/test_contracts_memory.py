"""Every contract on the in-memory backend, on a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

import pytest

from adapters.memory import MemoryState, memory_roles
from domain.ports import Backend
from tests.contracts.all import AllContracts
from tests.contracts.base import DEFAULTS, BackendFactory, BackendOptions
from tests.fakes import FakeClock


class MemoryFactory(BackendFactory):
    name = "memory"

    def __init__(self) -> None:
        self.clock = FakeClock()
        self._states: dict[int, MemoryState] = {}

    @asynccontextmanager
    async def open(self, options: BackendOptions = DEFAULTS) -> AsyncIterator[Backend]:
        state = MemoryState(self.clock, **options.kwargs())
        backend = memory_roles(state)
        self._states[id(backend)] = state
        try:
            yield backend
        finally:
            del self._states[id(backend)]

    async def elapse(self, seconds: float) -> None:
        self.clock.advance(seconds)

    async def now(self, backend: Backend) -> datetime:
        return self.clock.now()

    async def stale_writes(self, backend: Backend) -> int | None:
        return self._states[id(backend)].stale_writes


class TestMemoryBackend(AllContracts):
    @pytest.fixture
    def backend_factory(self) -> BackendFactory:
        return MemoryFactory()
