"""How the RQ dispatcher runs an attempt: on a loop it keeps (or its worker made before
forking), without turning it when the attempt never waits, and with its job decoded ahead."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime

import fakeredis
import pytest
import redis

from adapters.rq import dispatcher, loop
from adapters.rq.codec import ATTEMPT, DISPATCHER, SERIALIZER, job_args
from adapters.rq.worker import DispatchJob
from domain.jobs import Job, JobStatus


async def returns(value: int) -> int:
    return value


async def raises() -> None:
    raise ValueError("boom")


def test_rq_attempts_that_never_wait_run_without_turning_the_loop() -> None:
    async def attempt() -> int:
        return os.getpid()

    assert loop.run(attempt()) == os.getpid()


def test_rq_attempts_that_wait_finish_on_the_loop_and_leave_no_task_behind() -> None:
    leftovers: list[asyncio.Task[None]] = []

    async def attempt() -> int:
        leftovers.append(asyncio.get_running_loop().create_task(asyncio.sleep(60)))
        await asyncio.sleep(0.01)
        return 3

    async def fire_and_forget() -> int:
        # Never waits itself, but leaves a task behind on the loop.
        leftovers.append(asyncio.get_running_loop().create_task(asyncio.sleep(60)))
        return 4

    assert loop.run(attempt()) == 3
    assert loop.run(fire_and_forget()) == 4
    assert all(task.cancelled() for task in leftovers)
    assert len(leftovers) == 2


def test_rq_attempt_errors_propagate_from_the_first_step_and_after_waiting() -> None:
    async def fails_later() -> None:
        await asyncio.sleep(0.001)
        raise ValueError("later")

    with pytest.raises(ValueError, match="boom"):
        loop.run(raises())
    with pytest.raises(ValueError, match="later"):
        loop.run(fails_later())
    # The loop was left usable, and not marked running.
    assert loop.run(returns(1)) == 1
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_a_forked_work_horse_runs_on_the_loop_its_worker_made_before_forking() -> None:
    made = loop.prepare_horse_loop()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the horse
        os.close(read)
        try:

            async def attempt() -> bool:
                await asyncio.sleep(0.001)  # runs the inherited loop, too
                return asyncio.get_running_loop() is made

            ok = loop.run(attempt())
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    try:
        answer = os.read(read, 1)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert answer == b"1"
    # The worker itself never runs it: its own attempts get a loop of their own.
    assert loop.current_loop() is not made


def test_the_rehearsal_before_forking_runs_the_machinery_without_touching_redis() -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.1)

    dispatcher.rehearse(unreachable, times=3)  # would raise ConnectionError on any command


def test_the_worker_decodes_the_next_attempt_ahead_with_its_number() -> None:
    stored = Job.submitted(
        id=uuid.uuid4().hex,
        type="dummy",
        payload={"mode": "succeed"},
        queue="default",
        max_attempts=3,
        timeout=30.0,
        now=datetime.now(UTC),
    )
    connection = fakeredis.FakeStrictRedis()
    rq_job = DispatchJob.create(
        dispatcher.execute,
        args=job_args(stored),
        id=stored.id,
        connection=connection,
        serializer=SERIALIZER,
        meta={ATTEMPT: 1},
    )
    rq_job.save()
    fetched = DispatchJob.fetch(stored.id, connection=connection, serializer=SERIALIZER)
    assert isinstance(fetched, DispatchJob)

    fetched.plan_attempt()

    planned = fetched.planned_attempt
    assert planned is not None
    assert (planned.id, planned.status, planned.attempts) == (stored.id, JobStatus.ACTIVE, 2)
    assert planned.payload == stored.payload


def test_the_dispatcher_lives_where_stored_jobs_name_it() -> None:
    assert f"{dispatcher.execute.__module__}.{dispatcher.execute.__qualname__}" == DISPATCHER
