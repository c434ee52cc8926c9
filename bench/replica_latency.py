"""What CONVEYOR_MIN_REPLICAS=1 adds to one `POST /jobs`: a primary and one replica on
loopback, two `conveyor api` processes on the same primary (one with the option, one
without), sequential submissions alternating between them.

    PYTHONPATH=src .venv/bin/python bench/replica_latency.py [--n 500] [--warmup 50]

Prints the median, p90, p99 and mean of each (client-side, one request in flight, keep-alive
connections) and the difference. Both servers are the local Redis (`LocalRedis`: AOF on,
fsync every second) with their data in a temporary directory, removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import redis

from entrypoints.local_redis import LocalRedis, find_server_binary, server_identity

BODY = {"type": "dummy", "payload": {"mode": "succeed"}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def replicated(root: Path) -> Iterator[LocalRedis]:
    """A primary with one replica whose link is up; yields the primary."""
    with LocalRedis(root / "primary") as primary, LocalRedis(root / "replica") as replica:
        client = redis.Redis.from_url(replica.url)
        try:
            client.execute_command("REPLICAOF", "127.0.0.1", str(primary.port))
            deadline = time.monotonic() + 10
            while client.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica's link never came up")
                time.sleep(0.02)
        finally:
            client.close()
        yield primary


@contextmanager
def api(redis_url: str, min_replicas: int, log: Path) -> Iterator[httpx.Client]:
    port = _free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "CONVEYOR_KEY_PREFIX": f"bench-{uuid.uuid4().hex[:8]}",
        "CONVEYOR_MIN_REPLICAS": str(min_replicas),
        "CONVEYOR_SCHEDULER": "0",
        "LOG_LEVEL": "WARNING",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "entrypoints", "api", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0)
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the API exited: {log.read_text()[-2000:]}")
            try:
                if client.get("/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not come up")
            time.sleep(0.1)
        try:
            yield client
        finally:
            client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def post(client: httpx.Client) -> float:
    started = time.perf_counter()
    response = client.post("/jobs", json=BODY)
    took = time.perf_counter() - started
    if response.status_code != 202:
        raise RuntimeError(f"POST /jobs answered {response.status_code}: {response.text}")
    return took


def row(name: str, samples: Sequence[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return (
        f"| {name} | {len(ms)} | {statistics.median(ms):.2f} | {q[89]:.2f} | {q[98]:.2f} |"
        f" {statistics.fmean(ms):.2f} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="submissions to each API")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured ones first")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="conveyor-replica-bench-") as tmp, ExitStack() as s:
        root = Path(tmp)
        primary = s.enter_context(replicated(root))
        off = s.enter_context(api(primary.url, 0, root / "api-off.log"))
        on = s.enter_context(api(primary.url, 1, root / "api-on.log"))
        for _ in range(args.warmup):
            post(off)
            post(on)
        times: dict[str, list[float]] = {"off": [], "on": []}
        for i in range(args.n):
            # Alternating, and which goes first too, so drift touches both alike.
            order = (("off", off), ("on", on)) if i % 2 == 0 else (("on", on), ("off", off))
            for name, client in order:
                times[name].append(post(client))
        stats = redis.Redis.from_url(primary.url)
        try:
            waits = stats.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)
        finally:
            stats.close()
        print(f"server: {server_identity(find_server_binary())}, one replica, loopback")
        print(f"WAIT calls on the primary: {waits} (one per POST with the option on, one at start)")
        print("| CONVEYOR_MIN_REPLICAS | POSTs | median ms | p90 ms | p99 ms | mean ms |")
        print("|---|---|---|---|---|---|")
        print(row("0 (off)", times["off"]))
        print(row("1", times["on"]))
        median = statistics.median(times["on"]) - statistics.median(times["off"])
        print(f"added by WAIT, median: {median * 1000:+.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
