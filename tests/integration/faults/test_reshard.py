"""Resharding under load: a queue's slot moves to another primary while jobs flow.

A 3-primary `LocalCluster` on loopback; the API and a 2-process worker pool reach it through
the cluster URL. 5,000 jobs are submitted over 4 queues while the busiest queue's slot is
migrated to another primary and back (``CLUSTER SETSLOT`` / ``MIGRATE``, as
``redis-cli --cluster reshard`` does), keys and all, twice each way. Every job answered 202
must end `succeeded`, none may complete twice, and no MOVED, ASK or TRYAGAIN may reach a
client as a 5xx.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

from entrypoints.local_topologies import LocalCluster
from tests.integration.faults.checker import LedgerReader
from tests.integration.faults.harness import (
    Evidence,
    Load,
    Pool,
    fault_env,
    print_figures,
    stale_writes,
    wait_settled,
)
from tests.integration.processes import Api
from tests.integration.test_redis_cluster import print_slot_map, spread_queues

JOBS = 5_000
RATE = 350.0  # submissions a second: about 14 s of load
MOVES = 4  # the slot goes over and back twice
MOVE_EVERY_S = 2.5


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "cluster", primaries=3) as servers:
        yield servers


def test_r5_a_slot_moved_under_load_loses_nothing_runs_nothing_twice_and_answers_no_5xx(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    spread = spread_queues(cluster, prefix, per_primary=2)
    queues = list(spread)[:4]
    print_slot_map(prefix, {name: spread[name] for name in queues})
    moving = queues[0]  # every other submission goes to it
    slot = key_slot(f"{{{prefix}:{moving}}}".encode())
    home = cluster.slot_owner(slot)
    away = next(port for port in cluster.primary_ports if port != home)

    def body(n: int) -> Mapping[str, Any]:
        queue = moving if n % 2 else queues[1 + (n // 2) % 3]
        return {"type": "dummy", "payload": {"mode": "succeed"}, "queue": queue}

    ledger_path = tmp_path / "ledger.jsonl"
    env = fault_env(
        cluster.url,
        ledger_path,
        CONVEYOR_KEY_PREFIX=prefix,
        CONVEYOR_WORKER_QUEUES=",".join(queues),
    )
    moves: list[tuple[int, int, int, float]] = []  # from, to, keys moved, seconds
    failures: list[BaseException] = []

    def reshard() -> None:
        try:
            for target in itertools.islice(itertools.cycle((away, home)), MOVES):
                time.sleep(MOVE_EVERY_S)
                source = cluster.slot_owner(slot)
                began = time.monotonic()
                keys = cluster.migrate_slot(slot, target)
                moves.append((source, target, keys, round(time.monotonic() - began, 2)))
        except BaseException as exc:  # reported by the test's thread
            failures.append(exc)

    with Api(env, tmp_path) as api, api.client() as client:
        with Pool(env, tmp_path, processes=2, concurrency=8, queues=",".join(queues)) as pool:
            pool.wait_children(2)
            with Load(api.base, body, rate=RATE, count=JOBS, senders=16) as load:
                mover = threading.Thread(target=reshard, daemon=True)
                mover.start()
                load.wait(within=180)
                mover.join(timeout=120)
            assert not mover.is_alive(), "the slot migrations did not end"
            final = wait_settled(client, load.acked, within=90)
            stale = stale_writes(cluster.url, prefix)
            assert pool.proc is not None
            assert pool.proc.poll() is None, pool.output()[-3000:]
            pool.remember(int(e["pid"]) for e in LedgerReader(ledger_path).starts())
    assert failures == [], failures
    sent = load.sent
    codes = sorted({s.status for s in sent}, key=str)
    report = Evidence(ledger_path).report(
        load.acked, final, stale, requests=len(sent), codes=codes, moves=moves
    )
    print_figures("R5", report)
    summary = report.summary()
    assert len(moves) == MOVES, moves
    assert cluster.slot_owner(slot) == home
    assert sum(keys for _, _, keys, _ in moves) > 0, moves  # the queue's keys really moved
    assert len(sent) == JOBS, summary
    assert all(s.status == 202 for s in sent), [s for s in sent if s.status != 202][:5]
    assert report.acked == JOBS, summary
    assert report.lost == [], summary
    assert report.statuses == {"succeeded": JOBS}, summary
    assert report.dup_completions == {}, summary
    assert report.live_overlaps == [], summary
