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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

from entrypoints.local_topologies import LocalCluster
from entrypoints.local_topologies.nodes import ask, info, wait_until
from tests.integration.faults.failover import (
    Failover,
    FailoverRun,
    failover_under_load,
)
from tests.integration.faults.harness import fault_env
from tests.integration.test_redis_cluster import print_slot_map, spread_queues

pytestmark = pytest.mark.timeout(120)

JOBS = 1_200
RATE = 200.0  # submissions a second: the kill about 4 s in
NODE_TIMEOUT_MS = 1000  # a failover within about 2-4 s of the kill
FAILOVER_WITHIN_S = 20.0
SENDERS = 24


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


def _failover_under_load(
    cluster: LocalCluster, tmp_path: Path, name: str, **settings: str
) -> tuple[FailoverRun, str]:
    """The run, and its busy queue: the one on the primary killed."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    spread = spread_queues(cluster, prefix, per_primary=1)
    print_slot_map(prefix, spread)
    # The busy queue away from the registry of queue names, which every submission also
    # writes to: there a cut replica would hold up every queue's acknowledgements.
    registry = cluster.slot_owner(key_slot(f"{prefix}:queues".encode()))
    busy = next(name for name, port in spread.items() if port != registry)
    others = [name for name in spread if name != busy]
    queues = ",".join([busy, *others])
    slot = key_slot(f"{{{prefix}:{busy}}}".encode())

    def body(n: int) -> Mapping[str, Any]:
        queue = busy if n % 2 else others[(n // 2) % len(others)]
        payload = {"mode": "succeed"}
        return {"type": "dummy", "payload": payload, "queue": queue, "max_attempts": 10}

    def primary_and_replicas() -> tuple[int, Sequence[int]]:
        primary = spread[busy]
        return primary, [_replica_of(cluster, primary)]

    def kill(primary: int) -> int:
        cluster.kill_node(primary)
        return primary

    failover = Failover(
        primary_and_replicas,
        kill,
        lambda killed: _wait_for_failover(cluster, slot, killed),
        lambda: cluster.slot_owner(slot),
    )
    env = fault_env(
        cluster.url,
        tmp_path / "ledger.jsonl",
        CONVEYOR_KEY_PREFIX=prefix,
        CONVEYOR_WORKER_QUEUES=queues,
        **settings,
    )
    return failover_under_load(
        failover,
        env,
        tmp_path,
        name,
        body,
        jobs=JOBS,
        rate=RATE,
        senders=SENDERS,
        load_within=60,
        settle_within=40,
        queues=queues,
        **settings,
    ), busy


def test_f3_with_replicas_confirming_writes_a_cluster_failover_loses_no_acknowledged_job(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """N = 1: each primary written confirms its part with its own WAIT, so nothing
    acknowledged exists on the killed primary alone. The price: while its replica is cut
    off, and after the failover (the promoted one has no replica), the busy queue's
    submissions are answered 503, stored but not confirmed; the other queues' are not."""
    run, busy = _failover_under_load(
        cluster,
        tmp_path,
        "F3",
        CONVEYOR_MIN_REPLICAS="1",
        CONVEYOR_REPLICA_TIMEOUT_MS="300",  # under the 0.5 s Redis timeout of `fault_env`
    )
    run.check_confirmed(JOBS, acked_at_least=200)
    summary = run.report.summary()
    # Nothing of the busy queue was acknowledged while its replica was cut off.
    assert run.acked_between(run.cut + 0.5, run.killed, busy) == set(), summary
    # The other primaries kept acknowledging theirs meanwhile.
    assert run.acked_between(run.cut + 0.5, run.killed) != set(), summary


def test_f4_without_confirmation_a_cluster_failover_loses_the_jobs_only_the_primary_had(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """The negative control: the same run without the option loses what the busy queue
    had acknowledged while its primary's replica was cut off, and the checker counts it."""
    run, busy = _failover_under_load(cluster, tmp_path, "F4")
    after = run.check_lost_only_the_window(JOBS)
    # The busy queue's new primary takes its submissions: the clients found it.
    assert run.acked_between(run.promoted, time.time(), busy), after
