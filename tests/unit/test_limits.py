"""Flow limits per job type: how they are written, and the in-process gate that enforces
them for the memory backend (the Redis scripts' counterpart runs in the contract suite)."""

from __future__ import annotations

import pytest

from domain.limits import (
    FlowGate,
    FlowLimits,
    LimitKind,
    RateLimit,
    TypeLimits,
    parse_concurrency_limits,
    parse_rate_limits,
)

KNOWN = frozenset({"email", "report"})


@pytest.mark.parametrize(
    ("text", "count", "per"),
    [
        ("10/s", 10, 1.0),
        ("100/min", 100, 60.0),
        ("5/h", 5, 3600.0),
        ("5/2s", 5, 2.0),
        ("30/1.5min", 30, 90.0),
        (" 7 / 0.5s ", 7, 0.5),
    ],
)
def test_a_rate_is_a_count_per_interval(text: str, count: int, per: float) -> None:
    rate = RateLimit.parse(text)
    assert (rate.count, rate.per_seconds) == (count, per)
    assert RateLimit.parse(str(rate)) == rate


@pytest.mark.parametrize("text", ["", "fast", "10", "10/", "0/s", "-1/s", "10/0s", "10/d", "1.5/s"])
def test_a_rate_that_is_not_a_positive_count_per_interval_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"rate|greater than 0"):
        RateLimit.parse(text)


def test_limits_name_known_job_types_only() -> None:
    assert parse_rate_limits('{"email": "10/s"}', KNOWN) == {"email": RateLimit(10, 1.0)}
    assert parse_concurrency_limits('{"report": 2}', KNOWN) == {"report": 2}
    with pytest.raises(ValueError, match="'fax' is not a job type"):
        parse_rate_limits('{"fax": "1/s"}', KNOWN)
    for bad in ('{"report": 0}', '{"report": -1}', '{"report": 1.5}', '{"report": false}'):
        with pytest.raises(ValueError, match="greater than 0"):
            parse_concurrency_limits(bad, KNOWN)


def test_flow_limits_join_both_kinds_per_type_and_are_empty_without_any() -> None:
    limits = FlowLimits.of({"email": RateLimit(10, 1.0)}, {"email": 3, "report": 2})
    assert limits.get("email") == TypeLimits(RateLimit(10, 1.0), 3)
    assert limits.get("report") == TypeLimits(None, 2)
    assert [name for name, _ in limits] == ["email", "report"]
    assert not FlowLimits()
    with pytest.raises(ValueError, match="greater than 0"):
        TypeLimits(None, 0)


def test_a_rate_admits_no_more_than_its_count_in_any_window() -> None:
    gate = FlowGate(FlowLimits.of({"email": RateLimit(3, 1.0)}, {}))
    assert [gate.take("email", f"j{n}", at, at + 30) for n, at in enumerate((0.0, 0.1, 0.2))] == [
        True,
        True,
        True,
    ]
    assert not gate.take("email", "j3", 0.99, 30.0)
    throttle = gate.throttle("email", 0.99)
    assert throttle is not None
    assert throttle.kind is LimitKind.RATE
    assert throttle.until is not None
    assert throttle.until.timestamp() == 1.0
    assert gate.take("email", "j3", 1.0, 31.0)  # the first start has left the window
    assert not gate.take("email", "j4", 1.05, 31.0)
    assert gate.take("report", "r", 0.0, 1.0)  # a type without limits is never held


def test_a_concurrency_slot_is_held_until_released_or_its_lease_lapses() -> None:
    gate = FlowGate(FlowLimits.of({}, {"report": 2}))
    assert gate.take("report", "a", 0.0, 10.0)
    assert gate.take("report", "b", 0.0, 10.0)
    assert not gate.take("report", "c", 1.0, 11.0)
    throttle = gate.throttle("report", 1.0)
    assert throttle is not None
    assert throttle.kind is LimitKind.CONCURRENCY
    gate.release("a")
    assert gate.take("report", "c", 1.0, 11.0)
    gate.extend("b", 20.0)  # renewed: still held past its first expiry
    assert gate.held("report", 15.0) == 1  # c lapsed at 11, b holds on
    assert gate.held("report", 20.0) == 0
