"""What Conveyor's RQ backend costs over raw RQ, on the same Redis, in the same run.

    .venv/bin/python bench/rq_overhead.py [--jobs 20000] [--worker fork|simple|both]

Uses REDIS_URL if set (loopback hosts only), else starts a throwaway local server. Every RQ
key of the run lives under its own RQ_KEY_PREFIX (``rqbench-<uuid>``), and Conveyor's under
its own prefix; all of them are deleted at the end.

For each worker kind, `--jobs` no-op jobs go through each path, in `--rounds` alternating
rounds (ABBA order, so drift and other load on the machine hit both paths alike); in each
round one worker per path, in burst mode, drains what was just enqueued:
- raw RQ: `Queue(serializer=JSONSerializer).enqueue_call("os.getpid")`, a stock `rq.Worker`
  (or `rq.SimpleWorker`);
- Conveyor: the RQ backend's submitter storing `dummy` jobs (`{"mode": "succeed"}`), one at a
  time, and Conveyor's RQ worker class: the dispatcher, registry lookup, payload validation,
  `JobProcessor`, the attempt counted in the job's meta and settled by the domain's rule.
Enqueueing is timed too (one at a time, like an API handling one request), but the target
is the worker's throughput: Conveyor within 15 % of raw RQ.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

# RQ reads its key prefix once, at import: set it before anything imports rq.
RQ_PREFIX = f"rqbench-{uuid.uuid4().hex[:8]}"
os.environ["RQ_KEY_PREFIX"] = RQ_PREFIX

import redis  # noqa: E402
import rq  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402
from rq.version import VERSION as RQ_VERSION  # noqa: E402

from adapters.rq import (  # noqa: E402
    ConveyorSimpleWorker,
    ConveyorWorker,
    RqWorkerConfig,
    build_worker,
    create_rq_redis,
    rq_backend,
)
from domain.job_types import JobTypeRegistry  # noqa: E402
from domain.job_types.dummy import dummy_job_type  # noqa: E402
from domain.jobs import Job  # noqa: E402
from domain.ports import store_new  # noqa: E402
from entrypoints.local_redis import LocalRedis  # noqa: E402

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_MAX_JOBS = 200_000
TYPES = JobTypeRegistry([dummy_job_type()])


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        if urlsplit(url).hostname not in _LOOPBACK:
            sys.exit(f"refusing a non-loopback REDIS_URL: {url}")
        yield url
        return
    with tempfile.TemporaryDirectory() as data, LocalRedis(data_dir=Path(data)) as server:
        yield server.url


def drain(worker: rq.worker.BaseWorker) -> float:
    started = time.perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    return time.perf_counter() - started


class Side:
    """One way of running jobs: it enqueues a chunk, then its one worker drains it."""

    label = ""

    def __init__(self) -> None:
        self.jobs = 0
        self.enqueue_seconds = 0.0
        self.worker_seconds = 0.0
        self.round_rates: list[float] = []
        self.shortfalls: list[str] = []

    def enqueue(self, n: int) -> None:
        raise NotImplementedError

    def worker(self) -> rq.worker.BaseWorker:
        raise NotImplementedError

    def rq_queue(self) -> rq.Queue:
        raise NotImplementedError

    def finished(self) -> int:
        count: int = self.rq_queue().finished_job_registry.count
        return count

    def census(self) -> str:
        """Where this side's jobs are, and why the first failed one failed."""
        queue = self.rq_queue()
        places = {
            "queued": queue.count,
            "started": queue.started_job_registry.count,
            "scheduled": queue.scheduled_job_registry.count,
            "deferred": queue.deferred_job_registry.count,
            "failed": queue.failed_job_registry.count,
            "canceled": queue.canceled_job_registry.count,
            "finished": queue.finished_job_registry.count,
        }
        text = ", ".join(f"{place} {count}" for place, count in places.items())
        failed = queue.failed_job_registry.get_job_ids(0, 0)
        if failed:
            job = queue.fetch_job(failed[0])
            info = (job.exc_info or "").strip().splitlines()[-1:] if job is not None else []
            text += f"; first failed job {failed[0]}: {info[0] if info else '?'}"
        return text

    def round(self, n: int) -> None:
        started = time.perf_counter()
        self.enqueue(n)
        self.enqueue_seconds += time.perf_counter() - started
        took = drain(self.worker())
        self.worker_seconds += took
        self.jobs += n
        self.round_rates.append(n / took)
        finished = self.finished()
        if finished != self.jobs:
            self.shortfalls.append(
                f"{self.label}: {finished:,} of {self.jobs:,} finished after round "
                f"{len(self.round_rates)} ({self.census()})"
            )


class RawRq(Side):
    label = "raw RQ"

    def __init__(self, client: redis.Redis, kind: str) -> None:
        super().__init__()
        self.queue = rq.Queue(f"raw-{kind}", connection=client, serializer=JSONSerializer)
        worker_class = rq.Worker if kind == "fork" else rq.SimpleWorker
        self._worker = worker_class([self.queue], connection=client, serializer=JSONSerializer)
        self._worker.log_result_lifespan = False

    def enqueue(self, n: int) -> None:
        for _ in range(n):
            self.queue.enqueue_call("os.getpid", result_ttl=3600)

    def worker(self) -> rq.worker.BaseWorker:
        return self._worker

    def rq_queue(self) -> rq.Queue:
        return self.queue


class Conveyor(Side):
    label = "Conveyor on RQ"

    def __init__(self, client: redis.Redis, kind: str, prefix: str) -> None:
        super().__init__()
        self.name = f"conveyor-{kind}"
        self.backend = rq_backend(client, prefix=prefix, result_ttl=3600)
        self._worker = build_worker(
            client,
            (self.name,),
            registry=TYPES,
            prefix=prefix,
            config=RqWorkerConfig(),
            result_ttl=3600,
            random=random.random,
            worker_class=ConveyorWorker if kind == "fork" else ConveyorSimpleWorker,
        )
        self._worker.log_result_lifespan = False
        self._rq_queue = rq.Queue(
            f"{prefix}:{self.name}", connection=client, serializer=JSONSerializer
        )

    def enqueue(self, n: int) -> None:
        now = datetime.now(UTC)
        jobs = [
            Job.submitted(
                id=uuid.uuid4().hex,
                type="dummy",
                payload={"mode": "succeed"},
                queue=self.name,
                max_attempts=3,
                timeout=30.0,
                now=now,
            )
            for _ in range(n)
        ]

        async def enqueue_all() -> None:
            for job in jobs:  # one at a time, like an API handling one request
                await store_new(self.backend.submitter, job)

        asyncio.run(enqueue_all())

    def worker(self) -> rq.worker.BaseWorker:
        return self._worker

    def rq_queue(self) -> rq.Queue:
        return self._rq_queue


def delete_keys(client: redis.Redis, patterns: list[str]) -> int:
    deleted = 0
    for pattern in patterns:
        batch = []
        for key in client.scan_iter(match=pattern, count=5000):
            batch.append(key)
            if len(batch) == 5000:
                deleted += client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += client.unlink(*batch)
    return deleted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="no-op jobs per path")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds per path")
    parser.add_argument("--worker", choices=("fork", "simple", "both"), default="both")
    args = parser.parse_args()
    n = max(1, min(args.jobs, _MAX_JOBS))
    rounds = max(1, min(args.rounds, n))
    if args.worker == "both":
        # Each kind in a process of its own: the forking worker freezes the garbage collector
        # before it forks, which would otherwise carry over to the simple worker's rounds.
        failed = False
        for kind in ("fork", "simple"):
            command = [sys.executable, __file__, "--jobs", str(n), "--rounds", str(rounds)]
            failed |= subprocess.run([*command, "--worker", kind], check=False).returncode != 0
        sys.exit(1 if failed else 0)
    kinds = [args.worker]
    logging.basicConfig(level=logging.WARNING)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    results: list[tuple[str, Side, Side]] = []
    with redis_url() as url:
        client = create_rq_redis(url, connect_timeout=2.0, socket_timeout=30.0)
        try:
            client.ping()
            for kind in kinds:
                raw, ours = RawRq(client, kind), Conveyor(client, kind, prefix)
                for r in range(rounds):
                    chunk = n // rounds + (1 if r < n % rounds else 0)
                    # ABBA: neither path always runs first while the machine warms or drifts.
                    order: tuple[Side, Side] = (raw, ours) if r % 2 == 0 else (ours, raw)
                    for path in order:
                        path.round(chunk)
                results.append((kind, raw, ours))
        finally:
            delete_keys(client, [f"{RQ_PREFIX}:*", f"*{prefix}*"])
            client.close()

    print(
        f"\n{n:,} no-op jobs per path, one worker, {rounds} alternating rounds, "
        f"rq {RQ_VERSION}, Python {sys.version.split()[0]}"
    )
    header = (
        f"{'worker':<7} {'path':<15} {'enqueue/s':>10} {'worker jobs/s':>14} {'median round':>13}"
    )
    print(header + f" {'vs raw':>7}")
    for kind, baseline, conveyor in results:
        for side in (baseline, conveyor):
            rate = side.jobs / side.worker_seconds
            ratio = rate / (baseline.jobs / baseline.worker_seconds)
            print(
                f"{kind:<7} {side.label:<15} {side.jobs / side.enqueue_seconds:>10,.0f} "
                f"{rate:>14,.0f} {statistics.median(side.round_rates):>13,.0f} {ratio:>7.0%}"
            )
    shortfalls = [line for _, a, b in results for line in a.shortfalls + b.shortfalls]
    if shortfalls:
        print("\nNOT every job finished:", *shortfalls, sep="\n  ")
        sys.exit(1)


if __name__ == "__main__":
    main()
