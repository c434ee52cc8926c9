"""`conveyor worker` with QUEUE_BACKEND=rq: the worker's timings from the environment."""

from __future__ import annotations

import pytest

from entrypoints.settings import SettingsError
from entrypoints.worker.rq_main import worker_config


def test_the_worker_timings_come_from_the_environment_and_bound_abandonment() -> None:
    default = worker_config({})
    assert (default.kind, default.worker_ttl, default.abandoned_bound) == ("fork", 20, 20)
    tuned = worker_config(
        {
            "CONVEYOR_RQ_WORKER_CLASS": "simple",
            "CONVEYOR_RQ_HEARTBEAT_SECONDS": "2",
            "CONVEYOR_RQ_HEARTBEAT_GRACE_SECONDS": "3",
            "CONVEYOR_RQ_MAINTENANCE_SECONDS": "1",
            "CONVEYOR_RQ_IDLE_WAIT_SECONDS": "1",
        }
    )
    assert (tuned.kind, tuned.worker_ttl, tuned.abandoned_bound) == ("simple", 16, 8)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CONVEYOR_RQ_WORKER_CLASS", "threads"),
        ("CONVEYOR_RQ_HEARTBEAT_SECONDS", "0"),
        ("CONVEYOR_RQ_MAINTENANCE_SECONDS", "1.5"),
    ],
)
def test_a_bad_worker_timing_stops_start_up_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        worker_config({name: value})
