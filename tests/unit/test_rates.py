"""A queue's rates (`domain.rates`), the Lua that keeps them in Redis held to the same figures,
and the estimated start a queued job's waiting reason makes of them."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Final

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.redis_queue import scripts
from adapters.redis_queue.keys import QueueKeys
from domain.jobs import JobStatus
from domain.ports import JobSituation
from domain.rates import DRAIN_SECONDS, SHOW_SECONDS, QueueRates
from domain.timeline import WaitingKind, estimated_start, waiting_reason
from tests.contracts.builders import new_job

NOW: Final = datetime(2026, 1, 1, tzinfo=UTC)
KEYS: Final = QueueKeys.of("p", "mail")

# The rates fragment driven directly, on a clock the test chooses (`-- Clock: caller`): one
# event, then the readings a reader would compute at that moment.
_DRIVER: Final = scripts.assemble(
    "rates_driver",
    """-- KEYS: rates
-- Clock: caller
-- Needs: rates
local op, n, left = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
if op == 'in' then rates_in(n) elseif op == 'out' then rates_out(n, left) end
local r = redis.call('HMGET', Q.rates, 'in', 'in_at', 'out', 'out_at', 'drain', 'weight')
return {num(decayed(r[1], r[2])), num(decayed(r[3], r[4])), drain_rate({r[5], r[6]})}
""",
)


def test_a_queue_drained_steadily_reads_its_drain_rate() -> None:
    rates = QueueRates()
    rates.claimed(10, True, 0.0)  # the backlog starts: nothing measured yet
    assert rates.reading(0.0).drain is None
    for tick in range(1, 41):
        rates.claimed(5, True, tick * 0.5)  # 10 jobs a second
    assert rates.reading(20.0).drain == pytest.approx(10.0)


def test_the_first_interval_measured_already_gives_the_whole_rate() -> None:
    rates = QueueRates()
    rates.claimed(1, True, 100.0)
    rates.claimed(4, True, 101.0)
    assert rates.reading(101.0).drain == pytest.approx(4.0)


def test_an_empty_or_paused_spell_does_not_slow_the_drain_rate() -> None:
    rates = QueueRates()
    rates.claimed(2, True, 0.0)
    rates.claimed(2, False, 1.0)  # claimed dry: 2 jobs a second
    rates.claimed(3, True, 3600.0)  # an hour later, a new backlog
    rates.claimed(2, True, 3601.0)
    assert rates.reading(3601.0).drain == pytest.approx(2.0)
    rates.paused()
    rates.claimed(2, True, 7200.0)  # resumed an hour later
    assert rates.reading(7200.0).drain == pytest.approx(2.0)


def test_rates_in_and_out_fall_away_when_nothing_happens() -> None:
    rates = QueueRates()
    for tick in range(100):
        rates.submitted(3, tick / 10)  # 30 a second for 10 s
        rates.claimed(3, True, tick / 10)
    busy = rates.reading(10.0)
    assert busy.rate_in == pytest.approx(30 * (1 - math.exp(-10 / SHOW_SECONDS)), rel=0.05)
    assert busy.rate_out == pytest.approx(busy.rate_in)
    idle = rates.reading(10.0 + 10 * SHOW_SECONDS)
    assert idle.rate_in < 0.01


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["in", "out"]),
            st.integers(min_value=0, max_value=200),
            st.booleans(),
            st.floats(min_value=0, max_value=3 * DRAIN_SECONDS),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_the_lua_keeps_the_same_rates_as_the_domain(
    events: list[tuple[str, int, bool, float]],
) -> None:
    client = fakeredis.FakeRedis()
    rates = QueueRates()
    now = 1_767_225_600.0
    for op, count, left, gap in events:
        # Both on one clock: Lua reads the time in whole us.
        now = round((now + gap) * 1_000_000) / 1_000_000
        if op == "in":
            rates.submitted(count, now)
        else:
            rates.claimed(count, left, now)
        now_us = round(now * 1_000_000)
        raw = client.eval(_DRIVER.source, 1, KEYS.rates, op, count, "1" if left else "0", now_us)
        lua_in, lua_out, lua_drain = raw
        expected = rates.reading(now)
        assert float(lua_in) == pytest.approx(expected.rate_in, rel=1e-6, abs=1e-9)
        assert float(lua_out) == pytest.approx(expected.rate_out, rel=1e-6, abs=1e-9)
        if expected.drain is None:
            assert lua_drain is None
        else:
            assert float(lua_drain) == pytest.approx(expected.drain, rel=1e-6, abs=1e-9)


def test_a_queued_job_starts_once_the_jobs_ahead_and_itself_have_drained() -> None:
    assert estimated_start(9, 5.0, NOW) == NOW + timedelta(seconds=2)
    assert estimated_start(0, 5.0, NOW) == NOW + timedelta(seconds=0.2)
    assert estimated_start(3, None, NOW) is None
    assert estimated_start(None, 5.0, NOW) is None


def test_a_queued_jobs_waiting_reason_gives_its_place_and_estimated_start() -> None:
    job = new_job()
    situation = JobSituation(job=job, ahead=19, paused=False, workers=2, drain_rate=4.0)
    reason = waiting_reason(job, situation, NOW)
    assert reason is not None
    assert reason.kind is WaitingKind.BEHIND_JOBS
    assert (reason.ahead, reason.drain_rate) == (19, 4.0)
    assert reason.estimated_start == NOW + timedelta(seconds=5)
    assert reason.message == (
        "behind 19 jobs in queue 'default'; at its drain rate of 4 jobs/s it should start in "
        "about 5 s (2026-01-01T00:00:05Z)"
    )


def test_a_queued_job_without_a_measured_rate_says_there_is_no_estimate() -> None:
    job = new_job()
    situation = JobSituation(job=job, ahead=0, paused=False, workers=1, drain_rate=None)
    reason = waiting_reason(job, situation, NOW)
    assert reason is not None
    assert reason.kind is WaitingKind.NEXT
    assert reason.estimated_start is None
    assert reason.message.endswith("no drain rate measured yet, so no estimate")


def test_a_paused_queue_or_one_with_no_worker_gives_no_estimate_and_says_why() -> None:
    job = new_job()
    paused = waiting_reason(job, JobSituation(job=job, ahead=4, paused=True, workers=None), NOW)
    nobody = waiting_reason(
        job, JobSituation(job=job, ahead=4, paused=False, workers=0, drain_rate=9.0), NOW
    )
    assert paused is not None
    assert nobody is not None
    assert (paused.kind, paused.estimated_start) == (WaitingKind.QUEUE_PAUSED, None)
    assert (nobody.kind, nobody.estimated_start) == (WaitingKind.NO_WORKER, None)
    assert "(4 jobs ahead)" in paused.message
    assert "cannot start until one does" in nobody.message


def test_a_job_waiting_for_its_time_is_estimated_to_start_then() -> None:
    later = NOW + timedelta(minutes=5)
    job = new_job(run_at=later, now=NOW)
    assert job.status is JobStatus.SCHEDULED
    reason = waiting_reason(job, None, NOW)
    assert reason is not None
    assert reason.estimated_start == later
