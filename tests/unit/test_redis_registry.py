"""The Redis backend's registry of queue names, beyond the contracts, on fakeredis: what a
lookup costs, jobs stored before ids carried their queue's tag, and what forgetting a queue
leaves behind."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import attrs
import fakeredis

from adapters.redis_queue import RedisConnection, redis_backend
from adapters.redis_queue.core import RedisCore
from adapters.redis_queue.keys import RegistryKeys
from domain.jobs import JobStatus, new_job_id, queue_tag
from domain.ports import Backend, QueuePauser
from tests.contracts.builders import enqueue, new_job, stored

PREFIX = "p"


def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer(version=(7,))


def backend_on(redis_server: fakeredis.FakeServer, **options: Any) -> Backend:
    client = fakeredis.FakeAsyncRedis(server=redis_server, version=(7,))
    return redis_backend(client, prefix=PREFIX, **options)


def core_of(backend: Backend) -> RedisCore:
    assert isinstance(backend.connection, RedisConnection)
    return backend.connection.core


class Counted:
    """Counts the round trips and commands a backend's core sends."""

    def __init__(self, core: RedisCore) -> None:
        self.round_trips = 0
        self.commands = 0
        client, pipeline = core.client, core.pipeline
        execute = client.execute_command

        async def counted_command(*args: Any, **options: Any) -> Any:
            self.round_trips += 1
            self.commands += 1
            return await execute(*args, **options)  # type: ignore[no-untyped-call]

        async def counted_pipeline(build: Callable[[Any], None]) -> list[Any]:
            self.round_trips += 1
            sizes: list[int] = []

            def counting(pipe: Any) -> None:
                build(pipe)
                sizes.append(len(pipe.command_stack))

            answer = await pipeline(counting)
            self.commands += sizes[-1]
            return answer

        client.execute_command = counted_command  # type: ignore[method-assign]
        core.pipeline = counted_pipeline  # type: ignore[method-assign]


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def test_a_job_is_read_in_two_round_trips_among_many_queues_then_in_one() -> None:
    async def scenario() -> None:
        redis_server = server()
        backend = backend_on(redis_server)
        jobs = [attrs.evolve(new_job(queue=f"q{n}"), id=new_job_id(f"q{n}")) for n in range(300)]
        for job in jobs:
            await enqueue(backend.submitter, job)
        reader = backend_on(redis_server)  # another process: nothing cached
        # Its first read also checks, once, for names an older Conveyor left to adopt.
        await stored(reader.store, jobs[0].id)
        counted = Counted(core_of(reader))
        assert (await stored(reader.store, jobs[123].id)).queue == "q123"
        assert (counted.round_trips, counted.commands) == (2, 2)  # its tag's queues, the job
        assert (await stored(reader.store, jobs[123].id)).queue == "q123"
        assert (counted.round_trips, counted.commands) == (3, 3)  # the tag is remembered
        situation = await reader.store.situation(jobs[123].id)
        assert situation is not None
        assert counted.commands == 4  # the job and its queue's state, in one script
        assert await reader.store.get(new_job_id("nowhere")) is None
        assert counted.commands == 6  # no queue has its tag; none holds ids without theirs
        await reader.connection.close()
        await backend.connection.close()

    run(scenario)


def test_jobs_of_a_deployment_from_before_tags_are_found_once_a_process_starts() -> None:
    async def scenario() -> None:
        redis_server = server()
        older = backend_on(redis_server)
        legacy = new_job(queue="mail")  # a uuid4 id, as Conveyor made them before
        await enqueue(older.submitter, legacy)
        keys = RegistryKeys.of(PREFIX)
        raw = core_of(older).client
        await raw.delete(keys.tags, keys.touched, keys.legacy, keys.generation)  # no registry
        await older.connection.close()
        upgraded = backend_on(redis_server)
        assert (await stored(upgraded.store, legacy.id)).queue == "mail"
        names = await raw.hget(keys.tags, queue_tag("mail"))
        assert names == b"mail"
        await upgraded.connection.close()

    run(scenario)


def test_resuming_and_forgetting_a_queue_leave_no_key_of_it_behind() -> None:
    async def scenario() -> None:
        redis_server = server()
        backend = backend_on(redis_server, max_queues=10, sweep_interval=0.0, queue_grace=0.0)
        assert isinstance(backend.pauser, QueuePauser)
        await backend.pauser.resume("never-paused")
        await backend.pauser.pause("junk")
        await backend.pauser.resume("junk")
        job = new_job(queue="kept")
        await enqueue(backend.submitter, job)
        forgotten = await core_of(backend).registry.sweep()
        assert list(forgotten) == ["junk"]
        raw = core_of(backend).client
        left = sorted(str(k) for k in await raw.keys("*"))
        assert not [k for k in left if "junk" in k or "never-paused" in k], left
        assert await core_of(backend).registry.names() == {"kept"}
        assert (await stored(backend.store, job.id)).status is JobStatus.QUEUED
        await backend.connection.close()

    run(scenario)


def test_a_name_used_lately_is_not_forgotten_though_its_queue_is_idle() -> None:
    async def scenario() -> None:
        backend = backend_on(server(), max_queues=10, sweep_interval=0.0, queue_grace=60.0)
        assert isinstance(backend.pauser, QueuePauser)
        await backend.pauser.pause("junk")
        await backend.pauser.resume("junk")
        assert list(await core_of(backend).registry.sweep()) == []
        assert await core_of(backend).registry.names() == {"junk"}
        await backend.connection.close()

    run(scenario)


def test_only_one_sweep_runs_per_interval_across_processes() -> None:
    async def scenario() -> None:
        redis_server = server()
        one = backend_on(redis_server, sweep_interval=30.0, queue_grace=0.0)
        other = backend_on(redis_server, sweep_interval=30.0, queue_grace=0.0)
        assert isinstance(one.pauser, QueuePauser)
        await one.pauser.pause("a")
        await one.pauser.resume("a")
        await one.pauser.pause("b")
        await one.pauser.resume("b")
        assert sorted(await core_of(one).registry.sweep()) == ["a", "b"]
        await one.pauser.pause("c")
        await one.pauser.resume("c")
        assert list(await core_of(other).registry.sweep()) == []  # the lock is held
        assert await core_of(other).registry.names() == {"c"}
        for backend in (one, other):
            await backend.connection.close()

    run(scenario)
