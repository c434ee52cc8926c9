"""Redis memory per queued job as its payload grows, beside Redis's hash-max-listpack-value.

    REDIS_URL=redis://127.0.0.1:6390/0 python -m bench.payload_memory [--jobs N]
        [--body 20,200] [--listpack-values 64,1024]

For each `hash-max-listpack-value` given (set with CONFIG SET, the server's own value put
back at the end) and each `email` body length, submits N `email` jobs in batches of 1,000
through the service the API uses, under a key prefix of its own, and prints one JSON line:
the growth of `used_memory` per job, one job hash's `MEMORY USAGE` and encoding, Redis's own
CPU per job and the submit rate. Deletes its prefix's keys after each case. Needs a Redis
that takes CONFIG SET and that nothing else writes to meanwhile (the memory is the
server's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from typing import Any

import redis

from domain.submission import Submission
from entrypoints.container import build_container
from entrypoints.settings import Settings

CHUNK = 1000


def _cpu(client: redis.Redis) -> float:
    info: dict[str, Any] = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _case(url: str, jobs: int, body: int) -> dict[str, object]:
    prefix = f"payload-memory-{uuid.uuid4().hex[:8]}"
    os.environ["CONVEYOR_KEY_PREFIX"] = prefix
    container = build_container(Settings.from_env())
    connection = container.backend().connection
    await connection.verify()  # as `conveyor api` does: learns the prefix's job layout
    service = container.job_service()
    payload = {"to": "someone@example.com", "subject": "Your receipt", "body": "x" * body}
    submission = Submission(type="email", payload=payload, queue="default")
    client = redis.Redis.from_url(url)
    try:
        before, cpu = int(client.info("memory")["used_memory"]), _cpu(client)
        started = time.perf_counter()
        for start in range(0, jobs, CHUNK):
            await service.submit_batch([submission] * min(CHUNK, jobs - start))
        secs = time.perf_counter() - started
        grown = int(client.info("memory")["used_memory"]) - before
        cpu = _cpu(client) - cpu
        key = next(client.scan_iter(match=f"{{{prefix}:default}}:job:*"))
        encoding = client.object("encoding", key)
        return {
            "body": body,
            "payload_bytes": len(json.dumps(payload, separators=(",", ":"))),
            "bytes_per_job": round(grown / jobs),
            "hash_bytes": client.memory_usage(key),
            "hash_encoding": encoding.decode() if isinstance(encoding, bytes) else encoding,
            "redis_us_per_job": round(cpu * 1e6 / jobs, 1),
            "rate": round(jobs / secs),
        }
    finally:
        await connection.close()
        for pattern in (f"{{{prefix}:*", f"{{{prefix}}}:*", f"{prefix}:*"):
            for found in client.scan_iter(match=pattern, count=1000):
                client.unlink(found)
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--body", default="20,200", help="email body lengths, comma-separated")
    parser.add_argument("--listpack-values", default="64,1024")
    args = parser.parse_args()
    url = os.environ["REDIS_URL"]
    client = redis.Redis.from_url(url)
    kept = client.config_get("hash-max-listpack-value")["hash-max-listpack-value"] or "64"
    try:
        for value in args.listpack_values.split(","):
            client.config_set("hash-max-listpack-value", value)
            for body in args.body.split(","):
                case = asyncio.run(_case(url, args.jobs, int(body)))
                print(json.dumps({"hash_max_listpack_value": int(value), **case}), flush=True)
    finally:
        client.config_set("hash-max-listpack-value", kept)
        client.close()


if __name__ == "__main__":
    main()
