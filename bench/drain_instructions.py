"""Instructions a worker process spends per job, counted by callgrind.

    .venv/bin/python -m bench.drain_instructions [--small 500] [--large 2500] [--src DIR]

A timed drain on a shared 2-core machine scatters by 10-30 % from run to run; an instruction
count moves by well under 1 %. This runs `conveyor worker --processes 1 --concurrency 100`
under valgrind's callgrind on a queue pre-filled with `--small` no-op `dummy` jobs until all
have succeeded, then again with `--large`, and prints the busiest process's instructions
(the worker child) per job: the difference of the two counts over the difference in jobs, so
that start-up cancels out. `--src` runs another checkout's `src` (an A/B of two builds).
Under callgrind the worker runs about 50 times slower, so the timers of an idle worker
(heartbeats) add a little to each count; both builds pay them alike.

Needs valgrind. Starts its own Redis (persistence off); keys live under a fresh prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path

from bench.worker_drain import delete_prefix, fill, wait_drained
from entrypoints.local_redis import LocalRedis


def instructions(
    url: str, src: Path, jobs: int, out: Path, cap: float, log_level: str = "WARNING"
) -> int:
    """The largest instruction count of the worker's processes while they drain `jobs`."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    asyncio.run(fill(url, prefix, jobs))
    run_dir = out / prefix
    run_dir.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "REDIS_URL": url,
        "CONVEYOR_KEY_PREFIX": prefix,
        "LOG_LEVEL": log_level,
    }
    worker = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--trace-children=yes",
            f"--callgrind-out-file={run_dir}/callgrind.%p",
            sys.executable,
            "-m",
            "entrypoints",
            "worker",
            "--processes",
            "1",
            "--concurrency",
            "100",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_drained(url, prefix, jobs, cap, poll=0.5)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=600)
        asyncio.run(delete_prefix(url, prefix))
    return callgrind_total(run_dir.glob("callgrind.*"))


def callgrind_total(outputs: Iterable[Path]) -> int:
    """The largest instruction count in callgrind's output files (the busiest process)."""
    totals = [
        int(line.split()[1])
        for path in outputs
        for line in path.read_text().splitlines()
        if line.startswith(("summary:", "totals:"))
    ]
    if not totals:
        raise SystemExit("callgrind wrote no counts")
    return max(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--large", type=int, default=2500)
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    parser.add_argument("--cap", type=float, default=900.0, help="seconds per drain")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="the worker's LOG_LEVEL; INFO (the default of a deployment) adds its two lines"
        " per job",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalRedis(data_dir=Path(tmp) / "redis") as server:
        small, large = (
            instructions(server.url, args.src.resolve(), jobs, Path(tmp), args.cap, args.log_level)
            for jobs in (args.small, args.large)
        )
    per_job = (large - small) / (args.large - args.small)
    print(f"{args.src}: {small:,} instructions for {args.small} jobs, {large:,} for {args.large}")
    print(f"per job: {per_job:,.0f}")


if __name__ == "__main__":
    main()
