"""What a client sees of a job's failures: the exception's type and a message, never a
traceback, a server path or the worker's host and pid; the traceback is in the worker's log.

A real API and worker pool on the suite's Redis run jobs that end in every status (some
failing inside the handler's code, one killing its process, one timing out, one expiring) and
the test reads every job through every view (`GET /jobs/{id}`, `GET /jobs`, by each status)
as they move, until each status has been seen. A second pool, with
`CONVEYOR_EXPOSE_TRACEBACKS=1`, serves a queue of its own: the tail it keeps is shown by an API
that exposes tracebacks and hidden by one that does not.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.integration.faults.harness import Pool
from tests.integration.processes import Api, service_env, wait_for_job

TERMINAL = {"succeeded", "dead", "cancelled", "expired"}
STATUSES = {"scheduled", "queued", "active", "succeeded", "failed", "dead", "cancelled", "expired"}
# Two or more path segments (`/srv/app/x.py`); a worker id's `/0.1` is one.
PATH = re.compile(r"(?:/[\w.@+-]+){2,}")
SOURCE = re.compile(r"\.py\b|Traceback|File \\?\"")


def leaks(text: str) -> list[str]:
    """What in an HTTP answer's text names the server's files or the host running workers."""
    host_and_pid = re.compile(rf"\b{re.escape(socket.gethostname())}:[0-9]+")
    return PATH.findall(text) + SOURCE.findall(text) + host_and_pid.findall(text)


def post(client: httpx.Client, payload: dict[str, Any], **options: Any) -> str:
    response = client.post("/jobs", json={"type": "dummy", "payload": payload, **options})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_no_job_view_shows_a_traceback_a_server_path_or_a_host(
    redis_url: str, tmp_path: Path
) -> None:
    env = service_env(
        redis_url,
        CONVEYOR_DUMMY_FAULTS="1",  # the segfault below
        CONVEYOR_CANCEL_GRACE_SECONDS="0.5",
    )
    exposing = {**env, "CONVEYOR_EXPOSE_TRACEBACKS": "1"}
    seen: dict[str, int] = {}
    answers = 0
    bad: list[tuple[str, list[str]]] = []
    with (
        Api(env, tmp_path) as api,
        Api(exposing, tmp_path) as exposing_api,
        api.client() as client,
        Pool(env, tmp_path, processes=1, concurrency=8) as pool,
        Pool(exposing, tmp_path, processes=1, concurrency=1, queues="exposed") as exposing_pool,
    ):
        pool.wait_children(1)
        exposing_pool.wait_children(1)
        raised = post(client, {"mode": "fail"}, max_attempts=1)  # raises in dummy.py
        kept = post(client, {"mode": "fail"}, max_attempts=1, queue="exposed")
        # Each of these ends: dead four ways (raised, non-retryable, its process killed,
        # timed out), expired, succeeded at once or after two failed attempts.
        ending = {
            raised,
            post(client, {"mode": "fatal"}),
            post(client, {"mode": "crash", "how": "segfault"}, max_attempts=1),
            post(client, {"mode": "sleep", "seconds": 5}, timeout=0.5, max_attempts=1),
            post(client, {"mode": "sleep", "seconds": 5}, deadline=1),
            post(client, {"mode": "succeed"}),
            *(post(client, {"mode": "fail", "times": 2}, max_attempts=5) for _ in range(20)),
        }
        cancelled = post(client, {"mode": "succeed"}, delay=600)
        assert client.post(f"/jobs/{cancelled}/cancel").status_code == 200
        waiting = {
            cancelled,
            post(client, {"mode": "sleep", "seconds": 60}),  # active
            post(client, {"mode": "succeed"}, delay=600),  # scheduled
            post(client, {"mode": "succeed"}, queue="nobody-serves"),  # queued
        }
        jobs = ending | waiting

        def read(path: str, **params: Any) -> dict[str, Any]:
            nonlocal answers
            response = client.get(path, params=params)
            assert response.status_code == 200, response.text
            answers += 1
            if found := leaks(response.text):
                bad.append((path, found))
            body: dict[str, Any] = response.json()
            return body

        ended: set[str] = set()
        deadline = time.monotonic() + 45
        while set(seen) != STATUSES or not ending <= ended:
            assert time.monotonic() < deadline, f"seen: {sorted(seen)}, {len(ended)} ended"
            for job in read("/jobs", limit=500)["jobs"]:
                seen[job["status"]] = seen.get(job["status"], 0) + 1
            for status in STATUSES:
                read("/jobs", status=status)
            for job_id in jobs:
                if read(f"/jobs/{job_id}")["status"] in TERMINAL:
                    ended.add(job_id)
            time.sleep(0.05)

        dead = wait_for_job(client, raised, {"dead"})
        views = [read(f"/jobs/{job_id}") for job_id in ending]
        errors = Counter(view["error"]["type"] for view in views if view["error"] is not None)
        hidden = wait_for_job(client, kept, {"dead"})
        with exposing_api.client() as exposing_client:
            stored = exposing_client.get(f"/jobs/{raised}").json()
            shown = exposing_client.get(f"/jobs/{kept}").json()
        worker_log = pool.output()
    print(
        f"[tracebacks] views read={answers}, statuses seen={seen}, "
        f"errors={dict(errors)}, leaks={len(bad)}, "
        f"exposed traceback lines={len((shown['error']['traceback'] or '').splitlines())}"
    )

    assert bad == [], bad[:5]
    assert {"NonRetryableError", "WorkerLost", "TimeoutError"} <= set(errors)
    assert dead["error"]["type"] == "DummyFailureError"
    assert dead["error"]["message"] == "dummy failure on attempt 1"
    assert dead["error"]["traceback"] is None
    # Nothing was stored to show: the worker keeps tracebacks only when told to.
    assert stored["error"]["traceback"] is None
    logged = [json.loads(line) for line in worker_log.splitlines() if raised in line]
    tracebacks = [line["exception"] for line in logged if "exception" in line]
    assert tracebacks, worker_log[-3000:]
    assert "dummy.py" in tracebacks[0]
    assert "DummyFailureError: dummy failure on attempt 1" in tracebacks[0]
    # Kept by a worker told to, the tail is shown only by an API told to.
    assert "dummy.py" in shown["error"]["traceback"]
    assert hidden["error"]["traceback"] is None
    assert leaks(json.dumps(hidden)) == []
