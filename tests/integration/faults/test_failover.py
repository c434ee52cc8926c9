"""Failover under load: a primary, two replicas and three Sentinels on loopback, all real.

The API and the workers reach Redis through the Sentinels (``redis+sentinel://``). While
2,000 jobs are submitted and drained, the primary is SIGKILLed; the Sentinels promote a
replica and every process follows it without a restart. Redis replicates asynchronously, so
what the dead primary had not yet sent to a replica is gone: with `CONVEYOR_MIN_REPLICAS`
set, a job is answered 202 (and an attempt is settled) only once the replicas have it, and no
acknowledged job may be lost; without it, the test reports how many were.

On loopback a replica is never more than a moment behind, so a kill alone loses nothing
either way. To make the window real, the primary refuses its replicas' PSYNC and cuts their
links (``CLIENT KILL TYPE replica``) for a second before the kill, which comes while both are
behind: what was acknowledged in that second exists on the primary alone. Without the option
those jobs are lost (the negative control: the test can see a loss); with it, they were never
acknowledged.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from entrypoints.local_topologies import LocalSentinelSet
from tests.integration.faults.checker import TERMINAL, LedgerReader, Report
from tests.integration.faults.harness import (
    Evidence,
    Load,
    Pool,
    Sent,
    fault_env,
    print_figures,
    wait_settled,
)
from tests.integration.processes import Api

JOBS = 2_000
RATE = 250.0  # submissions a second: the kill about 4 s in
CUT_AFTER_S = 3.0  # the replicas' links are cut from then on, for at least
CUT_FOR_S = 1.0
FAILOVER_WITHIN_S = 15.0
LINK_LAG_S = 0.5  # how far behind a loaded replica may be when its link is cut
# Enough senders to keep a few hundred a second going while answers take the replica
# timeout (each waits for its own answer).
SENDERS = 32
AFTER_S = 2.0  # load kept on the promoted primary at least this long


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[LocalSentinelSet]:
    with LocalSentinelSet(tmp_path / "redis", replicas=2, sentinels=3) as servers:
        yield servers


def _quick_job(_: int) -> Mapping[str, Any]:
    return {"type": "dummy", "payload": {"mode": "succeed"}, "max_attempts": 10}


class ReplicasCut:
    """Cuts a primary's links to its replicas every 20 ms, from a thread, until closed,
    and refuses their PSYNC meanwhile."""

    def __init__(self, primary: int, replicas: Sequence[int]) -> None:
        self._primary = redis.Redis(host="127.0.0.1", port=primary, socket_timeout=2)
        self._replicas = [redis.Redis(host="127.0.0.1", port=p, socket_timeout=2) for p in replicas]
        self._command: Any = self._primary.execute_command  # redis-py's is untyped
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.began = 0.0
        self.began_at = 0.0  # time.time()

    def __enter__(self) -> ReplicasCut:
        # A cut replica reconnects at once; refused PSYNC, it tries again a second later.
        self._command("ACL", "SETUSER", "default", "-psync", "-sync")
        self.began, self.began_at = time.monotonic(), time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(redis.RedisError):  # the primary is usually dead by now
            self._command("ACL", "SETUSER", "default", "+psync", "+sync")
        for client in (self._primary, *self._replicas):
            client.close()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self._command("CLIENT", "KILL", "TYPE", "replica")
            except redis.RedisError:
                return  # the primary is gone

    def until_behind(self, at_least: float, within: float = 10.0) -> None:
        """Wait `at_least` s of cutting, then until no replica is connected and every one is
        behind the primary's replication offset (so a kill now loses what they lack)."""
        time.sleep(max(0.0, self.began + at_least - time.monotonic()))
        deadline = time.monotonic() + within
        while True:
            primary = self._primary.info("replication")
            offsets = [int(r.info("replication")["slave_repl_offset"]) for r in self._replicas]
            offset = int(primary["master_repl_offset"])
            if primary["connected_slaves"] == 0 and all(o < offset for o in offsets):
                return
            assert time.monotonic() < deadline, (primary, offsets)
            time.sleep(0.01)


@dataclass
class _Run:
    report: Report
    sent: list[Sent]
    cut: float  # when the replicas' links began to be cut, time.time()
    killed: float
    promoted: float
    started_after_promotion: int  # attempts the workers began on the promoted primary
    unconfirmed: set[str]  # jobs with a completion the replicas did not confirm

    def acked_between(self, start: float, end: float) -> set[str]:
        return {
            s.job_id
            for s in self.sent
            if s.status == 202 and s.job_id is not None and start <= s.received <= end
        }


def _failover_under_load(
    servers: LocalSentinelSet, tmp_path: Path, name: str, **settings: str
) -> _Run:
    """Submit at least `JOBS` jobs and drain them; `CUT_AFTER_S` in, cut the replicas'
    links, and kill the primary once they are behind."""
    ledger_path = tmp_path / "ledger.jsonl"
    env = fault_env(servers.url, ledger_path, **settings)
    with Api(env, tmp_path) as api, api.client() as client:
        with Pool(env, tmp_path, processes=2, concurrency=8) as pool:
            pool.wait_children(2)
            with Load(api.base, _quick_job, rate=RATE, senders=SENDERS) as load:
                time.sleep(CUT_AFTER_S)
                _, primary = servers.primary_address()
                with ReplicasCut(primary, servers.replica_ports) as cut:
                    cut.until_behind(at_least=CUT_FOR_S)
                    killed_port = servers.kill_primary()
                    killed = time.time()
                servers.wait_for_failover(killed_port, timeout=FAILOVER_WITHIN_S)
                promoted = time.time()
                # At least `JOBS` in all, and a few seconds' worth on the promoted primary
                # (an election Sentinels split is retried, so a failover may take 10 s).
                deadline = time.monotonic() + 120
                while len(load.sent) < JOBS or time.time() < promoted + AFTER_S:
                    assert time.monotonic() < deadline, f"{len(load.sent)} sent"
                    time.sleep(0.05)
                load.stop()
            # A job the promoted primary does not have will not come back: missing is final.
            final = wait_settled(client, load.acked, within=60, statuses=TERMINAL | {"missing"})
            assert pool.proc is not None
            assert pool.proc.poll() is None, pool.output()[-3000:]
            ledger = LedgerReader(ledger_path)
            starts = ledger.starts()
            pool.remember(int(e["pid"]) for e in starts)
    sent = load.sent
    codes = sorted({s.status for s in sent}, key=str)
    report = Evidence(ledger_path).report(
        load.acked,
        final,
        requests=len(sent),
        codes=codes,
        failover_s=round(promoted - killed, 2),
    )
    print_figures(name, report, **settings)
    after = sum(1 for e in starts if e["ts"] > promoted)
    unconfirmed = {
        e["job_id"] for e in ledger.events if e["event"] == "end" and e.get("unreplicated")
    }
    return _Run(report, sent, cut.began_at, killed, promoted, after, unconfirmed)


def test_f1_with_replicas_confirming_writes_a_failover_loses_no_acknowledged_job(
    sentinel_set: LocalSentinelSet, tmp_path: Path
) -> None:
    """Every replica must confirm (N = 2 of 2): nothing acknowledged exists on the primary
    alone, whichever replica Sentinel promotes. The price: while a replica is cut off, and
    after the failover (one replica left), submissions are answered 503, stored but not
    confirmed."""
    run = _failover_under_load(
        sentinel_set,
        tmp_path,
        "F1",
        CONVEYOR_MIN_REPLICAS="2",
        CONVEYOR_REPLICA_TIMEOUT_MS="300",  # under the 0.5 s Redis timeout of `fault_env`
    )
    report, summary = run.report, run.report.summary()
    assert len(run.sent) >= JOBS, summary
    assert report.acked >= 300, summary  # the seconds before the cut
    assert report.lost == [], summary
    assert report.statuses == {"succeeded": report.acked}, summary
    # A job completes twice only when the replicas did not confirm its first completion
    # (the worker logged and counted it), and the failover lost that one: it ran again.
    assert set(report.dup_completions) <= run.unconfirmed, summary
    assert report.live_overlaps == [], summary
    # Nothing was acknowledged while the replicas were cut off: it could not be confirmed.
    assert run.acked_between(run.cut + 0.5, run.killed) == set(), summary
    assert {s.status for s in run.sent} <= {202, 503}, [
        s for s in run.sent if s.status not in (202, 503)
    ]
    # The API and the workers followed the promoted primary without a restart: what was
    # submitted after it (stored, if not confirmed) ran.
    assert run.started_after_promotion > 0, summary


def test_f2_without_confirmation_a_failover_loses_the_jobs_only_the_primary_had(
    sentinel_set: LocalSentinelSet, tmp_path: Path
) -> None:
    """The negative control: the same run without the option loses what was acknowledged
    while the replicas were cut off, and the checker counts it."""
    run = _failover_under_load(sentinel_set, tmp_path, "F2")
    report, summary = run.report, run.report.summary()
    assert len(run.sent) >= JOBS, summary
    assert report.acked > JOBS // 2, summary
    assert report.lost, (
        f"a failover after a cut lost nothing: the test cannot see a loss; {summary}"
    )
    # Lost: what was answered from just before the cut (still in the links it dropped) to
    # the promotion (an answer on its way at the kill arrives after it, none later).
    outside = set(report.lost) - run.acked_between(run.cut - LINK_LAG_S, run.promoted)
    assert not outside, [
        (round(s.received - run.cut, 3), round(s.received - run.killed, 3))
        for s in run.sent
        if s.job_id in outside
    ]
    assert set(report.statuses) <= {"succeeded", "missing"}, summary
    assert report.statuses["succeeded"] + len(report.lost) == report.acked, summary
    assert {s.status for s in run.sent} <= {202, 503}, [
        s for s in run.sent if s.status not in (202, 503)
    ]
    after = {s.job_id for s in run.sent if s.status == 202 and s.sent > run.promoted}
    assert after, summary
    assert after.isdisjoint(report.lost), summary  # what came after the failover is all there
    assert run.started_after_promotion > 0, summary
