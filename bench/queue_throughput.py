"""How many jobs/s one Python process moves through the Redis backend's roles.

    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/queue_throughput.py [--jobs N]

Needs REDIS_URL (it starts nothing) and refuses anything but a loopback host. Keys live under
a fresh ``bench-<uuid>`` prefix, deleted at the end. Prints one table row per scenario:

- enqueue, c=K:    K concurrent one-job `submit` calls in flight (those of one event-loop tick
                   share one pipelined SADD + SUBMIT)
- claim+complete, b=B xL: L concurrent loops in one process, each `claim(limit=B)` then B
                           concurrent `settle` calls of a success (no-op jobs), until the
                           queue is empty
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

from adapters.redis_client import create_redis
from adapters.redis_queue import redis_backend
from domain.jobs import Job, JobStatus
from domain.ports import Backend, ClaimRequest, LeaseQueue, store_new
from domain.settlement import Ending

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _jobs(n: int, queue: str) -> list[Job]:
    now = datetime.now(UTC)
    return [
        Job.submitted(
            id=uuid.uuid4().hex,
            type="dummy",
            payload={"action": "succeed", "n": i},
            queue=queue,
            max_attempts=3,
            timeout=30.0,
            now=now,
        )
        for i in range(n)
    ]


async def _bounded(calls: list[Callable[[], Awaitable[object]]], concurrency: int) -> None:
    pending = iter(calls)

    async def lane() -> None:
        for call in pending:
            await call()

    await asyncio.gather(*(lane() for _ in range(concurrency)))


async def enqueue_rate(backend: Backend, name: str, n: int, concurrency: int) -> float:
    jobs = _jobs(n, name)
    submitter = backend.submitter
    started = time.perf_counter()
    await _bounded([functools.partial(store_new, submitter, j) for j in jobs], concurrency)
    return n / (time.perf_counter() - started)


async def claim_complete_rate(
    leases: LeaseQueue, name: str, batch: int, claimers: int
) -> tuple[float, int]:
    done = 0
    request = ClaimRequest(queues=(name,), worker_id="bench", limit=batch, lease_seconds=60)
    success = Ending.succeeded(None)

    async def claimer() -> None:
        nonlocal done
        while claimed := await leases.claim(request):
            results = await asyncio.gather(*(leases.settle(lease, success) for lease in claimed))
            done += sum(status is JobStatus.SUCCEEDED for status in results)

    started = time.perf_counter()
    await asyncio.gather(*(claimer() for _ in range(claimers)))
    return done / (time.perf_counter() - started), done


async def main(url: str, n: int) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    backend = redis_backend(
        create_redis(url, connect_timeout=2.0, socket_timeout=10.0, max_connections=128),
        prefix=prefix,
    )
    assert backend.leases is not None
    rows: list[tuple[str, int, float]] = []
    try:
        await backend.connection.ping()
        for concurrency in (1, 16, 64):
            name = f"enqueue-c{concurrency}"
            rate = await enqueue_rate(backend, name, n, concurrency)
            rows.append((f"enqueue, c={concurrency}", n, rate))
        for batch, claimers in ((10, 1), (100, 1), (100, 2), (100, 4)):
            name = f"cc-b{batch}-{claimers}"
            await enqueue_rate(backend, name, n, 64)
            rate, done = await claim_complete_rate(backend.leases, name, batch, claimers)
            assert done == n, (done, n)
            rows.append((f"claim+complete, b={batch} x{claimers}", done, rate))
    finally:
        client = create_redis(url, connect_timeout=2.0, socket_timeout=10.0)
        for pattern in (f"{{{prefix}:*", f"{prefix}:*"):
            keys = [k async for k in client.scan_iter(match=pattern, count=1000)]
            for start in range(0, len(keys), 1000):
                await client.unlink(*keys[start : start + 1000])
        await client.aclose()
        await backend.connection.close()

    print(f"{'scenario':<28} {'jobs':>7} {'jobs/s':>9}")
    for label, jobs, rate in rows:
        print(f"{label:<28} {jobs:>7} {rate:>9,.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per scenario")
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL")
    if not url:
        sys.exit("set REDIS_URL to a Redis on this machine (this benchmark starts nothing)")
    if urlsplit(url).hostname not in _LOOPBACK:
        sys.exit(f"refusing a non-loopback REDIS_URL: {url}")
    asyncio.run(main(url, args.jobs))
