"""Unique jobs end to end: two API processes and a worker process on a real Redis.

50 concurrent submits of one unique key, half to each API process, create exactly one job;
once a real worker has run it to success, the next submit under the key creates a new one.
Prints its figures (run with `-s` to see them).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.integration.processes import Api, Conveyor, service_env, wait_for_job

SUBMITS = 50
KEY = "rebuild report q3"


async def burst(bases: list[str], body: dict[str, Any], n: int) -> list[httpx.Response]:
    """`n` submits of `body` at once, each on its own connection, spread over `bases`."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=10.0, limits=limits) as client:
        posts = (client.post(f"{bases[i % len(bases)]}/jobs", json=body) for i in range(n))
        return list(await asyncio.gather(*posts))


def test_concurrent_submits_of_one_unique_key_create_one_job_until_it_succeeds(
    redis_url: str, tmp_path: Path
) -> None:
    env = service_env(redis_url, CONVEYOR_WORKER_PROCESSES="1")
    prefix = env["CONVEYOR_KEY_PREFIX"]
    body = {"type": "dummy", "payload": {"mode": "succeed"}, "unique_key": KEY}
    with Api(env, tmp_path) as api, Api(env, tmp_path) as other, api.client() as client:
        started = time.perf_counter()
        answers = asyncio.run(burst([api.base, other.base], body, SUBMITS))
        elapsed = time.perf_counter() - started

        assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
        ids = {a.json()["id"] for a in answers}
        replayed = [a for a in answers if a.headers.get("unique-replayed") == "true"]
        assert len(ids) == 1
        assert len(replayed) == SUBMITS - 1
        assert all(a.json()["replayed"] for a in replayed)
        (first,) = ids
        listed = client.get("/jobs", params={"limit": 500}).json()["jobs"]
        with redis.Redis.from_url(redis_url) as r:
            in_redis = sum(1 for _ in r.scan_iter(f"{{{prefix}:default}}:job:*"))
            holder = r.get(next(r.scan_iter(f"{{{prefix}:default}}:unique:*"))).decode()
        assert ([job["id"] for job in listed], in_redis, holder) == ([first], 1, first)

        with Conveyor(["worker"], env, tmp_path):
            done = wait_for_job(client, first, {"succeeded", "dead", "cancelled", "expired"})
            assert done["status"] == "succeeded", done
            after = client.post("/jobs", json=body)

        assert after.status_code == 202
        assert "unique-replayed" not in after.headers
        assert after.json()["id"] != first
        assert len(client.get("/jobs", params={"limit": 500}).json()["jobs"]) == 2
        print(
            f"\nunique: {SUBMITS} concurrent submits over 2 API processes in {elapsed:.2f} s:"
            f" jobs created 1 (GET /jobs {len(listed)}, job hashes in Redis {in_redis}),"
            f" answered Unique-Replayed {len(replayed)}; after it succeeded, the next submit"
            f" created a new job ({first} -> {after.json()['id']})"
        )
