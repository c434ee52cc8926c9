"""Drain rate of `conveyor worker`: a queue pre-filled with N no-op jobs, then one worker.

    .venv/bin/python bench/worker_drain.py [--jobs 20000] [--processes 1] [--concurrency 100]

Measured like the peers in ../shared/bench/peers (bench.py "drain"): the clock starts when
the worker command is spawned and stops when the last job is `succeeded`; `steady` leaves
out start-up (first to last completion). The job is `dummy` with mode `succeed`: no I/O of
its own, so this measures the machinery (claim, run, record the result, renew leases).

Uses REDIS_URL when set (loopback only), else starts its own local Redis (AOF on, as
`conveyor dev` runs it). Keys live under a fresh prefix, deleted at the end. Worker logs go
to a file at WARNING level (`--log-level`): its two INFO lines a job cost a third of the
worker's instructions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import redis

from adapters.console_email import ConsoleEmailSender
from adapters.redis_client import create_redis
from adapters.redis_queue import redis_backend
from adapters.redis_queue.keys import QueueKeys
from adapters.system_clock import SystemClock
from domain.job_service import JobService
from domain.job_types.registry import default_registry
from domain.jobs import JobStatus
from domain.submission import Submission
from entrypoints.local_redis import LocalRedis

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


async def fill(url: str, prefix: str, jobs: int) -> None:
    client = create_redis(url, connect_timeout=2.0, socket_timeout=10.0)
    backend = redis_backend(client, prefix=prefix)
    await backend.connection.verify()  # as `conveyor api` does: learns the prefix's job layout
    service = JobService(backend, default_registry(ConsoleEmailSender()), SystemClock())
    submission = Submission(type="dummy", payload={"mode": "succeed"})
    for start in range(0, jobs, 500):
        await asyncio.gather(
            *(service.submit(submission) for _ in range(start, min(jobs, start + 500)))
        )
    await backend.connection.close()


class SucceededCount:
    """Counts the succeeded jobs under a prefix, on one connection: a poll every few
    milliseconds that made a connection and an event loop each time took CPU from the
    worker it measures."""

    def __init__(self, url: str, prefix: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=5.0)
        self._key = QueueKeys.of(prefix, "default").index(JobStatus.SUCCEEDED)

    def __call__(self) -> int:
        return int(self._client.zcard(self._key))

    def close(self) -> None:
        self._client.close()


def wait_drained(url: str, prefix: str, jobs: int, cap: float, poll: float) -> None:
    """Return once `jobs` jobs of the prefix's `default` queue have succeeded; give up after
    `cap` seconds."""
    succeeded = SucceededCount(url, prefix)
    try:
        deadline = time.monotonic() + cap
        while succeeded() < jobs:
            if time.monotonic() > deadline:
                raise SystemExit(f"did not drain {jobs} jobs within {cap} s")
            time.sleep(poll)
    finally:
        succeeded.close()


async def delete_prefix(url: str, prefix: str) -> None:
    client = create_redis(url, connect_timeout=2.0, socket_timeout=10.0)
    try:
        async for key in client.scan_iter(match=f"*{prefix}*", count=1000):
            await client.unlink(key)
    finally:
        await client.aclose()


def drain(url: str, args: argparse.Namespace, log_dir: Path) -> tuple[float, float, float]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    asyncio.run(fill(url, prefix, args.jobs))
    env = {
        **os.environ,
        "REDIS_URL": url,
        "CONVEYOR_KEY_PREFIX": prefix,
        "LOG_LEVEL": args.log_level,
    }
    log = (log_dir / f"{prefix}.log").open("wb")
    spawned = time.perf_counter()
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "entrypoints",
            "worker",
            "--processes",
            str(args.processes),
            "--concurrency",
            str(args.concurrency),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    first = last = None
    succeeded = SucceededCount(url, prefix)
    try:
        deadline = spawned + args.cap
        while time.perf_counter() < deadline:
            done = succeeded()
            now = time.perf_counter()
            if done and first is None:
                first = now
            if done >= args.jobs:
                last = now
                break
            time.sleep(0.005)
    finally:
        succeeded.close()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        log.close()
        asyncio.run(delete_prefix(url, prefix))
    if last is None or first is None:
        raise SystemExit(f"did not drain {args.jobs} jobs within {args.cap} s")
    total = args.jobs / (last - spawned)
    steady = args.jobs / (last - first) if last > first else float("nan")
    return total, steady, first - spawned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cap", type=float, default=120.0, help="seconds before giving up")
    parser.add_argument(
        "--log-level", default="WARNING", help="the worker's LOG_LEVEL (INFO: as deployed)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = os.environ.get("REDIS_URL")
        server = None
        if url:
            if urlsplit(url).hostname not in _LOOPBACK:
                raise SystemExit("REDIS_URL must point at a loopback address")
        else:
            server = LocalRedis(data_dir=Path(tmp) / "redis").start()
            url = server.url
        try:
            print("| config | drain jobs/s | steady jobs/s | first job (s) |")
            print("|---|---|---|---|")
            for _ in range(args.runs):
                total, steady, first = drain(url, args, Path(tmp))
                print(
                    f"| {args.processes} proc x c={args.concurrency}, N={args.jobs} "
                    f"| {total:,.0f} | {steady:,.0f} | {first:.2f} |",
                    flush=True,
                )
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
