"""An idle worker process keeps quiet, and still keeps its windows.

Quiet: what it asks Redis while its queue is empty, counted with MONITOR over this test's
own key prefix only (other tests may share the server), by command, including those run
inside Lua scripts (Redis counts those too). TIME names no key, so it is counted as one per
script the worker runs (each asks the clock at most once): an upper bound.

Windows: a job scheduled while the worker waits, earlier than everything it knew of, still
runs within about a second of its time; a lease taken while it waits, and then abandoned,
is recovered within the lease and about a second.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio

from adapters.console_email import ConsoleEmailSender
from adapters.redis_client import create_redis
from adapters.redis_queue import calls, redis_backend, scripts
from adapters.redis_queue.keys import QueueKeys
from adapters.system_clock import SystemClock
from domain.job_service import JobService
from domain.job_types.registry import default_registry
from domain.ports.backend import Backend
from domain.submission import Submission
from tests.integration.processes import Conveyor, service_env

SETTLE = 4.0  # start-up left out (its first claim, heartbeat and scheduler pass)
WINDOW = 10.0  # seconds counted: two heartbeats
EARLY = 0.005  # due times are whole ms on the Redis clock; submit times us on ours


async def _commands_under(redis_url: str, prefix: str, seconds: float) -> Counter[str]:
    client = create_redis(redis_url, connect_timeout=2.0, socket_timeout=seconds + 5.0)
    seen: Counter[str] = Counter()
    try:
        async with client.monitor() as monitor:
            until = time.monotonic() + seconds
            while (left := until - time.monotonic()) > 0:
                try:
                    entry = await asyncio.wait_for(monitor.next_command(), left)
                except TimeoutError:
                    break
                if prefix in entry["command"]:
                    seen[entry["command"].split(" ", 1)[0].upper()] += 1
    finally:
        await client.aclose()
    seen["TIME"] = seen["EVALSHA"]
    return seen


@pytest.mark.alone
def test_an_idle_worker_process_makes_at_most_five_redis_commands_a_second(
    redis_url: str, tmp_path: Path
) -> None:
    env = service_env(redis_url)
    prefix = env["CONVEYOR_KEY_PREFIX"]
    with Conveyor(["worker", "--processes", "1"], env, tmp_path) as worker:
        worker.wait_for('"worker started"')
        time.sleep(SETTLE)
        seen = asyncio.run(_commands_under(redis_url, prefix, WINDOW))
        assert worker.stop() == 0, worker.output()[-3000:]
    per_second = {command: count / WINDOW for command, count in seen.items()}
    print(f"\nidle worker, commands a second: {sum(per_second.values()):.1f} {per_second}")
    # Today, in 10 s: two heartbeats of two scripts (8 or 9 commands each: 1.7 a second),
    # one look a second whether a schedule changed (GET), and a 4 s blocking wait on the
    # marker (BLPOP, 2.5); the claim script runs only when something falls due, or every
    # 30 s, and the full recovery every 60 s. About 3 commands a second. The bounds leave
    # room for one of those rarer scripts, or a third heartbeat, landing in the window.
    assert per_second.get("EVALSHA", 0) <= 1.0, per_second
    assert per_second.get("BLPOP", 0) <= 0.5, per_second
    assert per_second.get("GET", 0) <= 1.2, per_second
    assert sum(per_second.values()) <= 5.0, per_second


@asynccontextmanager
async def _backend(
    redis_url: str, prefix: str
) -> AsyncIterator[tuple[Backend, redis.asyncio.Redis]]:
    client = create_redis(redis_url, connect_timeout=2.0, socket_timeout=10.0)
    backend = redis_backend(client, prefix=prefix)
    try:
        yield backend, client
    finally:
        await backend.connection.close()


async def _started_late(
    client: redis.asyncio.Redis, keys: QueueKeys, job_id: str, within: float
) -> float:
    """Seconds from when the job was due (`run_at`, else its submission) to its claim."""
    until = time.monotonic() + within
    while True:
        created, run_at, started = await client.hmget(
            keys.job(job_id), "created_at", "run_at", "started_at"
        )
        if started is not None:
            due = run_at or created
            assert due is not None, job_id
            return (int(started) - int(due)) / 1e6
        assert time.monotonic() < until, f"job {job_id} never started"
        await asyncio.sleep(0.02)


def test_a_job_scheduled_while_a_worker_waits_runs_within_a_second_of_its_time(
    redis_url: str, tmp_path: Path
) -> None:
    env = service_env(redis_url)
    prefix = env["CONVEYOR_KEY_PREFIX"]
    keys = QueueKeys.of(prefix, "default")

    async def main() -> list[float]:
        async with _backend(redis_url, prefix) as (backend, client):
            jobs = JobService(backend, default_registry(ConsoleEmailSender()), SystemClock())
            later = {"type": "dummy", "payload": {"mode": "succeed"}}
            # The worker learns of this one first, and sleeps until it is due (20 s)...
            await jobs.submit(Submission(**later, delay=20))
            await asyncio.sleep(1.5)
            # ...then of these, due long before; the last comes after its wait began.
            found = []
            for delay in (1.0, 2.5):
                job = (await jobs.submit(Submission(**later, delay=delay))).job
                found.append(await _started_late(client, keys, job.id, delay + 5))
            return found

    with Conveyor(["worker", "--processes", "1"], env, tmp_path) as worker:
        worker.wait_for('"worker started"')
        time.sleep(SETTLE)  # waiting
        late = asyncio.run(main())
        assert worker.stop() == 0, worker.output()[-3000:]
    print(f"\nscheduled jobs claimed after their time: {late} s")
    assert all(-EARLY <= seconds <= 1.0 for seconds in late), late


def test_a_lease_taken_while_a_worker_waits_and_abandoned_is_recovered_in_time(
    redis_url: str, tmp_path: Path
) -> None:
    lease_s = 3.0
    env = service_env(redis_url, CONVEYOR_LEASE_SECONDS=str(lease_s))
    prefix = env["CONVEYOR_KEY_PREFIX"]
    keys = QueueKeys.of(prefix, "default")

    async def main() -> tuple[float, float]:
        async with _backend(redis_url, prefix) as (backend, client):
            jobs = JobService(backend, default_registry(ConsoleEmailSender()), SystemClock())
            # Paused, so that the waiting worker cannot take the job before a worker that
            # then dies (this test) does.
            assert backend.pauser is not None
            await backend.pauser.pause("default")
            job = (await jobs.submit(Submission(type="dummy", payload={"mode": "succeed"}))).job
            await asyncio.sleep(1.0)
            await client.script_load(scripts.CLAIM.source)
            claim = calls.claim(
                keys,
                limit=1,
                lease_ms=calls.ms(lease_s),
                worker_id="gone",
                retention=calls.Retention(86_400_000, 0),
            )
            # Resumed and claimed in one step, so nothing wakes the waiting worker.
            async with client.pipeline(transaction=True) as pipe:
                pipe.delete(keys.paused)
                calls.evalsha(pipe, claim)
                _, (claimed, _) = await pipe.execute()
            assert len(claimed) == 1
            taken = time.time()
            until = time.monotonic() + lease_s + 10
            while True:
                attempts, started = await client.hmget(keys.job(job.id), "attempts", "started_at")
                if attempts == b"2" and started is not None:
                    return taken, int(started) / 1e6
                assert time.monotonic() < until, "the abandoned lease was never recovered"
                await asyncio.sleep(0.02)

    with Conveyor(["worker", "--processes", "1"], env, tmp_path) as worker:
        worker.wait_for('"worker started"')
        time.sleep(SETTLE)  # waiting
        taken, rerun = asyncio.run(main())
        assert worker.stop() == 0, worker.output()[-3000:]
    print(f"\nabandoned lease ({lease_s} s) run again after {rerun - taken:.3f} s")
    assert lease_s - EARLY <= rerun - taken <= lease_s + 1.0, rerun - taken
