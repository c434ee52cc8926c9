import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.retry import RetryPolicy


def test_ceiling_doubles_until_the_cap() -> None:
    policy = RetryPolicy(base=1.0, factor=2.0, cap=10.0)
    assert [policy.ceiling(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_full_jitter_scales_the_ceiling_by_the_random_draw() -> None:
    policy = RetryPolicy(base=2.0, cap=100.0)
    assert policy.delay(3, lambda: 0.5) == 4.0
    assert policy.delay(3, lambda: 0.0) == 0.0


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    draw=st.floats(min_value=0.0, max_value=0.999999),
    base=st.floats(min_value=0.01, max_value=60.0),
    cap=st.floats(min_value=0.1, max_value=3600.0),
)
def test_delay_is_never_negative_and_never_over_the_cap(
    attempt: int, draw: float, base: float, cap: float
) -> None:
    delay = RetryPolicy(base=base, cap=cap).delay(attempt, lambda: draw)
    assert 0.0 <= delay <= cap


@given(st.integers(min_value=1, max_value=200))
def test_ceiling_never_decreases(attempt: int) -> None:
    policy = RetryPolicy(base=0.5, cap=300.0)
    assert policy.ceiling(attempt + 1) >= policy.ceiling(attempt)


def test_default_attempts_cannot_exceed_the_limit() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=5, max_attempts_limit=3)
