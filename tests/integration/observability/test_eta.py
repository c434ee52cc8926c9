"""When a waiting job will start, and `conveyor top`: an API and a worker process on real Redis.

The drain rate a queued job's estimate divides by is measured by the claim script; these
tests check the estimates against the start times the jobs then really had, and print the
figures (`-s`).
"""

from __future__ import annotations

import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.processes import Api, Conveyor, service_env, wait_for_job

QUEUE = "eta"
# Each job sleeps this long and the worker runs two at once: the queue drains 2 / SLEEP a
# second while it has jobs waiting.
SLEEP = 0.2
CONCURRENCY = 2
EXPECTED_RATE = CONCURRENCY / SLEEP


def _batch(client: httpx.Client, count: int) -> list[str]:
    jobs = [
        {"type": "dummy", "payload": {"mode": "sleep", "seconds": SLEEP}, "queue": QUEUE}
        for _ in range(count)
    ]
    response = client.post("/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 202, response.text
    return [entry["id"] for entry in response.json()["jobs"]]


def _all_done(client: httpx.Client, ids: list[str], within: float) -> list[dict[str, Any]]:
    return [wait_for_job(client, job_id, {"succeeded"}, within=within) for job_id in ids]


def _at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _top(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "entrypoints", "top", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.mark.alone
def test_a_paused_then_resumed_queue_starts_its_jobs_about_when_their_estimates_said(
    redis_url: str, tmp_path: Path
) -> None:
    """40 jobs teach the queue its drain rate; 60 more wait in it paused (no estimate, their
    place in line), then it is resumed and each queued job's estimated start is read at once
    and compared with when its attempt really started."""
    env = service_env(redis_url)
    worker_args = ["worker", "--queues", QUEUE, "--concurrency", str(CONCURRENCY)]
    with Api(env, tmp_path) as api, api.client() as client:
        with Conveyor(worker_args, env, tmp_path):
            wait_for_queue_workers(client, 1)
            started = time.monotonic()
            first = _batch(client, 40)
            _all_done(client, first, within=30)
            measured = client.get(f"/queues/{QUEUE}").json()
            learnt = time.monotonic() - started
            drain = measured["drain_rate"]
            print(
                f"\nlearning: 40 jobs in {learnt:.2f} s; drain_rate {drain} jobs/s "
                f"(worker's capacity {EXPECTED_RATE:g}); rate_out {measured['rate_out']}, "
                f"rate_in {measured['rate_in']}"
            )
            assert drain is not None
            assert 0.6 * EXPECTED_RATE <= drain <= 1.2 * EXPECTED_RATE

            assert client.post(f"/queues/{QUEUE}/pause").status_code == 200
            held = _batch(client, 60)
            paused = [client.get(f"/jobs/{job_id}").json()["waiting_reason"] for job_id in held]
            assert {reason["kind"] for reason in paused} == {"queue_paused"}
            assert [reason["ahead"] for reason in paused] == list(range(60))
            assert all(reason["estimated_start"] is None for reason in paused)
            print(f"paused: {paused[-1]['message']}")

            frame = _top(env, "--once")
            assert frame.returncode == 0, frame.stderr
            assert f"│ {QUEUE} " in frame.stdout
            assert "PAUSED" in frame.stdout
            assert f"│ {socket.gethostname()} " in frame.stdout  # the worker's host
            print(f"conveyor top --once, paused:\n{frame.stdout}")

            assert client.post(f"/queues/{QUEUE}/resume").status_code == 200
            estimates: dict[str, float] = {}
            for job_id in held:
                view = client.get(f"/jobs/{job_id}").json()
                reason = view["waiting_reason"]
                if view["status"] == "queued" and reason["estimated_start"] is not None:
                    estimates[job_id] = _at(reason["estimated_start"])
                    last_message = reason["message"]
            read_at = time.time()
            done = {view["id"]: view for view in _all_done(client, held, within=30)}

    errors = []  # estimated start - actual start, s
    waits = []  # actual start - when the estimates were read, s
    for job_id, estimate in estimates.items():
        actual = _at(done[job_id]["started_at"])
        errors.append(estimate - actual)
        waits.append(actual - read_at)
    absolute = sorted(abs(e) for e in errors)
    span = max(waits)
    print(
        f"resumed: {len(estimates)} of 60 jobs still queued when read, last: {last_message}\n"
        f"estimate - actual start: median {statistics.median(errors):+.3f} s, "
        f"p90 |error| {absolute[int(0.9 * (len(absolute) - 1))]:.3f} s, "
        f"max |error| {absolute[-1]:.3f} s, over waits up to {span:.2f} s"
    )
    assert len(estimates) >= 40
    # Each estimate within 0.5 s plus a quarter of the wait: the rate was measured before
    # the pause, by other jobs; they drain at a fixed capacity here.
    for error, wait in zip(errors, waits, strict=True):
        assert abs(error) <= 0.5 + 0.25 * max(wait, 0.0), (error, wait)


def test_a_job_with_no_live_worker_says_so_and_top_draws_until_interrupted(
    redis_url: str, tmp_path: Path
) -> None:
    """With no worker, a queued job has no estimate and its reason says why; `conveyor top`
    redraws until SIGINT (Ctrl-C) and exits 0."""
    env = service_env(redis_url)
    with Api(env, tmp_path) as api, api.client() as client:
        [job_id] = _batch(client, 1)
        reason = client.get(f"/jobs/{job_id}").json()["waiting_reason"]
        assert reason["kind"] == "no_worker"
        assert reason["estimated_start"] is None
        assert "no live worker" in reason["message"]
        print(f"\nno worker: {reason['message']}")

        live = subprocess.Popen(
            [sys.executable, "-m", "entrypoints", "top", "--interval", "0.2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(3.0)
            live.send_signal(signal.SIGINT)
            out, err = live.communicate(timeout=10)
        finally:
            if live.poll() is None:
                live.kill()
                live.wait()
        assert live.returncode == 0, err
        assert f"│ {QUEUE} " in out
        print(f"conveyor top stopped by SIGINT: exit {live.returncode}")


def wait_for_queue_workers(client: httpx.Client, count: int, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while client.get(f"/queues/{QUEUE}").json()["workers"] < count:
        assert time.monotonic() < deadline, "the worker never said it serves the queue"
        time.sleep(0.05)
