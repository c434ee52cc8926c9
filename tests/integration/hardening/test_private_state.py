"""What one deployment keeps is its own: the audit log (it holds lease tokens) is readable by
its owner only, and on the RQ backend a deployment's key prefix keeps its jobs from every
other deployment on the same Redis (RQ's own keys included)."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import psutil
import redis

from tests.integration.processes import Api, Conveyor, service_env, wait_for_job

TERMINAL = {"succeeded", "dead", "cancelled", "expired"}


def test_the_audit_log_and_the_worker_boards_are_readable_by_their_owner_only(
    redis_url: str, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    env = service_env(redis_url, CONVEYOR_AUDIT_LOG=str(audit))
    with (
        Api(env, tmp_path) as api,
        Conveyor(["worker"], env, tmp_path) as worker,
        api.client() as client,
    ):
        response = client.post("/jobs", json={"type": "dummy", "payload": {"mode": "succeed"}})
        assert response.status_code == 202, response.text
        view = wait_for_job(client, response.json()["id"], TERMINAL)
        assert worker.proc is not None
        boards = [
            Path(region.path)
            for child in psutil.Process(worker.proc.pid).children(recursive=True)
            for region in child.memory_maps()
            if region.path.endswith(".board")
        ]
        board_modes = {oct(stat.S_IMODE(b.stat().st_mode)) for b in boards if b.exists()}
        board_dirs = {oct(stat.S_IMODE(b.parent.stat().st_mode)) for b in boards}

    mode = oct(stat.S_IMODE(audit.stat().st_mode))
    tokens = audit.read_text().count('"token"')
    print(f"[audit log] mode={mode} lines_with_tokens={tokens} boards={board_modes} {board_dirs}")
    assert view["status"] == "succeeded"
    assert tokens >= 2  # start and end of the attempt
    assert mode == "0o600"
    assert board_modes == {"0o600"}
    assert board_dirs == {"0o700"}


def test_rq_deployments_with_different_prefixes_share_no_key(
    redis_url: str, tmp_path: Path
) -> None:
    """Before, `rq:job:<id>` served every prefix: one deployment could read, cancel and
    retry another's jobs by id."""
    blue, green = (f"test-{name}-{uuid.uuid4().hex[:8]}" for name in ("blue", "green"))
    env_blue = {**service_env(redis_url, QUEUE_BACKEND="rq"), "CONVEYOR_KEY_PREFIX": blue}
    env_green = {**service_env(redis_url, QUEUE_BACKEND="rq"), "CONVEYOR_KEY_PREFIX": green}
    for env in (env_blue, env_green):
        env.pop("RQ_KEY_PREFIX", None)
        env["CONVEYOR_RQ_WORKER_CLASS"] = "simple"
    with (
        Api(env_blue, tmp_path) as api_blue,
        Api(env_green, tmp_path) as api_green,
        Conveyor(["worker"], env_blue, tmp_path),
        api_blue.client() as client_blue,
        api_green.client() as client_green,
    ):
        response = client_blue.post(
            "/jobs", json={"type": "dummy", "payload": {"mode": "succeed", "result": 7}}
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        view = wait_for_job(client_blue, job_id, TERMINAL, within=30)
        seen_by_green = [
            client_green.get(f"/jobs/{job_id}").status_code,
            client_green.post(f"/jobs/{job_id}/cancel").status_code,
            client_green.post(f"/jobs/{job_id}/retry").status_code,
        ]
        listed_by_green = client_green.get("/jobs").json()
    client = redis.Redis.from_url(redis_url)
    try:
        keys = sorted(k.decode() for k in client.scan_iter(match=f"*{job_id}*", count=1000))
        blue_keys = sorted(k.decode() for k in client.scan_iter(match=f"*{blue}*", count=1000))
    finally:
        client.close()
    outside = [k for k in blue_keys if not k.startswith(f"{blue}:")]
    print(
        f"[rq prefixes] job keys={keys} blue keys={len(blue_keys)} outside blue:={outside} "
        f"green saw get/cancel/retry={seen_by_green}"
    )
    assert view["status"] == "succeeded"
    assert view["result"] == 7
    assert seen_by_green == [404, 404, 404]
    assert job_id not in str(listed_by_green)
    assert keys, "the job left no key"
    assert all(k.startswith(f"{blue}:rq:") for k in keys), keys
    assert outside == []
