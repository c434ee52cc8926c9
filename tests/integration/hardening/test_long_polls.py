"""Long polls cannot load Redis nor exhaust the API (issue 11, item 3).

Against real `conveyor api` and `conveyor worker` processes and a Redis of the test's own
(INFO commandstats then counts only what they sent):

- 200, then 2,000 concurrent `GET /jobs/{id}?wait=30`, each on a job queued in a paused
  queue, while jobs are submitted at 50 a second (and run by the worker): no 5xx, submit p99
  under 500 ms, and the Redis commands a second while they wait about the same with 2,000
  waiters as with 200 (one subscription wakes them, none polls); then the queue is resumed
  and every waiter is answered with its job succeeded;
- past `CONVEYOR_MAX_WAITERS`, a wait is answered at once with the job as it is;
- waiters whose job finishes while the API's subscription is down are still answered.

The issue's figures, unscaled; each phase measures a 5 s window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import redis

from entrypoints.local_redis import LocalRedis
from tests.integration.hardening.streams import (
    CommandCounter,
    get,
    percentile,
    post_json,
    read_answer,
)
from tests.integration.processes import Api, Conveyor, service_env

SUBMITS_PER_SECOND: Final = 50
WINDOW: Final = 5.0  # seconds of steady waiting measured per phase
ARRIVING: Final = 500.0  # waiters that come a second
SUCCEED: Final = {"type": "dummy", "payload": {"mode": "succeed"}}

run = asyncio.run


@pytest.fixture
def redis_of_its_own(tmp_path: Path) -> Iterator[str]:
    with LocalRedis(data_dir=tmp_path / "redis") as server:
        yield server.url


class Submitter:
    """Submits a job to `default` every 1/SUBMITS_PER_SECOND s over a few keep-alive
    connections, keeping each answer's status and latency."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies: list[float] = []
        self.sent_at: list[float] = []
        self.statuses: list[int] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        for _ in range(8):
            pool.put_nowait(await asyncio.open_connection("127.0.0.1", self.port))
        body = json.dumps(SUCCEED).encode()
        tasks: set[asyncio.Task[None]] = set()

        async def one() -> None:
            reader, writer = await pool.get()
            started = time.perf_counter()
            writer.write(post_json("/jobs", body))
            status, _, _ = await read_answer(reader)
            self.latencies.append(time.perf_counter() - started)
            self.sent_at.append(started)
            self.statuses.append(status)
            pool.put_nowait((reader, writer))

        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self._stop.is_set():
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += 1 / SUBMITS_PER_SECOND
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, next_at - loop.time()))
        await asyncio.gather(*tasks)
        while not pool.empty():
            pool.get_nowait()[1].close()

    def stop(self) -> None:
        self._stop.set()


async def submit_held(port: int, queue: str, n: int) -> list[str]:
    """`n` jobs in `queue`, paused first so that they wait."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post_json(f"/queues/{queue}/pause", b""))
    assert (await read_answer(reader))[0] == 200
    ids: list[str] = []
    for start in range(0, n, 500):
        body = json.dumps({"jobs": [{**SUCCEED, "queue": queue}] * min(500, n - start)})
        writer.write(post_json("/jobs/batch", body.encode()))
        status, _, answer = await read_answer(reader)
        assert status == 202, answer
        ids += [item["id"] for item in json.loads(answer)["jobs"]]
    writer.close()
    return ids


@contextlib.asynccontextmanager
async def waiting(
    port: int, job_ids: list[str], arriving: float = 0.0
) -> AsyncIterator[list[asyncio.Task[Any]]]:
    """One connection per job, each waiting for its job (`?wait=30`), the first `arriving`
    a second (0: all at once); the tasks answer the status, the job view and when."""

    async def wait_for(n: int, job_id: str) -> tuple[int, dict[str, Any], float]:
        if arriving:
            await asyncio.sleep(n / arriving)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(get(f"/jobs/{job_id}?wait=30"))
            status, _, body = await read_answer(reader)
            return status, json.loads(body), time.monotonic()
        finally:
            writer.close()

    tasks = [asyncio.create_task(wait_for(n, job_id)) for n, job_id in enumerate(job_ids)]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def phase(
    port: int, url: str, commands: CommandCounter, waiters: int
) -> tuple[float, float, int]:
    """`waiters` waiting on jobs of a paused queue: Redis commands a second while they wait,
    seconds from resuming the queue until every one is answered, and the pub/sub
    connections Redis holds meanwhile."""
    queue = f"held-{waiters}"
    ids = await submit_held(port, queue, waiters)
    async with waiting(port, ids, ARRIVING) as tasks:
        # Every waiter has come, read its job once, and waits.
        await asyncio.sleep(waiters / ARRIVING + 1.5)
        assert not any(task.done() for task in tasks), "a waiter was answered early"
        before = commands.snapshot()
        await asyncio.sleep(WINDOW)
        spent_by_name = commands.snapshot() - before
        spent = sum(spent_by_name.values())
        print(
            f"\n{waiters} waiting, Redis commands in {WINDOW:.0f} s:", spent_by_name.most_common(6)
        )
        assert not any(task.done() for task in tasks), "a waiter was answered early"
        subscriptions = len(redis.Redis.from_url(url).client_list(_type="pubsub"))
        resumed = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post_json(f"/queues/{queue}/resume", b""))
        assert (await read_answer(reader))[0] == 200
        writer.close()
        answers = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert {status for status, _, _ in answers} == {200}
    assert {view["status"] for _, view, _ in answers} == {"succeeded"}
    last = max(at for _, _, at in answers)
    return spent / WINDOW, last - resumed, subscriptions


@pytest.mark.alone
def test_thousands_of_waiters_cost_redis_nothing_while_they_wait(
    redis_of_its_own: str, tmp_path: Path
) -> None:
    env = service_env(redis_of_its_own, CONVEYOR_MAX_WAITERS="5000")
    queues = "default,held-200,held-2000"
    commands = CommandCounter(redis_of_its_own)
    with (
        Api(env, tmp_path) as api,
        Conveyor(["worker", "--queues", queues, "--concurrency", "50"], env, tmp_path),
    ):

        async def main() -> list[tuple[float, float, int]]:
            submitter = Submitter(api.port)
            submitting = asyncio.create_task(submitter.run())
            await asyncio.sleep(1.0)
            results = [await phase(api.port, redis_of_its_own, commands, n) for n in (200, 2000)]
            submitter.stop()
            await submitting
            assert set(submitter.statuses) == {202}, sorted(set(submitter.statuses))
            p99 = percentile(submitter.latencies, 0.99)
            print(
                f"\n{len(submitter.latencies)} submits at {SUBMITS_PER_SECOND}/s: p50"
                f" {percentile(submitter.latencies, 0.5) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
            )
            slowest = sorted(zip(submitter.latencies, submitter.sent_at, strict=True))[-5:]
            began = min(submitter.sent_at)
            print(
                "slowest submits (s, at s):",
                [(round(a, 3), round(b - began, 1)) for a, b in slowest],
            )
            assert p99 < 0.5
            return results

        (few, few_woken, few_subs), (many, many_woken, many_subs) = run(main())
    commands.close()
    print(
        f"Redis commands/s while waiting: {few:.0f} with 200 waiters, {many:.0f} with 2000"
        f" ({(many - few) / 1800:.3f} more per extra waiter); pub/sub connections {few_subs},"
        f" {many_subs}; all answered {few_woken:.2f} s / {many_woken:.2f} s after the resume"
    )
    assert few_subs == many_subs == 1
    # Polling would add about ten reads a second per waiter; one subscription adds none.
    assert many < few * 1.5 + 50
    assert many_woken < 15


@pytest.mark.alone
def test_past_the_most_waiters_a_wait_is_answered_at_once(redis_url: str, tmp_path: Path) -> None:
    env = service_env(redis_url, CONVEYOR_MAX_WAITERS="100")
    with Api(env, tmp_path) as api:

        async def main() -> None:
            ids = await submit_held(api.port, "held", 150)
            started = time.monotonic()
            async with waiting(api.port, ids) as tasks:
                await asyncio.sleep(1.5)
                done = [task for task in tasks if task.done()]
                assert len(done) == 50
                for status, view, at in (task.result() for task in done):
                    assert (status, view["status"]) == (200, "queued")
                    assert at - started < 1.5
                print(f"\n150 waits, at most 100: {len(done)} answered at once, queued")

        run(main())


def test_waiters_are_answered_when_the_subscription_was_lost_meanwhile(
    redis_of_its_own: str, tmp_path: Path
) -> None:
    env = service_env(redis_of_its_own)
    client = redis.Redis.from_url(redis_of_its_own)
    with (
        Api(env, tmp_path) as api,
        Conveyor(["worker", "--queues", "held"], env, tmp_path),
    ):

        async def main() -> None:
            ids = await submit_held(api.port, "held", 20)
            async with waiting(api.port, ids) as tasks:
                await asyncio.sleep(1.0)
                killed = client.client_kill_filter(_type="pubsub")
                assert killed == 1
                reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
                writer.write(post_json("/queues/held/resume", b""))
                assert (await read_answer(reader))[0] == 200
                writer.close()
                resumed = time.monotonic()
                answers = await asyncio.wait_for(asyncio.gather(*tasks), 15)
            assert {view["status"] for _, view, _ in answers} == {"succeeded"}
            took = max(at for _, _, at in answers) - resumed
            print(f"\nsubscription killed; 20 waiters answered {took:.2f} s after the resume")
            assert took < 5

        run(main())
    client.close()
