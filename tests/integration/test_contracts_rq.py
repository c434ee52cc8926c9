"""Every contract on the RQ backend with a real Redis, jobs run by real `conveyor worker`
processes (RQ's forking worker, its work-horses and scheduler). Scenarios that need a role
RQ does not play (a LeaseQueue, a QueuePauser) or a trait it lacks (deadlines, priorities)
are skipped with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.contracts.all import AllContracts
from tests.contracts.base import BackendFactory
from tests.integration.rq_processes import RqRedisFactory


class TestRqBackendOnRedis(AllContracts):
    @pytest.fixture
    def backend_factory(self, redis_url: str, tmp_path: Path) -> BackendFactory:
        return RqRedisFactory(redis_url, tmp_path)
