"""Failover under load on Redis Cluster: 3 primaries with a replica each, on loopback.

The API and a 2-process worker pool reach the cluster through its URL while jobs are
submitted over three queues, one per primary, half of them to one busy queue. The busy
queue's primary is SIGKILLed; the other primaries mark it failed after the cluster node
timeout and its replica takes its slots. As in `test_failover.py` (Sentinel), a kill alone
loses nothing on loopback, so the primary's replication link is cut for a second first (its
replica's PSYNC refused, the link dropped every 20 ms) and the kill comes while the replica
is behind: what was acknowledged in that second exists on the primary alone.

With `CONVEYOR_MIN_REPLICAS=1` each primary a submission writes to confirms it with a WAIT of
its own: no job answered 202 may be lost. Without it (the negative control) the test reports
how many were, so it can see a loss.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

from entrypoints.local_topologies import LocalCluster
from entrypoints.local_topologies.nodes import ask, info, wait_until
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
from tests.integration.faults.test_failover import ReplicasCut
from tests.integration.processes import Api
from tests.integration.test_redis_cluster import print_slot_map, spread_queues

pytestmark = pytest.mark.timeout(120)

JOBS = 1_200
RATE = 200.0  # submissions a second: the kill about 4 s in
CUT_AFTER_S = 3.0
CUT_FOR_S = 1.0
NODE_TIMEOUT_MS = 1000  # a failover within about 2-4 s of the kill
FAILOVER_WITHIN_S = 20.0
LINK_LAG_S = 0.5  # how far behind a loaded replica may be when its link is cut
SENDERS = 24
AFTER_S = 2.0  # load kept on the promoted primary at least this long


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(
        tmp_path / "cluster",
        primaries=3,
        replicas_per_primary=1,
        node_timeout_ms=NODE_TIMEOUT_MS,
    ) as servers:
        yield servers


def _replica_of(cluster: LocalCluster, primary: int) -> int:
    for port in cluster.replica_ports:
        if int(info(port, "replication").get("master_port", 0)) == primary:
            return port
    raise AssertionError(f"no replica of {primary}")


def _wait_for_failover(cluster: LocalCluster, slot: int, old: int) -> int:
    """Wait until another node serves `slot` as a primary and every live node says the
    cluster is ok; answers its port."""
    found: list[int] = []

    def pending() -> str | None:
        owner = cluster.slot_owner(slot)
        if owner == old:
            return f"slot {slot} still on {old}"
        if ask(owner, "ROLE")[0] != "master":
            return f"{owner} owns slot {slot} but is no primary yet"
        for port in cluster.node_ports:
            if port == old:
                continue
            lines = str(ask(port, "CLUSTER", "INFO")).splitlines()
            state = dict(line.split(":", 1) for line in lines if ":" in line).get("cluster_state")
            if state != "ok":
                return f"node {port} has cluster_state {state}"
        found.append(owner)
        return None

    wait_until(f"a replica promoted in place of {old}", FAILOVER_WITHIN_S, pending)
    return found[-1]


@dataclass
class _Run:
    report: Report
    sent: list[Sent]
    busy: str  # the queue on the primary killed
    queue_of: dict[str, str]  # job id -> its queue, for the jobs the API still knows
    cut: float  # when the link began to be cut, time.time()
    killed: float
    promoted: float
    started_after_promotion: int
    unconfirmed: set[str]  # jobs with a completion the replicas did not confirm

    def acked_between(self, start: float, end: float, queue: str | None = None) -> set[str]:
        return {
            s.job_id
            for s in self.sent
            if s.status == 202
            and s.job_id is not None
            and start <= s.received <= end
            and (queue is None or self.queue_of.get(s.job_id) == queue)
        }


def _failover_under_load(cluster: LocalCluster, tmp_path: Path, name: str, **settings: str) -> _Run:
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    spread = spread_queues(cluster, prefix, per_primary=1)
    print_slot_map(prefix, spread)
    # The busy queue away from the registry of queue names, which every submission also
    # writes to: there a cut replica would hold up every queue's acknowledgements.
    registry = cluster.slot_owner(key_slot(f"{prefix}:queues".encode()))
    busy = next(name for name, port in spread.items() if port != registry)
    others = [name for name in spread if name != busy]
    queues = [busy, *others]
    slot = key_slot(f"{{{prefix}:{busy}}}".encode())
    primary = spread[busy]
    replica = _replica_of(cluster, primary)

    def body(n: int) -> Mapping[str, Any]:
        queue = busy if n % 2 else others[(n // 2) % len(others)]
        payload = {"mode": "succeed"}
        return {"type": "dummy", "payload": payload, "queue": queue, "max_attempts": 10}

    ledger_path = tmp_path / "ledger.jsonl"
    env = fault_env(
        cluster.url,
        ledger_path,
        CONVEYOR_KEY_PREFIX=prefix,
        CONVEYOR_WORKER_QUEUES=",".join(queues),
        **settings,
    )
    with Api(env, tmp_path) as api, api.client() as client:
        with Pool(env, tmp_path, processes=2, concurrency=8, queues=",".join(queues)) as pool:
            pool.wait_children(2)
            with Load(api.base, body, rate=RATE, senders=SENDERS) as load:
                time.sleep(CUT_AFTER_S)
                with ReplicasCut(primary, [replica]) as cut:
                    cut.until_behind(at_least=CUT_FOR_S)
                    cluster.kill_node(primary)
                    killed = time.time()
                _wait_for_failover(cluster, slot, primary)
                promoted = time.time()
                deadline = time.monotonic() + 60
                while len(load.sent) < JOBS or time.time() < promoted + AFTER_S:
                    assert time.monotonic() < deadline, f"{len(load.sent)} sent"
                    time.sleep(0.05)
                load.stop()
            # A job the promoted primary does not have will not come back: missing is final.
            final = wait_settled(client, load.acked, within=40, statuses=TERMINAL | {"missing"})
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
    queue_of = {
        job_id: str(state.view["queue"])
        for job_id, state in final.items()
        if state.view is not None
    }
    after = sum(1 for e in starts if e["ts"] > promoted)
    unconfirmed = {
        e["job_id"] for e in ledger.events if e["event"] == "end" and e.get("unreplicated")
    }
    return _Run(report, sent, busy, queue_of, cut.began_at, killed, promoted, after, unconfirmed)


def test_f3_with_replicas_confirming_writes_a_cluster_failover_loses_no_acknowledged_job(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """N = 1: each primary written confirms its part with its own WAIT, so nothing
    acknowledged exists on the killed primary alone. The price: while its replica is cut
    off, and after the failover (the promoted one has no replica), the busy queue's
    submissions are answered 503, stored but not confirmed; the other queues' are not."""
    run = _failover_under_load(
        cluster,
        tmp_path,
        "F3",
        CONVEYOR_MIN_REPLICAS="1",
        CONVEYOR_REPLICA_TIMEOUT_MS="300",  # under the 0.5 s Redis timeout of `fault_env`
    )
    report, summary = run.report, run.report.summary()
    assert len(run.sent) >= JOBS, summary
    assert report.acked >= 200, summary  # the seconds before the cut
    assert report.lost == [], summary
    assert report.statuses == {"succeeded": report.acked}, summary
    # A job completes twice only when the replicas did not confirm its first completion
    # (the worker logged and counted it), and the failover lost that one: it ran again.
    assert set(report.dup_completions) <= run.unconfirmed, summary
    assert report.live_overlaps == [], summary
    # Nothing of the busy queue was acknowledged while its replica was cut off.
    assert run.acked_between(run.cut + 0.5, run.killed, run.busy) == set(), summary
    # The other primaries kept acknowledging theirs meanwhile.
    assert run.acked_between(run.cut + 0.5, run.killed) != set(), summary
    assert {s.status for s in run.sent} <= {202, 503}, [
        s for s in run.sent if s.status not in (202, 503)
    ]
    assert run.started_after_promotion > 0, summary


def test_f4_without_confirmation_a_cluster_failover_loses_the_jobs_only_the_primary_had(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """The negative control: the same run without the option loses what the busy queue
    had acknowledged while its primary's replica was cut off, and the checker counts it."""
    run = _failover_under_load(cluster, tmp_path, "F4")
    report, summary = run.report, run.report.summary()
    assert len(run.sent) >= JOBS, summary
    assert report.acked > JOBS // 2, summary
    assert report.lost, (
        f"a failover after a cut lost nothing: the test cannot see a loss; {summary}"
    )
    # Lost: answered from just before the cut to the promotion.
    outside = set(report.lost) - run.acked_between(run.cut - LINK_LAG_S, run.promoted)
    assert not outside, sorted(outside)[:5]
    assert set(report.statuses) <= {"succeeded", "missing"}, summary
    assert report.statuses["succeeded"] + len(report.lost) == report.acked, summary
    assert {s.status for s in run.sent} <= {202, 503}, [
        s for s in run.sent if s.status not in (202, 503)
    ]
    after = {s.job_id for s in run.sent if s.status == 202 and s.sent > run.promoted}
    assert after, summary
    # The busy queue's new primary takes its submissions: the clients found it.
    assert run.acked_between(run.promoted, time.time(), run.busy), summary
    assert after.isdisjoint(report.lost), summary
    assert run.started_after_promotion > 0, summary
