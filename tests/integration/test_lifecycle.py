"""The job lifecycle API end to end: API and worker processes on a real Redis, and on a
3-primary Redis Cluster.

Each test is one acceptance point, at full size unless its docstring says otherwise. What
really ran is read from the workers' audit log (one line per execution start, written
outside Redis), not from what the API says about the jobs.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from entrypoints.local_redis import LocalRedis
from entrypoints.local_topologies import LocalCluster
from tests.integration.http_load import Request, send_all
from tests.integration.processes import Api, Conveyor, service_env, wait_for_job

TERMINAL = {"succeeded", "dead", "cancelled", "expired"}


@pytest.fixture(scope="module", params=["one-server", "cluster"])
def service_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Every test here runs on the suite's Redis and again on a 3-primary Redis Cluster,
    where the queues the tests use live on different primaries."""
    if request.param == "one-server":
        url: str = request.getfixturevalue("redis_url")
        yield url
        return
    with LocalCluster(tmp_path_factory.mktemp("cluster"), primaries=3) as cluster:
        yield cluster.url


def _env(redis_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return service_env(redis_url, CONVEYOR_AUDIT_LOG=str(tmp_path / "audit.jsonl"), **extra)


def _starts(tmp_path: Path) -> list[dict[str, Any]]:
    """Every execution start the workers recorded, in order."""
    path = tmp_path / "audit.jsonl"
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [e for e in events if e["event"] == "start"]


def _job(
    type_: str = "dummy", payload: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    return {"type": type_, "payload": payload or {"mode": "succeed"}, **extra}


def _queue(client: httpx.Client, name: str) -> dict[str, Any]:
    response = client.get(f"/queues/{name}")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


def _depth(client: httpx.Client, name: str) -> int:
    return int(_queue(client, name)["counts"].get("queued", 0))


def _wait_all(client: httpx.Client, ids: list[str], statuses: set[str], within: float) -> None:
    for job_id in ids:
        wait_for_job(client, job_id, statuses, within=within)


def test_idempotency_keys_under_concurrent_repeats_create_each_job_once(
    service_url: str, tmp_path: Path
) -> None:
    """1,000 keys x 20 concurrent identical submissions: 1,000 jobs, each run once, 0 5xx."""
    env = _env(service_url, tmp_path)
    keys = [f"order-{n}" for n in range(1000)]
    requests = [
        Request(
            "POST",
            "/jobs",
            _job(payload={"mode": "succeed", "result": key}),
            {"Idempotency-Key": key},
        )
        for key in keys
        for _ in range(20)
    ]
    # The 20 copies of a key are adjacent, so they are in flight together on 20 connections.
    with Api(env, tmp_path) as api, api.client() as client:
        started = time.monotonic()
        replies = asyncio.run(send_all(api.port, requests))
        print(f"\n20,000 keyed POSTs answered in {time.monotonic() - started:.1f} s")
        statuses = Counter(reply.status for reply in replies)
        assert statuses == Counter({202: 20_000}), statuses
        answers: dict[str, set[str]] = {key: set() for key in keys}
        for request, reply in zip(requests, replies, strict=True):
            answers[request.headers["Idempotency-Key"]].add(reply.json()["id"])
        assert all(len(ids) == 1 for ids in answers.values())
        ids = [next(iter(answers[key])) for key in keys]
        assert len(set(ids)) == 1000
        conflict = client.post(
            "/jobs",
            json=_job(payload={"mode": "succeed", "result": "another body"}),
            headers={"Idempotency-Key": keys[0]},
        )
        assert conflict.status_code == 422, conflict.text
        assert conflict.headers["content-type"].startswith("application/problem+json")
        assert _depth(client, "default") == 1000
        with Conveyor(["worker", "--concurrency", "50"], env, tmp_path):
            _wait_all(client, ids, {"succeeded"}, within=60)
        runs = Counter(start["job_id"] for start in _starts(tmp_path))
        assert set(runs) == set(ids)
        assert set(runs.values()) == {1}


def test_delayed_jobs_start_on_time(service_url: str, tmp_path: Path) -> None:
    """200 jobs with delays of 2-10 s: each starts no earlier than its time, within 1 s after."""
    env = _env(service_url, tmp_path)
    rng = random.Random(11)
    with (
        Api(env, tmp_path) as api,
        api.client() as client,
        Conveyor(["worker", "--concurrency", "50"], env, tmp_path) as worker,
    ):
        # Its process running, so the earliest job (2 s) is not held up by its start.
        worker.wait_for('"worker started"')
        batch = [_job(delay=round(rng.uniform(2, 10), 3)) for _ in range(200)]
        response = client.post("/jobs/batch", json={"jobs": batch})
        assert response.status_code == 202, response.text
        ids = [entry["id"] for entry in response.json()["jobs"]]
        run_at = {
            job_id: datetime.fromisoformat(client.get(f"/jobs/{job_id}").json()["run_at"])
            for job_id in ids
        }
        assert all(client.get(f"/jobs/{i}").json()["status"] == "scheduled" for i in ids[:5])
        _wait_all(client, ids, {"succeeded"}, within=30)
    lateness = {
        start["job_id"]: start["ts"] - run_at[start["job_id"]].timestamp()
        for start in _starts(tmp_path)
    }
    assert set(lateness) == set(ids)
    early = {i: late for i, late in lateness.items() if late < 0}
    late = {i: s for i, s in lateness.items() if s > 1.0}
    assert not early, early
    assert not late, late
    figures = sorted(lateness.values())
    print(
        f"\n200 delayed jobs: started {figures[0]:.3f}-{figures[-1]:.3f} s after run_at,"
        f" median {figures[len(figures) // 2]:.3f} s"
    )


def test_cancelled_queued_jobs_never_start_and_a_running_report_stops(
    service_url: str, tmp_path: Path
) -> None:
    """Cancel 100 queued jobs while the worker is busy: none of them ever starts. Cancel a
    running `report`: it ends `cancelled` within the grace period."""
    env = _env(service_url, tmp_path, CONVEYOR_CANCEL_GRACE_SECONDS="3")
    with (
        Api(env, tmp_path) as api,
        api.client() as client,
        Conveyor(["worker", "--concurrency", "4"], env, tmp_path),
    ):
        blockers = [
            client.post("/jobs", json=_job(payload={"mode": "sleep", "seconds": 2})).json()["id"]
            for _ in range(8)
        ]
        response = client.post("/jobs/batch", json={"jobs": [_job() for _ in range(100)]})
        assert response.status_code == 202, response.text
        doomed = [entry["id"] for entry in response.json()["jobs"]]
        for job_id in doomed:
            cancelled = client.post(f"/jobs/{job_id}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["status"] == "cancelled"
        again = client.post(f"/jobs/{doomed[0]}/cancel")
        assert again.status_code == 409, again.text
        _wait_all(client, blockers, {"succeeded"}, within=30)

        report = client.post(
            "/jobs", json=_job("report", {"name": "long", "rows": 1, "seconds": 60})
        ).json()["id"]
        view = wait_for_job(client, report, {"active"}, within=10)
        asked = time.monotonic()
        requested = client.post(f"/jobs/{report}/cancel")
        assert requested.status_code == 202, requested.text
        assert requested.json()["cancel_requested_at"] is not None
        view = wait_for_job(client, report, TERMINAL, within=10)
        assert view["status"] == "cancelled", view
        stopped_after = time.monotonic() - asked
        assert stopped_after < 3.0
        print(f"\nrunning report cancelled {stopped_after:.2f} s after the request (grace 3 s)")
        assert [e["kind"] for e in view["timeline"]][-1] == "cancelled"
    started = {start["job_id"] for start in _starts(tmp_path)}
    assert started.isdisjoint(doomed)


def test_a_paused_queue_keeps_its_jobs_while_others_flow_then_drains(
    service_url: str, tmp_path: Path
) -> None:
    env = _env(service_url, tmp_path)
    with (
        Api(env, tmp_path) as api,
        api.client() as client,
        Conveyor(["worker", "--queues", "held,flowing", "--concurrency", "10"], env, tmp_path),
    ):
        paused = client.post("/queues/held/pause")
        assert paused.status_code == 200, paused.text
        assert paused.json()["paused"] is True
        response = client.post(
            "/jobs/batch",
            json={"jobs": [_job(queue=q) for q in ("held", "flowing") for _ in range(50)]},
        )
        assert response.status_code == 202, response.text
        ids = [entry["id"] for entry in response.json()["jobs"]]
        held, flowing = ids[:50], ids[50:]
        _wait_all(client, flowing, {"succeeded"}, within=20)
        time.sleep(1.5)  # several claim rounds after the other queue drained
        assert _depth(client, "held") == 50
        view = client.get(f"/jobs/{held[-1]}").json()
        assert view["status"] == "queued"
        assert view["waiting_reason"]["kind"] == "queue_paused"
        assert {s["job_id"] for s in _starts(tmp_path)}.isdisjoint(held)
        resumed = client.post("/queues/held/resume")
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["paused"] is False
        _wait_all(client, held, {"succeeded"}, within=20)


def test_over_an_admission_limit_nothing_is_enqueued_until_under_it_again(
    service_url: str, tmp_path: Path
) -> None:
    env = _env(service_url, tmp_path, CONVEYOR_QUEUE_LIMITS='{"limited": {"max_depth": 5}}')
    with Api(env, tmp_path) as api, api.client() as client:
        ids = []
        for _ in range(5):
            response = client.post("/jobs", json=_job(queue="limited"))
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        refused = client.post("/jobs", json=_job(queue="limited"))
        assert refused.status_code == 429, refused.text
        assert float(refused.headers["retry-after"]) > 0
        assert refused.headers["content-type"].startswith("application/problem+json")
        batch = client.post("/jobs/batch", json={"jobs": [_job(queue="limited")] * 2})
        assert batch.status_code == 429, batch.text
        assert _depth(client, "limited") == 5
        other = client.post("/jobs", json=_job(queue="unlimited"))
        assert other.status_code == 202, other.text
        assert client.post(f"/jobs/{ids[0]}/cancel").status_code == 200
        again = client.post("/jobs", json=_job(queue="limited"))
        assert again.status_code == 202, again.text
        assert _depth(client, "limited") == 5


def test_a_batch_is_one_answer_and_all_or_nothing(service_url: str, tmp_path: Path) -> None:
    env = _env(service_url, tmp_path)
    with Api(env, tmp_path) as api, api.client() as client:
        jobs = [_job(payload={"mode": "succeed", "result": n}) for n in range(1000)]
        response = client.post("/jobs/batch", json={"jobs": jobs})
        assert response.status_code == 202, response.text
        print(f"\nbatch of 1,000 answered in {response.elapsed.total_seconds() * 1000:.0f} ms")
        entries = response.json()["jobs"]
        assert len(entries) == 1000
        assert len({e["id"] for e in entries}) == 1000
        assert _depth(client, "default") == 1000
        bad = [*jobs[:10], _job(payload={"mode": "no-such-mode"}), *jobs[:10]]
        refused = client.post("/jobs/batch", json={"jobs": bad})
        assert refused.status_code == 422, refused.text
        paths = [e["path"] for e in refused.json()["errors"]]
        assert paths
        assert all(p.startswith("jobs[10]") for p in paths), paths
        assert _depth(client, "default") == 1000
        first = entries[0]["id"]
        with Conveyor(["worker"], env, tmp_path):
            started = time.monotonic()
            waited = client.get(f"/jobs/{first}", params={"wait": 10}, timeout=15)
            assert waited.status_code == 200
            assert waited.json()["status"] == "succeeded"
            assert time.monotonic() - started < 10


@pytest.mark.parametrize("ahead", [3])
def test_a_queued_job_says_why_it_waits(service_url: str, tmp_path: Path, ahead: int) -> None:
    env = _env(service_url, tmp_path)
    with Api(env, tmp_path) as api, api.client() as client:
        ids = [
            client.post("/jobs", json=_job(queue="lonely")).json()["id"] for _ in range(ahead + 1)
        ]
        view = client.get(f"/jobs/{ids[-1]}").json()
        assert view["waiting_reason"]["kind"] == "no_worker", view
        assert view["waiting_reason"]["ahead"] == ahead
        assert [e["kind"] for e in view["timeline"]] == ["submitted"]


def test_idempotency_keys_hold_across_a_redis_kill_and_restart(tmp_path: Path) -> None:
    """Keys answered before Redis was SIGKILLed (AOF fsynced every second) still answer the
    same job after it restarts, and still refuse another body."""
    data_dir = tmp_path / "redis"
    server = LocalRedis(data_dir=data_dir).start()
    port = server.port
    env = _env(server.url, tmp_path, CONVEYOR_REDIS_TIMEOUT="0.5")
    keys = [f"pay-{n}" for n in range(50)]

    def post(client: httpx.Client, key: str, body: str = "same") -> httpx.Response:
        return client.post(
            "/jobs",
            json=_job(payload={"mode": "succeed", "result": body}),
            headers={"Idempotency-Key": key},
        )

    try:
        with Api(env, tmp_path) as api, api.client() as client:
            first = {key: post(client, key).json()["id"] for key in keys}
            time.sleep(1.5)  # past appendfsync everysec
            os.kill(server.pid, signal.SIGKILL)
            server.stop()
            server = LocalRedis(data_dir=data_dir, port=port).start()
            deadline = time.monotonic() + 10
            while client.get("/health/ready").status_code != 200:
                assert time.monotonic() < deadline, "API never saw Redis return"
                time.sleep(0.1)
            for key in keys:
                again = post(client, key)
                assert again.status_code == 202, again.text
                assert again.json()["id"] == first[key]
                assert again.headers.get("idempotent-replayed") == "true"
            assert post(client, keys[0], body="other").status_code == 422
            assert _depth(client, "default") == len(keys)
    finally:
        server.stop()
