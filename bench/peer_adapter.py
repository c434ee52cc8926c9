"""Conveyor's side of the shared side-by-side comparison (`../shared/bench/compare`).

The shared driver runs the peers' producers and workers the same way for every system; for
Conveyor it calls this script, with the project's own venv python:

    python bench/peer_adapter.py enqueue --mode single|bulk|paced --n N [--rate R]
    python bench/peer_adapter.py done-key [--queue Q]
    python bench/peer_adapter.py latencies [--queue Q]

- `enqueue` submits N no-op jobs (`dummy`, mode `succeed`) through the service the API uses
  (the container built from the environment, as `conveyor api` builds it, and the garbage
  collector settled as it settles it once started): `single` one
  submission at a time, `bulk` in batches of 1,000 (`BENCH_BULK_CHUNK`), `paced` one at a
  time at R per second. Prints `{"mode", "n", "secs", "rate"}`, as the peers' producers do.
- `done-key` prints `{"key", "type"}`: a Redis key whose cardinality is the number of
  succeeded jobs of the queue (the listing index of `succeeded`).
- `latencies` prints the pickup latencies, in seconds, of the queue's succeeded jobs: when
  the attempt that succeeded was claimed, less when the job became ready (its `run_at` when
  it had one, else its submission). Both come from the job as stored.

Settings come from the environment (REDIS_URL, CONVEYOR_KEY_PREFIX, ...); the native Redis
backend only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import cast

from adapters.redis_client import create_redis
from adapters.redis_queue.keys import QueueKeys
from domain.jobs import JobStatus
from domain.submission import Submission
from entrypoints.collector import settle_collector
from entrypoints.container import build_container
from entrypoints.settings import QueueBackend, Settings

CHUNK = int(os.environ.get("BENCH_BULK_CHUNK", "1000"))


def _settings() -> Settings:
    settings = Settings.from_env()
    if settings.queue_backend is not QueueBackend.REDIS:
        sys.exit(
            "peer_adapter: the comparison drives the native Redis backend (QUEUE_BACKEND=redis)"
        )
    return settings


async def enqueue(mode: str, n: int, rate: float, queue: str) -> dict[str, object]:
    container = build_container(_settings())
    # What `conveyor api` does as it starts: among others, learn the prefix's job layout;
    # then, as it does once started, leave what start-up built to the garbage collector's
    # oldest generation, frozen, and collect young objects less often (`settle_collector`).
    await container.backend().connection.verify()
    service = container.job_service()
    settle_collector()
    submission = Submission(type="dummy", payload={"mode": "succeed"}, queue=queue)
    started = time.perf_counter()
    try:
        if mode == "single":
            for _ in range(n):
                await service.submit(submission)
        elif mode == "bulk":
            for start in range(0, n, CHUNK):
                await service.submit_batch([submission] * min(CHUNK, n - start))
        else:
            for i in range(n):
                ahead = started + i / rate - time.perf_counter()
                if ahead > 0:
                    await asyncio.sleep(ahead)
                await service.submit(submission)
        secs = time.perf_counter() - started
    finally:
        await container.backend().connection.close()
    return {"mode": mode, "n": n, "secs": round(secs, 4), "rate": round(n / secs, 1)}


def done_key(queue: str) -> dict[str, str]:
    keys = QueueKeys.of(_settings().key_prefix, queue)
    return {"key": keys.index(JobStatus.SUCCEEDED), "type": "zset"}


async def latencies(queue: str) -> list[float]:
    settings = _settings()
    if settings.redis_url is None:
        sys.exit("peer_adapter: REDIS_URL is not set")
    keys = QueueKeys.of(settings.key_prefix, queue)
    client = create_redis(settings.redis_url, connect_timeout=2.0, socket_timeout=30.0)
    try:
        ids = cast("Sequence[bytes]", await client.zrange(keys.index(JobStatus.SUCCEEDED), 0, -1))
        found: list[float] = []
        for start in range(0, len(ids), 5000):
            pipe = client.pipeline(transaction=False)
            for job_id in ids[start : start + 5000]:
                pipe.hmget(keys.job(job_id.decode()), "created_at", "run_at", "started_at")
            for created, run_at, claimed in await pipe.execute():
                ready = run_at or created
                if ready and claimed:
                    # Both in us since the epoch: the submit's clock, the claim's (Redis's).
                    found.append(max(0.0, (int(claimed) - int(ready)) / 1e6))
        return found
    finally:
        await client.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    put = commands.add_parser("enqueue", help="submit N no-op jobs")
    put.add_argument("--mode", choices=("single", "bulk", "paced"), default="single")
    put.add_argument("--n", type=int, default=20_000)
    put.add_argument("--rate", type=float, default=200.0)
    put.add_argument("--queue", default="default")
    for name in ("done-key", "latencies"):
        commands.add_parser(name).add_argument("--queue", default="default")
    args = parser.parse_args(argv)
    if args.command == "enqueue":
        if args.n <= 0 or args.rate <= 0:
            parser.error("--n and --rate must be positive")
        answer: object = asyncio.run(enqueue(args.mode, args.n, args.rate, args.queue))
    elif args.command == "done-key":
        answer = done_key(args.queue)
    else:
        answer = asyncio.run(latencies(args.queue))
    print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
