"""Secrets never leave the process: a canary test.

A Redis of the test's own lets in one ACL user whose name and password are unique canaries
(everyone else is refused), and a job's payload carries a third. The whole service runs on
it, each process with the credentials in another form redis-py reads: `conveyor dev` (the
API and a supervised worker) with `?username=...&password=...`, an RQ worker and the CLI with
`user:password@`. The test calls every endpoint, runs jobs on both backends, makes the CLI
fail with a wrong password and an unreadable URL, then stops Redis and calls everything
again. No canary may appear in any log line, CLI output, HTTP answer (status line, headers,
body) or the audit log.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from entrypoints.local_redis import LocalRedis
from tests.integration.processes import Conveyor, free_port, service_env

USER = f"canary-user-{uuid.uuid4().hex[:12]}"
PASSWORD = f"canary-password-{uuid.uuid4().hex}"
WRONG_PASSWORD = f"canary-wrong-{uuid.uuid4().hex}"
PAYLOAD_SECRET = f"canary-payload-{uuid.uuid4().hex}"
CANARIES = (USER, PASSWORD, WRONG_PASSWORD, PAYLOAD_SECRET)
EMAIL = {"to": "user@example.com", "subject": "Hello", "body": f"the code is {PAYLOAD_SECRET}"}


@pytest.fixture
def guarded_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    """A Redis that lets in the canary user only."""
    server = LocalRedis(data_dir=tmp_path / "redis").start()
    try:
        admin = redis.Redis(port=server.port)
        admin.acl_setuser(
            USER,
            enabled=True,
            passwords=[f"+{PASSWORD}"],
            keys=["*"],
            channels=["*"],
            commands=["+@all"],
        )
        admin.config_set("requirepass", uuid.uuid4().hex)  # nobody else gets in
        admin.close()
        yield server
    finally:
        server.stop()


class Witness:
    """Everything the service said: HTTP answers and CLI outputs, kept for the check."""

    def __init__(self) -> None:
        self.said: list[tuple[str, str]] = []

    def http(self, client: httpx.Client, method: str, path: str, **kw: Any) -> httpx.Response:
        response = client.request(method, path, **kw)
        head = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        self.said.append((f"{method} {path}", f"{response.status_code}\n{head}\n{response.text}"))
        return response

    def cli(
        self, env: dict[str, str], *args: str, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "entrypoints", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.said.append((f"conveyor {' '.join(args)}", done.stdout + done.stderr))
        return done

    def leaks(self, extra: dict[str, str]) -> list[tuple[str, str]]:
        return [
            (where, canary)
            for where, text in [*self.said, *extra.items()]
            for canary in CANARIES
            if canary in text
        ]


def wait_ready(base: str, proc: Conveyor, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert proc.proc is not None
        assert proc.proc.poll() is None, proc.output()[-3000:]
        try:
            if httpx.get(f"{base}/health/ready", timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the API did not come up:\n{proc.output()[-3000:]}")


def test_no_credential_or_payload_secret_reaches_a_log_an_answer_or_a_message(
    guarded_redis: LocalRedis, tmp_path: Path
) -> None:
    port = guarded_redis.port
    in_query = f"redis://127.0.0.1:{port}/0?username={USER}&password={PASSWORD}"
    in_userinfo = f"redis://{USER}:{PASSWORD}@127.0.0.1:{port}/0"
    audit = tmp_path / "audit.jsonl"
    native = service_env(in_query, CONVEYOR_AUDIT_LOG=str(audit), LOG_FORMAT="json")
    cli = {**native, "REDIS_URL": in_userinfo, "LOG_FORMAT": "console"}
    on_rq = {**service_env(in_userinfo, QUEUE_BACKEND="rq"), "CONVEYOR_RQ_WORKER_CLASS": "simple"}
    witness = Witness()
    api_port = free_port()
    base = f"http://127.0.0.1:{api_port}"
    dev = Conveyor(["dev", "--port", str(api_port)], native, tmp_path)
    rq_worker = Conveyor(["worker"], on_rq, tmp_path)
    with dev, rq_worker, httpx.Client(base_url=base, timeout=10) as client:
        wait_ready(base, dev)
        up = exercise_api(witness, client)

        submitted = witness.cli(cli, "submit", "email", json.dumps(EMAIL), "--wait")
        on_cli = json.loads(submitted.stdout)
        witness.cli(cli, "jobs", "show", on_cli["id"])
        witness.cli(cli, "jobs", "list")
        witness.cli(cli, "queues", "list")
        on_rq_job = witness.cli(on_rq, "submit", "email", json.dumps(EMAIL), "--wait")
        wrong = witness.cli(
            {**cli, "REDIS_URL": in_userinfo.replace(PASSWORD, WRONG_PASSWORD)}, "jobs", "list"
        )
        unreadable = witness.cli(
            {**cli, "REDIS_URL": f"redis://{USER}:{PASSWORD}/x@127.0.0.1:{port}/0"}, "jobs", "list"
        )

        guarded_redis.stop()  # Redis goes away under the running service
        down = exercise_api(witness, client, job_id=up["job_id"])
        cli_down = witness.cli(cli, "jobs", "list")
        witness.cli(cli, "queues", "list")
        time.sleep(2.0)  # the workers meet the outage and say so
        assert dev.stop() == 0, dev.output()[-3000:]
        rq_worker.stop()
        outputs = {"conveyor dev": dev.output(), "conveyor worker (rq)": rq_worker.output()}
    outputs["audit log"] = audit.read_text()

    leaks = witness.leaks(outputs)
    http = sum(1 for where, _ in witness.said if not where.startswith("conveyor"))
    lines = sum(text.count("\n") for text in outputs.values())
    print(
        f"[canary] http answers={http}, cli runs={len(witness.said) - http}, "
        f"log and audit lines={lines}, leaks={len(leaks)}"
    )
    assert leaks == [], leaks[:5]
    # The run did what it claims: jobs ran on both backends, with the secret in their payload;
    # the outage was met; the CLI failed for the reasons given.
    assert (up["ready"], down["ready"]) == (200, 503)
    assert up["email"] == "succeeded"
    assert on_cli["status"] == "succeeded", submitted.stderr
    assert json.loads(on_rq_job.stdout)["status"] == "succeeded", on_rq_job.stderr
    assert (down["submit"], down["job"]) == (503, 503)
    assert wrong.returncode != 0
    assert "password" in wrong.stderr, wrong.stderr
    assert unreadable.returncode == 2
    assert "REDIS_URL" in unreadable.stderr, unreadable.stderr
    assert cli_down.returncode == 1
    assert "cannot reach redis" in cli_down.stderr, cli_down.stderr
    assert "password=***" in outputs["conveyor dev"]
    assert "redis://***:***@" in outputs["conveyor worker (rq)"]


def exercise_api(
    witness: Witness, client: httpx.Client, job_id: str | None = None
) -> dict[str, Any]:
    """Call every endpoint, with the payload secret in every body; answers a few outcomes."""
    call = witness.http
    seen: dict[str, Any] = {"ready": call(client, "GET", "/health/ready").status_code}
    call(client, "GET", "/health/live")
    submitted = call(client, "POST", "/jobs", json={"type": "email", "payload": EMAIL})
    seen["submit"] = submitted.status_code
    if submitted.status_code == 202:
        job_id = submitted.json()["id"]
        seen["email"] = call(client, "GET", f"/jobs/{job_id}", params={"wait": 10}).json()["status"]
    seen["job"] = call(client, "GET", f"/jobs/{job_id}").status_code
    seen["job_id"] = job_id
    call(client, "POST", "/jobs/batch", json={"jobs": [{"type": "email", "payload": EMAIL}]})
    bad = {**EMAIL, "to": PAYLOAD_SECRET}
    call(client, "POST", "/jobs", json={"type": "email", "payload": bad})
    call(client, "POST", "/jobs", content=json.dumps(EMAIL), headers={"content-type": "text/plain"})
    later = call(client, "POST", "/jobs", json={"type": "email", "payload": EMAIL, "delay": 600})
    if later.status_code == 202:
        call(client, "POST", f"/jobs/{later.json()['id']}/cancel")
    call(client, "POST", f"/jobs/{job_id}/retry")
    call(client, "GET", "/jobs")
    call(client, "GET", "/jobs", params={"status": "succeeded"})
    call(client, "GET", "/queues")
    call(client, "GET", "/queues/default")
    call(client, "POST", "/queues/canary/pause")
    call(client, "POST", "/queues/canary/resume")
    call(client, "GET", "/job-types")
    call(client, "GET", "/schema/openapi.json")
    call(client, "GET", "/metrics")
    call(client, "GET", "/nothing-here")
    return seen
