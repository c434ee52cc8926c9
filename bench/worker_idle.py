"""What one worker process costs while idle, and how soon it finishes its first job.

    .venv/bin/python bench/worker_idle.py [--runs 3] [--python PATH]

- idle: one `conveyor worker --processes 1` on an empty queue; after `--settle` seconds of
  start-up, the Redis commands it makes per second over `--window` seconds (the delta of
  INFO's `total_commands_processed`, less this script's own INFO call; commands run inside
  Lua scripts count, as Redis counts them).
- first job: `conveyor worker --processes 1 --concurrency 100` started on a queue pre-filled
  with `--jobs` no-op jobs; seconds from the spawn to the first job `succeeded`.
- pickup: one idle `conveyor worker --processes 1`, then `--paced` no-op jobs submitted one
  at a time at `--rate` per second; the median and p99 of each job's pickup latency (its
  claim, less its submission, both as stored).

`--python` runs the worker of another checkout's environment (for A/B runs against it).
Uses REDIS_URL when set (loopback only, and nothing else should use that server while this
runs), else starts its own local Redis. Keys live under a fresh prefix, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

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


async def _fill(url: str, prefix: str, jobs: int) -> None:
    client = create_redis(url, connect_timeout=2.0, socket_timeout=10.0)
    backend = redis_backend(client, prefix=prefix)
    service = JobService(backend, default_registry(ConsoleEmailSender()), SystemClock())
    submission = Submission(type="dummy", payload={"mode": "succeed"})
    await asyncio.gather(*(service.submit(submission) for _ in range(jobs)))
    await backend.connection.close()


async def _commands(url: str) -> int:
    client = create_redis(url, connect_timeout=2.0, socket_timeout=5.0)
    try:
        return int((await client.info("stats"))["total_commands_processed"])
    finally:
        await client.aclose()


async def _delete_prefix(url: str, prefix: str) -> None:
    client = create_redis(url, connect_timeout=2.0, socket_timeout=10.0)
    try:
        async for key in client.scan_iter(match=f"*{prefix}*", count=1000):
            await client.unlink(key)
    finally:
        await client.aclose()


def _spawn(python: str, url: str, prefix: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": url, "CONVEYOR_KEY_PREFIX": prefix, "LOG_LEVEL": "WARNING"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [python, "-m", "entrypoints", "worker", "--processes", "1", *extra],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)


def idle_rate(url: str, args: argparse.Namespace, log: Path) -> float:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    worker = _spawn(args.python, url, prefix, log)
    try:
        time.sleep(args.settle)
        before = asyncio.run(_commands(url))
        time.sleep(args.window)
        after = asyncio.run(_commands(url))
    finally:
        _stop(worker)
        asyncio.run(_delete_prefix(url, prefix))
    return float(after - before - 1) / float(args.window)  # less our own INFO


def first_job(url: str, args: argparse.Namespace, log: Path) -> float:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    asyncio.run(_fill(url, prefix, args.jobs))
    done_key = QueueKeys.of(prefix, "default").index(JobStatus.SUCCEEDED)
    probe = create_redis(url, connect_timeout=2.0, socket_timeout=5.0)

    async def wait_first(spawned: float) -> float:
        while time.perf_counter() < spawned + args.cap:
            if await probe.zcard(done_key):
                return time.perf_counter() - spawned
            await asyncio.sleep(0.002)
        raise SystemExit(f"no job done within {args.cap} s")

    async def measure() -> float:
        await probe.ping()  # connected before the clock starts
        spawned = time.perf_counter()
        worker = _spawn(args.python, url, prefix, log, "--concurrency", "100")
        try:
            return await wait_first(spawned)
        finally:
            _stop(worker)
            await probe.aclose()

    try:
        return asyncio.run(measure())
    finally:
        asyncio.run(_delete_prefix(url, prefix))


def pickup(url: str, args: argparse.Namespace, log: Path) -> tuple[float, float]:
    """Median and p99 pickup latency (ms) of jobs submitted one at a time to an idle worker."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    worker = _spawn(args.python, url, prefix, log)
    keys = QueueKeys.of(prefix, "default")

    async def measure() -> list[float]:
        client = create_redis(url, connect_timeout=2.0, socket_timeout=10.0)
        backend = redis_backend(client, prefix=prefix)
        service = JobService(backend, default_registry(ConsoleEmailSender()), SystemClock())
        submission = Submission(type="dummy", payload={"mode": "succeed"})
        try:
            for _ in range(args.paced):
                await service.submit(submission)
                await asyncio.sleep(1 / args.rate)
            done = keys.index(JobStatus.SUCCEEDED)
            until = time.monotonic() + args.cap
            while await client.zcard(done) < args.paced:
                if time.monotonic() > until:
                    raise SystemExit(f"not every paced job done within {args.cap} s")
                await asyncio.sleep(0.05)
            ids = cast("list[bytes]", await client.zrange(done, 0, -1))
            pipe = client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(keys.job(job_id.decode()), "created_at", "started_at")
            return [(int(b) - int(a)) / 1000 for a, b in await pipe.execute()]
        finally:
            await backend.connection.close()

    try:
        time.sleep(args.settle)
        found = sorted(asyncio.run(measure()))
    finally:
        _stop(worker)
        asyncio.run(_delete_prefix(url, prefix))
    return statistics.median(found), found[min(len(found) - 1, int(len(found) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--python", default=sys.executable, help="the worker's interpreter")
    parser.add_argument("--jobs", type=int, default=1000, help="pre-filled jobs (first job)")
    parser.add_argument("--settle", type=float, default=3.0, help="start-up left out (idle)")
    parser.add_argument("--window", type=float, default=5.0, help="seconds counted (idle)")
    parser.add_argument("--cap", type=float, default=30.0, help="seconds before giving up")
    parser.add_argument("--paced", type=int, default=100, help="jobs submitted (pickup)")
    parser.add_argument("--rate", type=float, default=10.0, help="jobs a second (pickup)")
    parser.add_argument("--only", choices=("idle", "first", "pickup"), default=None)
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
        log = Path(tmp) / "worker.log"
        rows: list[tuple[float, float, float, float]] = []
        nan = float("nan")
        try:
            print(
                "| run | idle commands/s | spawn -> first job done (s)"
                f" | pickup p50 (ms, {args.rate:g}/s) | pickup p99 (ms) |"
            )
            print("|---|---|---|---|---|")
            for run in range(1, args.runs + 1):
                rate = idle_rate(url, args, log) if args.only in (None, "idle") else nan
                first = first_job(url, args, log) if args.only in (None, "first") else nan
                p50, p99 = pickup(url, args, log) if args.only in (None, "pickup") else (nan, nan)
                rows.append((rate, first, p50, p99))
                print(f"| {run} | {rate:.1f} | {first:.3f} | {p50:.2f} | {p99:.2f} |", flush=True)
            rate, first, p50, p99 = (
                statistics.median(column) for column in zip(*rows, strict=True)
            )
            print(f"| median | {rate:.1f} | {first:.3f} | {p50:.2f} | {p99:.2f} |")
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
