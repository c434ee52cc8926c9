"""The whole service as separate processes on a real Redis (and on a 3-primary Redis
Cluster): API, worker, and Redis faults."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from entrypoints.local_redis import LocalRedis
from entrypoints.local_topologies import LocalCluster
from tests.integration.processes import Api, Conveyor, service_env, wait_for_job

TERMINAL = {"succeeded", "dead", "cancelled", "expired"}


@pytest.fixture(scope="module", params=["one-server", "cluster"])
def service_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The tests that take `env` run on the suite's Redis and again on a 3-primary Redis
    Cluster."""
    if request.param == "one-server":
        url: str = request.getfixturevalue("redis_url")
        yield url
        return
    with LocalCluster(tmp_path_factory.mktemp("cluster"), primaries=3) as cluster:
        yield cluster.url


@pytest.fixture
def env(service_url: str) -> dict[str, str]:
    return service_env(service_url)


def submit(client: httpx.Client, type_: str, payload: dict[str, object], **extra: object) -> str:
    response = client.post("/jobs", json={"type": type_, "payload": payload, **extra})
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/jobs/{response.json()['id']}"
    job_id: str = response.json()["id"]
    return job_id


def test_every_job_type_runs_to_success_through_api_and_worker(
    env: dict[str, str], tmp_path: Path
) -> None:
    with Api(env, tmp_path) as api, Conveyor(["worker"], env, tmp_path), api.client() as client:
        email = submit(client, "email", {"to": "user@example.com", "subject": "Hi", "body": "Yo"})
        report = submit(client, "report", {"name": "q3", "rows": 500, "seconds": 1.5})
        dummy = submit(client, "dummy", {"mode": "succeed", "result": {"answer": 42}})
        progress_seen: set[int] = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            view = client.get(f"/jobs/{report}").json()
            if view["progress"] is not None and view["status"] == "active":
                progress_seen.add(view["progress"])
            if view["status"] in TERMINAL:
                break
            time.sleep(0.05)
        assert any(0 < p < 100 for p in progress_seen), progress_seen
        for job_id in (email, report, dummy):
            view = wait_for_job(client, job_id, TERMINAL)
            assert view["status"] == "succeeded", view
            assert view["attempts"] == 1
        assert client.get(f"/jobs/{dummy}").json()["result"] == {"answer": 42}
        assert client.get(f"/jobs/{report}").json()["result"]["rows"] == 500
        assert "message_id" in client.get(f"/jobs/{email}").json()["result"]


def test_retries_and_dead_letters_follow_the_policy(env: dict[str, str], tmp_path: Path) -> None:
    with Api(env, tmp_path) as api, Conveyor(["worker"], env, tmp_path), api.client() as client:
        flaky = submit(client, "dummy", {"mode": "fail", "times": 2})
        fatal = submit(client, "dummy", {"mode": "fatal"})
        hopeless = submit(client, "dummy", {"mode": "fail"}, max_attempts=3)
        flaky_view = wait_for_job(client, flaky, TERMINAL)
        assert (flaky_view["status"], flaky_view["attempts"]) == ("succeeded", 3)
        fatal_view = wait_for_job(client, fatal, TERMINAL)
        assert (fatal_view["status"], fatal_view["attempts"]) == ("dead", 1)
        assert fatal_view["error"]["kind"] == "non_retryable"
        hopeless_view = wait_for_job(client, hopeless, TERMINAL)
        assert (hopeless_view["status"], hopeless_view["attempts"]) == ("dead", 3)
        assert "attempt 3" in hopeless_view["error"]["message"]


def test_jobs_wait_in_redis_until_a_worker_starts_and_outlive_the_api(
    env: dict[str, str], tmp_path: Path
) -> None:
    with Api(env, tmp_path) as api, api.client() as client:
        ids = [submit(client, "dummy", {"mode": "succeed", "result": i}) for i in range(20)]
        time.sleep(0.5)
        assert {client.get(f"/jobs/{i}").json()["status"] for i in ids} == {"queued"}
        assert api.stop() == 0
    # The API is gone; a worker started now still finds and runs every job.
    with Conveyor(["worker"], env, tmp_path) as worker, Api(env, tmp_path) as api2:
        with api2.client() as client:
            for n, job_id in enumerate(ids):
                view = wait_for_job(client, job_id, TERMINAL)
                assert (view["status"], view["result"]) == ("succeeded", n)
        # Stopping the API leaves the worker running.
        assert api2.stop() == 0
        assert worker.proc is not None
        assert worker.proc.poll() is None


def test_sigterm_lets_the_worker_finish_what_it_started_and_exit_zero(
    env: dict[str, str], tmp_path: Path
) -> None:
    with Api(env, tmp_path) as api, api.client() as client:
        worker = Conveyor(["worker", "--concurrency", "2"], env, tmp_path).start()
        try:
            busy = [submit(client, "dummy", {"mode": "sleep", "seconds": 2}) for _ in range(2)]
            for job_id in busy:
                wait_for_job(client, job_id, {"active"})
            waiting = submit(client, "dummy", {"mode": "succeed"})
            worker.signal(signal.SIGTERM)
            assert worker.wait(timeout=10) == 0, worker.output()
        finally:
            worker.stop()
        assert [client.get(f"/jobs/{i}").json()["status"] for i in busy] == ["succeeded"] * 2
        assert client.get(f"/jobs/{waiting}").json()["status"] == "queued"


def test_redis_outage_gives_fast_503_then_both_processes_carry_on(tmp_path: Path) -> None:
    data_dir = tmp_path / "redis"
    server = LocalRedis(data_dir=data_dir).start()
    port = server.port
    env = service_env(server.url, CONVEYOR_REDIS_TIMEOUT="0.5")
    try:
        with Api(env, tmp_path) as api, Conveyor(["worker"], env, tmp_path) as worker:
            with api.client() as client:
                accepted = [submit(client, "dummy", {"mode": "succeed"}) for _ in range(5)]
                server.stop()
                for _ in range(5):
                    started = time.monotonic()
                    response = client.post(
                        "/jobs", json={"type": "dummy", "payload": {"mode": "succeed"}}
                    )
                    elapsed = time.monotonic() - started
                    assert response.status_code == 503, response.text
                    assert "retry-after" in response.headers
                    assert response.headers["content-type"].startswith("application/problem+json")
                    assert elapsed < 1.5, f"503 took {elapsed:.2f} s"
                assert client.get("/health/ready").status_code == 503
                time.sleep(2)  # the worker keeps trying meanwhile; it must not exit
                assert worker.proc is not None
                assert worker.proc.poll() is None, worker.output()
                server = LocalRedis(data_dir=data_dir, port=port).start()
                deadline = time.monotonic() + 10
                while client.get("/health/ready").status_code != 200:
                    assert time.monotonic() < deadline, "API never saw Redis return"
                    time.sleep(0.1)
                accepted.append(submit(client, "dummy", {"mode": "succeed"}))
                for job_id in accepted:
                    assert wait_for_job(client, job_id, TERMINAL)["status"] == "succeeded"
    finally:
        server.stop()


def test_api_and_worker_refuse_a_redis_that_evicts_keys(tmp_path: Path) -> None:
    import redis

    with LocalRedis(data_dir=tmp_path / "redis") as server:
        redis.Redis.from_url(server.url).config_set("maxmemory-policy", "allkeys-lru")
        env = service_env(server.url)
        worker = Conveyor(["worker"], env, tmp_path).start()
        assert worker.wait(timeout=20) == 2, worker.output()
        assert "maxmemory-policy" in worker.output()
        api = Conveyor(["api", "--port", "0"], env, tmp_path).start()
        assert api.wait(timeout=20) == 2, api.output()
        assert "maxmemory-policy" in api.output()
        assert "Traceback" not in api.output(), api.output()


def test_a_worker_on_a_redis_it_refuses_claims_nothing_and_leaves_no_process(
    tmp_path: Path,
) -> None:
    """A worker forks its first children before its supervisor checks the backend; they
    wait for its word, so on a Redis it refuses the jobs waiting there stay queued, and the
    children end with it."""
    import psutil
    import redis

    with LocalRedis(data_dir=tmp_path / "redis") as server:
        env = service_env(server.url)
        with Api(env, tmp_path) as api, api.client() as client:
            ids = [submit(client, "dummy", {"mode": "succeed"}) for _ in range(20)]
            assert api.stop() == 0
        store = redis.Redis.from_url(server.url)
        store.config_set("maxmemory-policy", "allkeys-lru")
        worker = Conveyor(["worker", "--processes", "2"], env, tmp_path).start()
        assert worker.wait(timeout=30) == 2, worker.output()
        assert "maxmemory-policy" in worker.output()
        keys = list(store.scan_iter(match="*}:job:*"))
        assert len(keys) == len(ids)
        assert {store.hget(key, "status") for key in keys} == {b"queued"}
        assert store.zcard(next(store.scan_iter(match="*}:queued"))) == len(ids)
        prefix = env["CONVEYOR_KEY_PREFIX"]
        left = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.environ().get("CONVEYOR_KEY_PREFIX") == prefix:
                    left.append(process.pid)
        assert left == []
