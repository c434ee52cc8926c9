"""Conveyor beside BullMQ and the Python peers in one run: the README's benchmark table.

    .venv/bin/python bench/compare.py [--runs 3] [--n 20000] [--systems conveyor,bullmq-node,...]

Drives the shared harness (`../shared/bench`: the peers' driver in `peers/`, Conveyor's side
in `compare/`, which calls `bench/peer_adapter.py`) against one Redis this script starts
(the project's local Redis, persistence off, as the peers are measured), then adds what the
harness does not measure, the same way for Conveyor and BullMQ:

- drain of 20,000 no-op jobs by one worker process (total and steady rate, spawn to first
  job done, worker and Redis CPU per job, worker CPU utilisation), pickup latency at
  200 jobs/s, single and bulk submit rates: `compare/compare.py`, alternating system by
  system within each run;
- `POST /jobs` of one `conveyor api` against a bare Litestar endpoint doing one LPUSH,
  wrk -t2 -c64: `compare/http_compare.sh`;
- Redis memory per queued job: `used_memory` before and after 20,000 jobs are submitted in
  bulk, nothing running them;
- Redis commands per second from one idle worker process (`INFO commandstats` totals over
  5 s, after 3 s to start).

Prints one line per measurement as it goes, then a table of medians over the runs with
each figure's ratio to BullMQ's, each run's own ratios for the drain (a ratio of medians can
pair one system's fast run with the other's slow one), and the machine's core count. The
peers' virtualenvs and node modules are installed on first use (`peers/run_all.sh`'s
`versions` stage, into `PEERS_HOME`, default ${TMPDIR:-/tmp}/peers). Needs redis-server,
node and wrk on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from entrypoints.local_redis import LocalRedis

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CONVEYOR_SHARED_BENCH", ROOT.parent / "shared" / "bench"))
PEERS_HOME = Path(os.environ.get("PEERS_HOME", Path(tempfile.gettempdir()) / "peers"))
THIS_VENV = Path(sys.executable).parent.parent
Record = dict[str, Any]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[str, redis.Redis]]:
    """The project's own local Redis, with persistence off: the peers are measured so."""
    with LocalRedis(data_dir=workdir / "redis") as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        client.config_set("appendonly", "no")
        client.config_set("save", "")
        try:
            yield server.url, client
        finally:
            client.close()


def info_field(client: redis.Redis, section: str, name: str) -> int:
    return int(client.info(section)[name])


def install_peers() -> None:
    if (PEERS_HOME / "venv" / "bin" / "python").exists() and (
        PEERS_HOME / "node" / "node_modules" / "bullmq"
    ).exists():
        return
    print("installing the peers (once, into PEERS_HOME) ...", flush=True)
    env = dict(
        os.environ, PEERS_HOME=str(PEERS_HOME), STAGES="versions", REDIS_PORT=str(free_port())
    )
    subprocess.run([str(SHARED / "peers" / "run_all.sh")], env=env, check=True)


def deployed_venv(workdir: Path) -> Path:
    """A virtualenv holding Conveyor as the README says to deploy it: the service's lock,
    then the project itself, not editable (pip compiles its modules as it installs them)."""
    venv = workdir / "deployed"
    print(f"installing Conveyor as deployed, into {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--quiet", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "install", "--require-hashes", "-r", str(ROOT / "requirements.lock")], check=True
    )
    subprocess.run([*pip, "install", "--no-deps", str(ROOT)], check=True)
    return venv


def harness(url: str, systems: str, runs: int, n: int, out: Path, venv: Path) -> list[Record]:
    """The shared driver's drain, latency and enqueue records."""
    env = dict(
        os.environ,
        REDIS_URL=url,
        CONVEYOR_REPO=str(ROOT),
        CONVEYOR_VENV=str(venv),
        PEERS_HOME=str(PEERS_HOME),
        BENCH_OUT=str(out),
        NODE_PATH=str(PEERS_HOME / "node" / "node_modules"),
    )
    command = [
        str(PEERS_HOME / "venv" / "bin" / "python"),
        str(SHARED / "compare" / "compare.py"),
        "--systems",
        systems,
        "--runs",
        str(runs),
        "--n",
        str(n),
        "--best-only",
    ]
    return list(json_lines(command, env))


def json_lines(command: Sequence[str], env: dict[str, str]) -> Iterator[Record]:
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                print(line.rstrip(), flush=True)
                yield json.loads(line)
    if proc.returncode:
        raise SystemExit(f"{command[1]} failed ({proc.returncode})")


def http(url: str, runs: int, seconds: int, venv: Path) -> list[Record]:
    """POST /jobs: `conveyor api` and a bare Litestar + LPUSH, alternating."""
    env = dict(
        os.environ,
        REDIS_URL=url,
        CONVEYOR_VENV=str(venv),
        PEERS_VENV=str(PEERS_HOME / "venv"),
        HTTP_PORT=str(free_port()),
    )
    done = subprocess.run(
        [str(SHARED / "compare" / "http_compare.sh"), str(runs), str(seconds)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    records = []
    for line in done.stdout.splitlines():
        name, *pairs = line.split()
        fields = dict(pair.split("=", 1) for pair in pairs)
        record = {
            "kind": "http",
            "peer": name,
            "rps": float(fields["rps"]),
            "p99_ms": _ms(fields["p99"]),
            "non2xx": int(fields["non2xx"]),
        }
        print(json.dumps(record), flush=True)
        records.append(record)
    return records


def _ms(wrk_time: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if wrk_time.endswith(unit):
            return float(wrk_time[: -len(unit)]) * factor
    raise ValueError(wrk_time)


def producers(url: str) -> dict[str, Callable[[int], None]]:
    node_env = dict(os.environ, REDIS_URL=url, NODE_PATH=str(PEERS_HOME / "node" / "node_modules"))
    own_env = dict(os.environ, REDIS_URL=url)

    def conveyor(n: int) -> None:
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "peer_adapter.py"),
                "enqueue",
                "--mode",
                "bulk",
                "--n",
                str(n),
            ],
            env=own_env,
            check=True,
            capture_output=True,
        )

    def bullmq(n: int) -> None:
        subprocess.run(
            ["node", "bullmq_node.cjs", "enqueue", "--mode", "bulk", "--n", str(n)],
            cwd=SHARED / "peers",
            env=node_env,
            check=True,
            capture_output=True,
        )

    return {"conveyor": conveyor, "bullmq-node": bullmq}


def memory_per_job(url: str, client: redis.Redis, run: int, n: int) -> list[Record]:
    records = []
    for peer, produce in producers(url).items():
        client.flushall()
        before = info_field(client, "memory", "used_memory")
        produce(n)
        grown = info_field(client, "memory", "used_memory") - before
        record = {
            "kind": "memory",
            "peer": peer,
            "run": run,
            "n": n,
            "bytes_per_job": round(grown / n, 1),
        }
        print(json.dumps(record), flush=True)
        records.append(record)
    client.flushall()
    return records


def idle_commands(url: str, client: redis.Redis, run: int, venv: Path) -> Record:
    """Commands per second Redis runs for one idle `conveyor worker` with one process."""
    client.flushall()
    env = dict(os.environ, REDIS_URL=url, LOG_LEVEL="WARNING")
    worker = subprocess.Popen(
        [str(venv / "bin" / "conveyor"), "worker", "--processes", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(3.0)
        before = info_field(client, "stats", "total_commands_processed")
        time.sleep(5.0)
        # Less the INFO command this measurement sent in between.
        spent = info_field(client, "stats", "total_commands_processed") - before - 1
    finally:
        worker.terminate()
        worker.wait(timeout=40)
    record = {"kind": "idle", "peer": "conveyor", "run": run, "commands_per_s": spent / 5.0}
    print(json.dumps(record), flush=True)
    return record


def median(records: list[Record], field: str, **match: Any) -> float | None:
    values = [
        r[field]
        for r in records
        if r.get(field) is not None and all(r.get(k) == v for k, v in match.items())
    ]
    return statistics.median(values) if values else None


# The harness runs Conveyor with one worker process and with two, and counts either as one
# launched command ("procs": 1): the one-process rows take the first configuration only.
ONE_PROCESS = "--processes 1 --concurrency 100"
TWO_PROCESSES = "--processes 2 --concurrency 100"


def table(records: list[Record], runs: int) -> str:
    one = {"procs": 1}
    ours_one = {"config": ONE_PROCESS}
    rows: list[tuple[str, float | None, float | None, str, bool]] = []

    def row(
        label: str,
        field: str,
        kind: str,
        target: str,
        higher: bool = True,
        ours: dict[str, Any] | None = None,
        theirs: dict[str, Any] | None = None,
    ) -> None:
        c = median(records, field, kind=kind, peer="conveyor", **(ours or {}))
        b = median(records, field, kind=kind, peer="bullmq-node", **(theirs or {}))
        rows.append((label, c, b, target, higher))

    row("drain, 1 worker process, jobs/s", "rate", "drain", "≥ 1.25x", True, ours_one, one)
    row("drain steady, 1 process, jobs/s", "steady_rate", "drain", "≥ 1.25x", True, ours_one, one)
    row("spawn -> first job done, s", "first_job_s", "drain", "≤ 0.2 s", False, ours_one, one)
    row(
        "worker CPU per job, ms",
        "worker_cpu_ms_per_job",
        "drain",
        "≤ 0.030 ms",
        False,
        ours_one,
        one,
    )
    row("Redis CPU per job, us", "redis_cpu_us_per_job", "drain", "≤ 20 us", False, ours_one, one)
    row(
        "worker CPU utilisation, 1 process",
        "worker_cpu_util",
        "drain",
        "≥ 0.9",
        True,
        ours_one,
        one,
    )
    two = median(records, "rate", kind="drain", peer="conveyor", config=TWO_PROCESSES)
    rows.append(("drain, 2 worker processes, jobs/s (no anchor)", two, None, "-", True))
    row("pickup latency p99 at 200/s, ms", "p99_ms", "latency", "≤ best peer", False)
    row(
        "bulk submit, jobs/s",
        "rate",
        "enqueue",
        "≥ 1.35x",
        True,
        {"mode": "bulk"},
        {"mode": "bulk"},
    )
    row(
        "single submit, jobs/s",
        "rate",
        "enqueue",
        "-",
        True,
        {"mode": "single"},
        {"mode": "single"},
    )
    row("Redis memory per queued job, B", "bytes_per_job", "memory", "≤ 300 B", False)
    c = median(records, "commands_per_s", kind="idle")
    rows.append(("Redis commands/s, 1 idle worker process", c, None, "≤ 5", False))
    conveyor_rps = median(records, "rps", kind="http", peer="conveyor")
    bare_rps = median(records, "rps", kind="http", peer="litestar_lpush")
    conveyor_p99 = median(records, "p99_ms", kind="http", peer="conveyor")
    bare_p99 = median(records, "p99_ms", kind="http", peer="litestar_lpush")

    lines = [
        f"{os.cpu_count()} cores; medians of {runs} runs; ratio = Conveyor / anchor "
        "(for a figure where lower is better, anchor / Conveyor: above 1 is Conveyor ahead)",
        "",
        "| figure | Conveyor | anchor | ratio | target |",
        "|---|---|---|---|---|",
    ]
    for label, ours, theirs, target, higher in rows:
        lines.append(
            f"| {label} | {_fmt(ours)} | BullMQ {_fmt(theirs)} | "
            f"{_ratio(ours, theirs, higher)} | {target} |"
        )
    lines.append(
        f"| `POST /jobs`, req/s | {_fmt(conveyor_rps)} | bare Litestar + LPUSH "
        f"{_fmt(bare_rps)} | {_ratio(conveyor_rps, bare_rps, True)} | ≥ 1.0x |"
    )
    lines.append(
        f"| `POST /jobs` p99, ms | {_fmt(conveyor_p99)} | bare Litestar + LPUSH "
        f"{_fmt(bare_p99)} | {_ratio(conveyor_p99, bare_p99, False)} | ≤ 1.5x its p99 |"
    )
    lines.append("")
    lines.append(
        "Run by run, Conveyor / BullMQ within each run (the medians above can pair a fast run "
        "of one with a slow run of the other): "
        + "; ".join(
            f"{label} "
            + ", ".join(
                _ratio(
                    median(records, field, kind="drain", peer="conveyor", run=run, **ours_one),
                    median(records, field, kind="drain", peer="bullmq-node", run=run, **one),
                    higher,
                )
                for run in range(1, runs + 1)
            )
            for label, field, higher in (
                ("drain", "rate", True),
                ("steady", "steady_rate", True),
                ("worker CPU per job", "worker_cpu_ms_per_job", False),
            )
        )
    )
    lines.append("")
    lines.append(
        "Python peers in the same run (1 process, drain jobs/s, latency p99 ms): "
        + ", ".join(
            f"{peer} {_fmt(median(records, 'rate', kind='drain', peer=peer, procs=1))} / "
            f"{_fmt(median(records, 'p99_ms', kind='latency', peer=peer))}"
            for peer in sorted(
                {r["peer"] for r in records if r.get("kind") == "drain"}
                - {"conveyor", "bullmq-node"}
            )
        )
    )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _ratio(ours: float | None, theirs: float | None, higher: bool) -> str:
    if not ours or not theirs:
        return "-"
    return f"{(ours / theirs if higher else theirs / ours):.2f}x"


def pace(client: redis.Redis) -> str:
    """This machine's pace now: a 10**7-step Python loop, and round trips to Redis on
    loopback. Shared machines run at different speeds from day to day, and not all of it
    shows in a pure Python loop, so the table says both."""
    started = time.perf_counter()
    total = 0
    for step in range(10_000_000):
        total += step
    loop = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(10_000):
        client.ping()
    trips = 10_000 / (time.perf_counter() - started)
    return f"Python loop {loop:.2f} s, {trips:,.0f} Redis PINGs/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--systems", default="conveyor,bullmq-node,huey,saq")
    parser.add_argument("--http-seconds", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="1 run, 2,000 jobs, 3 s of HTTP")
    parser.add_argument(
        "--deployed",
        action="store_true",
        help="measure Conveyor installed as deployed (requirements.lock, not editable) in a"
        " fresh virtualenv, not this checkout's development one",
    )
    args = parser.parse_args()
    if args.quick:
        args.runs, args.n, args.http_seconds = 1, 2_000, 3
    if not (SHARED / "compare" / "compare.py").exists():
        raise SystemExit(f"no shared harness at {SHARED} (CONVEYOR_SHARED_BENCH names it)")
    for tool in ("redis-cli", "node", "wrk"):  # redis-cli: the shared HTTP script
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not on PATH")
    install_peers()
    with (
        tempfile.TemporaryDirectory(prefix="conveyor-compare-") as tmp,
        redis_server(Path(tmp)) as (url, client),
    ):
        venv = deployed_venv(Path(tmp)) if args.deployed else THIS_VENV
        pace_before = pace(client)
        records = harness(url, args.systems, args.runs, args.n, Path(tmp) / "out", venv)
        records += http(url, args.runs, args.http_seconds, venv)
        for run in range(1, args.runs + 1):
            records += memory_per_job(url, client, run, args.n)
            records.append(idle_commands(url, client, run, venv))
        pace_after = pace(client)
    print()
    print(table(records, args.runs))
    print(f"\nThe machine's pace before the run: {pace_before}; after: {pace_after}.")


if __name__ == "__main__":
    main()
