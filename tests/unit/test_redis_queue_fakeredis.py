"""What the Redis backend does beyond the contracts, shown on fakeredis (no server needed)."""

from __future__ import annotations

import asyncio
from typing import Any, Final

import attrs
import pytest
from redis.asyncio.client import Pipeline

from adapters.redis_queue import RedisConnection, calls, scripts
from adapters.redis_queue.calls import evalsha
from adapters.redis_queue.core import Build
from adapters.redis_queue.keys import unique_digest
from adapters.redis_queue.limits import LimitArgs
from domain.errors import AdmissionRefusedError
from domain.jobs import JobError, JobStatus
from domain.limits import FlowLimits, RateLimit
from domain.ports import AdmissionPolicy, LeaseQueue, NewJob
from domain.settlement import Ending
from tests.contracts.base import BackendFactory, BackendOptions, Rig, scenario
from tests.contracts.builders import FOREVER, claim, claim_one, enqueue, new_job
from tests.unit.test_contracts_redis_fakeredis import FakeRedisFactory

S = JobStatus
BOOM: Final = JobError("boom", "ValueError")


@pytest.fixture
def backend_factory() -> BackendFactory:
    return FakeRedisFactory()


class TestRedisOnFakeRedis:
    @scenario(LeaseQueue)
    async def test_scripts_the_server_lost_are_loaded_again(self, rig: Rig) -> None:
        assert isinstance(rig.factory, FakeRedisFactory)
        flusher = rig.factory.client()
        try:
            job = new_job()
            await enqueue(rig.submitter, job)  # a pipelined script call
            await flusher.script_flush()
            lease = await claim_one(rig.leases)  # a single script call
            await flusher.script_flush()
            assert await rig.leases.renew([lease], FOREVER) == {job.id}  # pipelined again
            await flusher.script_flush()
            assert await rig.leases.settle(lease, Ending.succeeded("ok")) == "succeeded"
        finally:
            await flusher.aclose()

    @scenario()
    async def test_scripts_lost_in_the_middle_of_a_pipeline_run_once_each(self, rig: Rig) -> None:
        """Scripts flushed while a pipeline runs (another connection reloading them after a
        restart): the script before ran and is not run again, the one after is run once."""
        connection = rig.backend.connection
        assert isinstance(connection, RedisConnection)
        core = connection.core
        registry = core.registry

        def build(pipe: Pipeline) -> None:
            evalsha(pipe, registry.register([[("alpha", False)]]))
            pipe.script_flush()
            evalsha(pipe, registry.register([[("beta", False)]]))

        await core.pipeline(build)
        # REGISTER counts its calls in the generation: two calls, each run once.
        assert await core.client.get(registry.keys.generation) == b"2"
        assert await core.client.smembers(registry.keys.queues) == {b"alpha", b"beta"}

    @scenario()
    async def test_verify_warns_when_the_server_refuses_config(self, rig: Rig) -> None:
        assert isinstance(rig.backend.connection, RedisConnection)
        warnings = await rig.backend.connection.verify()  # fakeredis has no CONFIG command
        assert len(warnings) == 1
        assert "could not check" in warnings[0]
        assert "maxmemory-policy" in warnings[0]

    @scenario(options=BackendOptions(admission=AdmissionPolicy(max_memory=10**12, retry_after=3.0)))
    async def test_a_memory_limit_a_server_cannot_report_refuses_new_jobs_and_verify_says_so(
        self, rig: Rig
    ) -> None:
        """fakeredis has no INFO: the limit cannot be checked, so nothing is admitted."""
        job = new_job()
        with pytest.raises(AdmissionRefusedError) as refusal:
            await rig.submitter.submit([NewJob(job=job)])
        assert (refusal.value.queue, refusal.value.retry_after) == (None, 3.0)
        assert "INFO" in refusal.value.reason
        assert await rig.store.get(job.id) is None
        warnings = await rig.backend.connection.verify()
        assert any("memory cannot be checked" in w for w in warnings), warnings

    @scenario(LeaseQueue)
    async def test_settlements_made_in_one_tick_share_one_round_trip_one_script_call_per_queue(
        self, rig: Rig
    ) -> None:
        connection = rig.backend.connection
        assert isinstance(connection, RedisConnection)
        jobs = [new_job(queue="mail" if n % 2 else "sms", n=n) for n in range(20)]
        for job in jobs:
            await enqueue(rig.submitter, job)
        leases = [
            *await claim(rig.leases, ["mail"], limit=10),
            *await claim(rig.leases, ["sms"], limit=10),
        ]
        assert len(leases) == 20
        sent: list[list[tuple[str, str]]] = []
        pipeline = connection.core._pipeline  # every round trip of batched calls

        async def recorded(
            build: Build, *, wait: bool, in_place: bool = False
        ) -> tuple[list[Any], list[int] | None]:
            def build_and_record(pipe: Pipeline) -> None:
                build(pipe)
                sent.append([(str(args[0]), str(args[1])) for args, _ in pipe.command_stack])

            return await pipeline(build_and_record, wait=wait, in_place=in_place)

        setattr(connection.core, "_pipeline", recorded)  # noqa: B010 - one instance only
        endings = [Ending.succeeded(n) if n % 3 else Ending.failed(BOOM, 60.0) for n in range(20)]
        statuses = await asyncio.gather(
            *(rig.leases.settle(lease, end) for lease, end in zip(leases, endings, strict=True))
        )
        assert statuses == [S.SUCCEEDED if n % 3 else S.FAILED for n in range(20)]
        assert sent == [[("EVALSHA", scripts.SETTLE.sha), ("EVALSHA", scripts.SETTLE.sha)]]

    @scenario()
    async def test_a_unique_key_naming_a_job_that_is_gone_is_free(self, rig: Rig) -> None:
        assert isinstance(rig.factory, FakeRedisFactory)
        connection = rig.backend.connection
        assert isinstance(connection, RedisConnection)
        keys = connection.core.keys("default")
        first = attrs.evolve(new_job(n=0), unique_key="k")
        second = attrs.evolve(new_job(n=1), unique_key="k")
        await enqueue(rig.submitter, first)
        client = rig.factory.client()
        try:
            held = f"{keys.base}unique:{unique_digest('k')}"
            assert await client.get(held) == first.id.encode()
            await client.delete(keys.job(first.id))  # lost, e.g. by hand
            await enqueue(rig.submitter, second)
            assert await client.get(held) == second.id.encode()
        finally:
            await client.aclose()


ONE_DUMMY_AT_ONCE: Final = BackendOptions(limits=FlowLimits.of({}, {"dummy": 1}))


class TestFlowLimitsOnFakeRedis:
    @scenario(LeaseQueue, options=ONE_DUMMY_AT_ONCE)
    async def test_jobs_held_back_by_a_limit_since_lifted_go_back_in_line_at_recover(
        self, rig: Rig
    ) -> None:
        jobs = [new_job(n=n) for n in range(3)]
        for job in jobs:
            await enqueue(rig.submitter, job)
        assert len(await claim(rig.leases, limit=10)) == 1
        assert await claim(rig.leases, limit=10) == []  # the other two are set aside
        assert isinstance(rig.factory, FakeRedisFactory)
        async with rig.factory.open() as unlimited:  # the same server, started without limits
            assert unlimited.leases is not None
            await unlimited.leases.recover(["default"])
            claimed = await claim(unlimited.leases, limit=10)
        assert [lease.job_id for lease in claimed] == [jobs[1].id, jobs[2].id]

    @scenario(LeaseQueue, options=ONE_DUMMY_AT_ONCE)
    async def test_a_claim_held_back_by_a_rate_says_when_to_look_again(self, rig: Rig) -> None:
        connection = rig.backend.connection
        assert isinstance(connection, RedisConnection)
        core = connection.core
        rated = LimitArgs.of(core.prefix, FlowLimits.of({"dummy": RateLimit(1, 0.8)}, {}))
        for n in range(2):
            await enqueue(rig.submitter, new_job(n=n, type="dummy"))
        keys = core.keys("default")
        call = calls.claim(
            keys,
            limit=10,
            lease_ms=60_000,
            worker_id="w",
            retention=core.retention,
            limits=rated,
        )
        first, _ = await core.run(call)
        second, wake_in = await core.run(call)
        assert (len(first), len(second)) == (1, 0)
        assert 700 <= wake_in <= 800  # ms until the rate allows the next start
