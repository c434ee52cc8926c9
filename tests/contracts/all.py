"""Every contract in one class: a backend's test module subclasses it.

    class TestRedisBackend(AllContracts):
        @pytest.fixture
        def backend_factory(self) -> BackendFactory: ...

Each scenario runs, or is skipped with the reason, according to the roles and traits of the
backend the factory opens.
"""

from __future__ import annotations

from tests.contracts.admission import AdmissionContract
from tests.contracts.claims import ClaimContract
from tests.contracts.control import ControlContract
from tests.contracts.deadlines import DeadlineContract
from tests.contracts.endtoend import EndToEndContract
from tests.contracts.flow import FlowLimitsContract
from tests.contracts.history import HistoryContract
from tests.contracts.limits import LimitsContract
from tests.contracts.monitor import MonitorContract
from tests.contracts.ordering import OrderingContract
from tests.contracts.pause import PauseContract
from tests.contracts.recovery import RecoveryContract
from tests.contracts.settle import SettleContract
from tests.contracts.store import StoreContract
from tests.contracts.submit import SubmitContract
from tests.contracts.transitions import TransitionsContract
from tests.contracts.unique import UniqueContract
from tests.contracts.watch import WatchContract


class AllContracts(
    StoreContract,
    SubmitContract,
    AdmissionContract,
    LimitsContract,
    FlowLimitsContract,
    ClaimContract,
    OrderingContract,
    SettleContract,
    HistoryContract,
    RecoveryContract,
    DeadlineContract,
    ControlContract,
    PauseContract,
    MonitorContract,
    TransitionsContract,
    EndToEndContract,
    WatchContract,
    UniqueContract,
):
    """What every backend promises, for the roles it plays."""
