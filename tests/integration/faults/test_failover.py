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

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from entrypoints.local_topologies import LocalSentinelSet
from tests.integration.faults.failover import (
    Failover,
    FailoverRun,
    failover_under_load,
)
from tests.integration.faults.harness import fault_env

JOBS = 2_000
RATE = 250.0  # submissions a second: the kill about 4 s in
FAILOVER_WITHIN_S = 15.0  # an election Sentinels split is retried: it may take 10 s
# Enough senders to keep a few hundred a second going while answers take the replica
# timeout (each waits for its own answer).
SENDERS = 32


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[LocalSentinelSet]:
    with LocalSentinelSet(tmp_path / "redis", replicas=2, sentinels=3) as servers:
        yield servers


def _quick_job(_: int) -> Mapping[str, Any]:
    return {"type": "dummy", "payload": {"mode": "succeed"}, "max_attempts": 10}


def _failover_under_load(
    servers: LocalSentinelSet, tmp_path: Path, name: str, **settings: str
) -> FailoverRun:
    """Submit at least `JOBS` jobs and drain them; `CUT_AFTER_S` in, cut the replicas'
    links, and kill the primary once they are behind."""

    def primary_and_replicas() -> tuple[int, Sequence[int]]:
        return servers.primary_address()[1], servers.replica_ports

    failover = Failover(
        primary_and_replicas,
        lambda _: servers.kill_primary(),
        lambda killed: servers.wait_for_failover(killed, timeout=FAILOVER_WITHIN_S),
        lambda: servers.primary_address()[1],
    )
    env = fault_env(servers.url, tmp_path / "ledger.jsonl", **settings)
    return failover_under_load(
        failover,
        env,
        tmp_path,
        name,
        _quick_job,
        jobs=JOBS,
        rate=RATE,
        senders=SENDERS,
        load_within=120,
        settle_within=60,
        **settings,
    )


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
    run.check_confirmed(JOBS, acked_at_least=300)
    # Nothing was acknowledged while the replicas were cut off: it could not be confirmed.
    assert run.acked_between(run.cut + 0.5, run.killed) == set(), run.report.summary()


def test_f2_without_confirmation_a_failover_loses_the_jobs_only_the_primary_had(
    sentinel_set: LocalSentinelSet, tmp_path: Path
) -> None:
    """The negative control: the same run without the option loses what was acknowledged
    while the replicas were cut off, and the checker counts it."""
    run = _failover_under_load(sentinel_set, tmp_path, "F2")
    run.check_lost_only_the_window(JOBS)
