"""Redis faults (reliability.md §7.3) under load: each test runs its own Redis server.

The server is a `LocalRedis` (AOF on, ``appendfsync everysec``) this test owns, so killing or
freezing it never touches the session's shared server. API and workers talk to it with the
short timeouts of §7.1 (``CONVEYOR_REDIS_TIMEOUT=0.5``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from entrypoints.local_redis import LocalRedis
from tests.integration.faults.checker import LedgerReader
from tests.integration.faults.harness import (
    Evidence,
    Load,
    Pool,
    Sent,
    fault_env,
    print_figures,
    stale_writes,
    wait_settled,
)
from tests.integration.processes import Api


class OwnRedis:
    """A LocalRedis this test may kill, freeze and restart on the same port and data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server = LocalRedis(data_dir=data_dir).start()
        self.port = self.server.port
        self.url = self.server.url

    def kill9(self) -> float:
        killed = time.time()
        os.kill(self.server.pid, signal.SIGKILL)
        self.server.stop()  # reaps it and releases the data dir's lock
        return killed

    def restart(self) -> tuple[float, float]:
        """Start it again; answers when the restart began and when it was answering."""
        began = time.time()
        self.server = LocalRedis(data_dir=self.data_dir, port=self.port).start()
        return began, time.time()

    def freeze(self) -> float:
        frozen = time.time()
        os.kill(self.server.pid, signal.SIGSTOP)
        return frozen

    def thaw(self) -> float:
        os.kill(self.server.pid, signal.SIGCONT)
        return time.time()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            os.kill(self.server.pid, signal.SIGCONT)
        self.server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.close()


def _sleep_job(_: int) -> Mapping[str, Any]:
    return {"type": "dummy", "payload": {"mode": "sleep", "seconds": 0.5}, "max_attempts": 10}


def _within(sent: list[Sent], start: float, end: float) -> list[Sent]:
    """Requests sent after `start` and answered before `end`."""
    return [s for s in sent if s.sent >= start and s.received <= end]


def test_r1_redis_kill9_and_restart_under_load_loses_no_acked_job(
    own_redis: OwnRedis, tmp_path: Path
) -> None:
    """R1: kill -9 of Redis under load, restart 2 s later on the same port and data dir.

    Scaled from §7.3 (60 s at 0.8 X, kill at 30 s): 16 s at 20 jobs/s, kill at 5 s.
    """
    ledger_path = tmp_path / "ledger.jsonl"
    env = fault_env(own_redis.url, ledger_path)
    with Api(env, tmp_path) as api, api.client() as client:
        with Pool(env, tmp_path, processes=2, concurrency=4) as pool:
            pool.wait_children(2)
            with Load(api.base, _sleep_job, rate=20.0, senders=4) as load:
                time.sleep(5.0)
                killed = own_redis.kill9()
                time.sleep(2.0)
                restarted, answering = own_redis.restart()
                time.sleep(9.0)
            final = wait_settled(client, load.acked, within=30)
            stale = stale_writes(own_redis.url, pool.prefix)
            assert pool.proc is not None, pool.output()[-3000:]
            assert pool.proc.poll() is None, pool.output()[-3000:]
            children = len(pool.children())
            pool.remember(int(e["pid"]) for e in LedgerReader(ledger_path).starts())
    sent = load.sent
    during = _within(sent, killed, restarted)
    after = [s for s in sent if s.sent >= restarted and s.status == 202]
    back_in = round(after[0].received - restarted, 2) if after else None
    codes = sorted({s.status for s in sent}, key=str)
    report = Evidence(ledger_path).report(
        load.acked,
        final,
        stale,
        requests=len(sent),
        codes=codes,
        answered_while_down=len(during),
        restart_took_s=round(answering - restarted, 2),
        first_202_after_restart_s=back_in,
    )
    print_figures("R1", report)
    summary = report.summary()
    assert report.acked > 200, summary
    assert report.lost == [], summary
    assert report.statuses == {"succeeded": report.acked}, summary
    assert during, [s for s in during if s.status != 503]
    assert all(s.status == 503 for s in during), [s for s in during if s.status != 503]
    assert set(codes) <= {202, 503}, [s for s in sent if s.status not in (202, 503)][:5]
    assert back_in is not None, summary
    assert back_in <= 3.0, summary
    assert report.dup_completions == {}, summary
    assert report.live_overlaps == [], summary
    assert children == 2


@pytest.mark.alone
def test_r3_redis_frozen_for_10s_gives_fast_503s_and_loses_nothing(
    own_redis: OwnRedis, tmp_path: Path
) -> None:
    """R3: Redis unreachable for 10 s (SIGSTOP: connections hang, nothing is refused)."""
    ledger_path = tmp_path / "ledger.jsonl"
    env = fault_env(own_redis.url, ledger_path)
    with Api(env, tmp_path) as api, api.client() as client:
        with Pool(env, tmp_path, processes=2, concurrency=4) as pool:
            pool.wait_children(2)
            children_before = {c.pid for c in pool.children()}
            with Load(api.base, _sleep_job, rate=10.0, senders=8) as load:
                time.sleep(3.0)
                frozen = own_redis.freeze()
                time.sleep(10.0)
                thawed = own_redis.thaw()
                time.sleep(6.0)
            final = wait_settled(client, load.acked, within=30)
            stale = stale_writes(own_redis.url, pool.prefix)
            assert pool.proc is not None, pool.output()[-3000:]
            assert pool.proc.poll() is None, pool.output()[-3000:]
            children_after = {c.pid for c in pool.children()}
            pool.remember(int(e["pid"]) for e in LedgerReader(ledger_path).starts())
    sent = load.sent
    during = _within(sent, frozen, thawed)
    after = [s for s in sent if s.sent >= thawed and s.status == 202]
    back_in = round(after[0].received - thawed, 2) if after else None
    slowest = max(s.latency for s in sent)
    events = LedgerReader(ledger_path)
    resumed = [e for e in events.starts() if e["ts"] > thawed]
    report = Evidence(ledger_path).report(
        load.acked,
        final,
        stale,
        requests=len(sent),
        answered_while_frozen=len(during),
        slowest_post_s=round(slowest, 3),
        first_202_after_thaw_s=back_in,
        starts_after_thaw=len(resumed),
    )
    print_figures("R3", report)
    summary = report.summary()
    assert slowest <= 1.5, sorted(sent, key=lambda s: -s.latency)[:3]
    assert len(during) >= 50, summary  # ~10 s at 10/s, each answered fast
    assert all(s.status == 503 and s.retry_after for s in during), [
        s for s in during if s.status != 503 or not s.retry_after
    ][:5]
    assert all(s.status in (202, 503) for s in sent), [s for s in sent if s.status != 503][:5]
    assert report.lost == [], summary
    assert report.statuses == {"succeeded": report.acked}, summary
    assert report.dup_completions == {}, summary
    assert report.live_overlaps == [], summary
    assert children_after == children_before, "workers exited during the outage"
    assert resumed, "no job started after Redis came back"
    assert back_in is not None, summary
    assert back_in <= 3.0, summary
