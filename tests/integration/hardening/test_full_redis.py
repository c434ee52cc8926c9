"""A full Redis (`maxmemory` reached, `maxmemory-policy noeviction`), end to end.

The test runs a Redis of its own, two APIs on it (one with the admission watermark
`CONVEYOR_ADMIT_MAX_MEMORY_BYTES`, one without) and a supervised worker pool whose jobs run
right across the time Redis is full. Memory is filled by a ballast the test writes, then
freed by deleting it. The witnesses: every HTTP answer, the audit log (one line per execution
start, lease renewal and end, outside Redis) and the supervisor's log of its children.

Figures are scaled to run in about 15 s: a 3 s lease and 8 s of full Redis (over two leases,
so the running jobs' leases live only if their renewals get through a full Redis).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis

from entrypoints.local_redis import LocalRedis
from tests.integration.faults.checker import LedgerReader
from tests.integration.faults.harness import (
    Evidence,
    Load,
    Pool,
    Sent,
    fault_env,
    post_job,
    print_figures,
    submit,
    wait_settled,
)
from tests.integration.processes import Api

LEASE_S = 3.0
FULL_FOR_S = 8.0
LONG_JOB_S = 9.0  # started just before Redis fills up, still running when it is freed
MiB = 2**20


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    with LocalRedis(data_dir=tmp_path / "redis") as server:
        yield server


class Ballast:
    """Keys that fill Redis's memory, written from the test and deleted to free it."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._keys: list[str] = []

    def used(self) -> int:
        return int(self._client.info("memory")["used_memory"])

    def fill_to(self, target: int) -> None:
        """Write 64 KiB blocks until used memory passes `target`."""
        while self.used() <= target:
            key = f"ballast:{len(self._keys)}"
            self._client.set(key, b"x" * 65536)
            self._keys.append(key)

    def free(self) -> None:
        # DEL is allowed when Redis is full: it is how memory comes back.
        for start in range(0, len(self._keys), 100):
            self._client.delete(*self._keys[start : start + 100])
        self._keys.clear()


def _job(seconds: float) -> Mapping[str, Any]:
    return {"type": "dummy", "payload": {"mode": "sleep", "seconds": seconds}}


def _quick(_: int) -> Mapping[str, Any]:
    return {"type": "dummy", "payload": {"mode": "succeed"}}


def _refusals_carry_retry_after(sent: list[Sent]) -> list[Sent]:
    return [s for s in sent if s.status in (429, 503) and not (s.retry_after or "").isdigit()]


def _events(output: str) -> Counter[str]:
    """How often each event appears in a process's JSON log."""
    counts: Counter[str] = Counter()
    for line in output.splitlines():
        if line.startswith("{"):
            try:
                counts[json.loads(line).get("event", "")] += 1
            except ValueError:
                continue
    return counts


def test_a_full_redis_answers_503_or_429_keeps_workers_up_and_runs_every_job_once(
    own_redis: LocalRedis, tmp_path: Path
) -> None:
    ledger = tmp_path / "audit.jsonl"
    env = {**fault_env(own_redis.url, ledger), "CONVEYOR_LEASE_SECONDS": str(LEASE_S)}
    client = redis.Redis.from_url(own_redis.url)
    ballast = Ballast(client)
    watermark = ballast.used() + 4 * MiB
    guarded_env = {**env, "CONVEYOR_ADMIT_MAX_MEMORY_BYTES": str(watermark)}
    accepted: list[str] = []
    with (
        Api(env, tmp_path) as plain,
        Api(guarded_env, tmp_path) as guarded,
        plain.client() as api,
        guarded.client() as guarded_api,
        Pool(env, tmp_path, processes=2, concurrency=20) as pool,
    ):
        pool.wait_children(2)
        children_before = {c.pid for c in pool.children()}
        # Work that spans the time Redis is full: long jobs running, scheduled jobs that fall
        # due meanwhile, quick ones.
        long_jobs = [submit(api, _job(LONG_JOB_S)) for _ in range(30)]
        accepted += long_jobs
        accepted += [submit(api, {**_quick(0), "delay": 4}) for _ in range(10)]
        accepted += [submit(api, _job(0.2)) for _ in range(20)]
        wait_settled(api, long_jobs, within=10, statuses=frozenset({"active"}))

        # Over the watermark, short of maxmemory: the guarded API refuses, the other accepts.
        ballast.fill_to(watermark + MiB // 2)
        over_watermark = [post_job(guarded_api, _quick(0)) for _ in range(10)]
        under_maxmemory = [post_job(api, _quick(0)) for _ in range(10)]
        accepted += [s.job_id for s in under_maxmemory if s.job_id is not None]

        # Full: more ballast, then maxmemory below what is used, by a margin that the
        # comings and goings of client buffers cannot cross.
        ballast.fill_to(ballast.used() + 6 * MiB)
        client.config_set("maxmemory", ballast.used() - 2 * MiB)
        full_at = time.time()
        with (
            Load(plain.base, _quick, rate=10.0, senders=2) as on_plain,
            Load(guarded.base, _quick, rate=10.0, senders=2) as on_guarded,
        ):
            batch = api.post("/jobs/batch", json={"jobs": [_quick(0), _quick(1)]})
            listing = api.get("/jobs", params={"status": "active"})
            time.sleep(FULL_FOR_S)
        freed_at = time.time()
        ballast.free()
        after = [post_job(api, _quick(0)) for _ in range(10)]
        accepted += [s.job_id for s in after if s.job_id is not None]
        accepted += on_plain.acked + on_guarded.acked

        final = wait_settled(api, accepted, within=30)
        assert pool.proc is not None
        assert pool.proc.poll() is None, pool.output()[-3000:]
        children_after = {c.pid for c in pool.children()}
        pool.remember(int(e["pid"]) for e in LedgerReader(ledger).starts())
        supervisor = _events(pool.output())
    events = LedgerReader(ledger)
    events.poll()
    renewed_while_full = [
        e
        for e in events.events
        if e["event"] == "renewed" and full_at < e["ts"] < freed_at and e["job_id"] in long_jobs
    ]
    while_full = on_plain.sent + on_guarded.sent
    report = Evidence(ledger, lease_seconds=LEASE_S).report(
        accepted,
        final,
        posts_while_full=len(while_full),
        plain_codes=dict(Counter(s.status for s in on_plain.sent)),
        guarded_codes=dict(Counter(s.status for s in on_guarded.sent)),
        over_watermark_codes=dict(Counter(s.status for s in over_watermark)),
        batch_while_full=batch.status_code,
        renewals_while_full=len(renewed_while_full),
        child_starts=supervisor["child started"],
        child_deaths=supervisor["child died"],
    )
    print_figures("full-redis", report)
    summary = report.summary()

    # The API: 503 (Redis is full) or 429 (the watermark says so), each with Retry-After.
    assert while_full, summary
    assert {s.status for s in on_plain.sent} == {503}, summary
    assert {s.status for s in on_guarded.sent} <= {429, 503}, summary
    assert {s.status for s in over_watermark} == {429}, summary
    assert {s.status for s in under_maxmemory} == {202}, summary
    assert batch.status_code == 503, batch.text
    assert listing.status_code == 200, listing.text
    assert _refusals_carry_retry_after(while_full + over_watermark) == [], summary
    assert {s.status for s in after} == {202}, summary
    # The workers: no child died or was replaced; leases were renewed while Redis was full.
    assert children_after == children_before, summary
    assert (supervisor["child started"], supervisor["child died"]) == (2, 0), summary
    assert supervisor["job processing crashed"] == 0, pool.output()[-3000:]
    assert len({e["job_id"] for e in renewed_while_full}) == len(long_jobs), summary
    # Every accepted job succeeded, and ran once.
    assert report.statuses == {"succeeded": len(accepted)}, summary
    assert report.lost == [], summary
    assert report.extra_runs == 0, summary
    assert report.dup_completions == {}, summary
    assert report.live_overlaps == [], summary
    assert all(state.attempts == 1 for state in final.values()), summary
