"""What metrics cost a worker: `worker_drain.py` with a metrics port against without one.

Runs the drain benchmark in alternating order (ABBA: off, on, on, off, ...) on one Redis of
its own, so a drift of the machine's load falls on both sides alike, and prints each run and
the medians. Usage: `bench/metrics_cost.py --rounds 4 --jobs 20000`.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from entrypoints.local_redis import LocalRedis

_ROW = re.compile(r"^\| \d+ proc .*?\| ([\d,]+) \| ([\d,]+) \|", re.MULTILINE)
_PORT = 9391


def one(url: str, jobs: int, metrics: bool) -> tuple[float, float]:
    env = {**os.environ, "REDIS_URL": url}
    env.pop("CONVEYOR_METRICS_PORT", None)
    if metrics:
        env["CONVEYOR_METRICS_PORT"] = str(_PORT)
    drain = Path(__file__).with_name("worker_drain.py")
    args = ["--processes", "1", "--concurrency", "100", "--runs", "1", "--jobs", str(jobs)]
    out = subprocess.run(
        [sys.executable, str(drain), *args], env=env, capture_output=True, text=True, check=True
    ).stdout
    found = _ROW.search(out)
    assert found is not None, out
    return float(found[1].replace(",", "")), float(found[2].replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="ABBA rounds (2 runs a side each)")
    parser.add_argument("--jobs", type=int, default=20_000)
    args = parser.parse_args()
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        server = LocalRedis(data_dir=Path(tmp) / "redis").start()
        try:
            print("| run | metrics | drain jobs/s | steady jobs/s |")
            print("|---|---|---|---|")
            for r in range(args.rounds):
                order = (False, True) if r % 2 == 0 else (True, False)
                for metrics in order:
                    drained, steady = one(server.url, args.jobs, metrics)
                    results[metrics].append((drained, steady))
                    side = "on" if metrics else "off"
                    print(f"| {r + 1} | {side} | {drained:,.0f} | {steady:,.0f} |", flush=True)
        finally:
            server.stop()
    off = [statistics.median(x) for x in zip(*results[False], strict=True)]
    on = [statistics.median(x) for x in zip(*results[True], strict=True)]
    print(
        f"median drain: off {off[0]:,.0f}, on {on[0]:,.0f} ({on[0] / off[0] - 1:+.1%}); "
        f"steady: off {off[1]:,.0f}, on {on[1]:,.0f} ({on[1] / off[1] - 1:+.1%})"
    )


if __name__ == "__main__":
    main()
