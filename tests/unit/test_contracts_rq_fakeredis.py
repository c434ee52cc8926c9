"""Every contract on the RQ backend over fakeredis, jobs run by Conveyor's RQ worker class in
bursts (`rq_support.RqFakeRedisFactory`). Scenarios that need a role RQ does not play (a
LeaseQueue, a QueuePauser) or a trait it lacks (deadlines, priorities) are skipped with the
reason."""

from __future__ import annotations

import pytest

from tests.contracts.all import AllContracts
from tests.contracts.base import BackendFactory
from tests.unit.rq_support import RqFakeRedisFactory


class TestRqBackendOnFakeRedis(AllContracts):
    @pytest.fixture
    def backend_factory(self) -> BackendFactory:
        return RqFakeRedisFactory()
