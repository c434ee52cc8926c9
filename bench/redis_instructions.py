"""Instructions Redis spends per job of a drain, counted by callgrind.

    .venv/bin/python -m bench.redis_instructions [--jobs 3000] [--src DIR] [--top 0]

Redis's own CPU per job is one of the comparison's figures, and timed runs of it scatter by
10 % on a shared machine. This runs `redis-server` (persistence off, a free port) under
valgrind's callgrind with instrumentation off, fills a queue with `--jobs` no-op `dummy`
jobs, turns counting on, drains them with `conveyor worker --processes 1 --concurrency 100`
and turns counting off once all have succeeded: the count is the server's work for the
drain alone (claims, settlements, renewals and whatever else the worker asks meanwhile),
per job. `--src` runs another checkout's `src` (an A/B of two builds); `--top N` also prints
the N functions with the most instructions of their own (callgrind_annotate).

Needs valgrind and redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from bench.drain_instructions import callgrind_total
from bench.worker_drain import fill, wait_drained

WORKER_OPTIONS = ("--processes", "1", "--concurrency", "100")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_up(url: str, server: subprocess.Popen[bytes], cap: float) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5.0)
    deadline = time.monotonic() + cap
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit("redis-server under valgrind exited at start")
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server under valgrind did not answer") from None
                time.sleep(0.1)
    finally:
        client.close()


def count(src: Path, jobs: int, out: Path, cap: float) -> Path:
    """Drain `jobs` with the worker of `src` against a Redis under callgrind; its output."""
    port = _free_port()
    server = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}/callgrind.%p",
            "redis-server",
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", str(out)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        _wait_up(url, server, 60.0)
        asyncio.run(fill(url, prefix, jobs))
        env = {
            **os.environ,
            "PYTHONPATH": str(src),
            "REDIS_URL": url,
            "CONVEYOR_KEY_PREFIX": prefix,
            "LOG_LEVEL": "WARNING",
        }
        control = ("callgrind_control", "-i")
        subprocess.run([*control, "on", str(server.pid)], check=True, capture_output=True)
        worker = subprocess.Popen(
            [sys.executable, "-m", "entrypoints", "worker", *WORKER_OPTIONS],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_drained(url, prefix, jobs, cap, poll=0.05)
            subprocess.run([*control, "off", str(server.pid)], check=True, capture_output=True)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=120)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    (output,) = out.glob("callgrind.*")
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    parser.add_argument("--top", type=int, default=0, help="functions to list")
    parser.add_argument("--cap", type=float, default=600.0, help="seconds for the drain")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        output = count(args.src.resolve(), args.jobs, Path(tmp), args.cap)
        instructions = callgrind_total([output])
        print(f"{args.src}: {instructions:,} Redis instructions for {args.jobs} jobs")
        print(f"per job: {instructions / args.jobs:,.0f}")
        if args.top:
            annotated = subprocess.run(
                ["callgrind_annotate", str(output)], capture_output=True, text=True, check=True
            )
            rows = [line for line in annotated.stdout.splitlines() if "(" in line and "%)" in line]
            print("\n".join(rows[1 : args.top + 1]))


if __name__ == "__main__":
    main()
