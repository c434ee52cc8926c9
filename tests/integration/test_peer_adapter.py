"""`bench/peer_adapter.py`, the project's side of the shared comparison, against a real Redis:
each command answers as the shared driver reads it, and the counts agree with what ran."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

ADAPTER = Path(__file__).resolve().parents[2] / "bench" / "peer_adapter.py"


def adapter(redis_url: str, prefix: str, *args: str) -> object:
    env = {**os.environ, "REDIS_URL": redis_url, "CONVEYOR_KEY_PREFIX": prefix}
    env.pop("QUEUE_BACKEND", None)
    out = subprocess.run(
        [sys.executable, str(ADAPTER), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_the_adapter_enqueues_names_the_done_key_and_reads_latencies(redis_url: str) -> None:
    prefix = f"adapter-{uuid.uuid4().hex[:8]}"
    for mode, extra in (("single", ()), ("bulk", ()), ("paced", ("--rate", "500"))):
        answer = adapter(redis_url, prefix, "enqueue", "--mode", mode, "--n", "50", *extra)
        assert isinstance(answer, dict)
        assert answer["mode"] == mode
        assert answer["n"] == 50
        assert answer["secs"] > 0
        assert answer["rate"] > 0

    done = adapter(redis_url, prefix, "done-key")
    assert done == {"key": f"{{{prefix}:default}}:index:succeeded", "type": "zset"}

    env = {**os.environ, "REDIS_URL": redis_url, "CONVEYOR_KEY_PREFIX": prefix}
    env.update(LOG_LEVEL="WARNING", CONVEYOR_WORKER_QUEUES="default")
    worker = subprocess.Popen(
        [sys.executable, "-m", "entrypoints", "worker", "--concurrency", "20"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis.from_url(redis_url)
    try:
        for _ in range(200):
            if client.zcard(done["key"]) == 150:
                break
            time.sleep(0.05)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert client.zcard(done["key"]) == 150

    latencies = adapter(redis_url, prefix, "latencies")
    assert isinstance(latencies, list)
    assert len(latencies) == 150
    assert all(0 <= seconds < 30 for seconds in latencies)
    client.close()
