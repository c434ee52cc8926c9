"""The job service: submitting, reading, explaining and cancelling jobs, and managing queues,
on the memory backend (and on backends without some of its roles)."""

from __future__ import annotations

import asyncio
from typing import Any

import attrs
import pytest

from adapters.memory import memory_backend
from domain.errors import (
    IdempotencyConflictError,
    InvalidJobError,
    JobNotFoundError,
    UnknownJobTypeError,
    UnsupportedOperationError,
)
from domain.job_service import JobService
from domain.job_types.registry import default_registry
from domain.jobs import JobStatus
from domain.ports import Backend, ClaimRequest, JobQuery
from domain.settlement import Ending
from domain.submission import Submission
from domain.timeline import EventKind, WaitingKind
from domain.waiting import Waiters
from tests.fakes import FakeClock, RecordingEmailSender
from tests.unit.backends import NoDeadlines, leases_of

REPORT = Submission(type="report", payload={"name": "r", "rows": 1})


class World:
    """The job service on the memory backend, as the container wires it."""

    def __init__(self, **without: Any) -> None:
        self.clock = FakeClock()
        self.backend = memory_backend(self.clock)
        registry = default_registry(RecordingEmailSender())
        self.service = JobService(attrs.evolve(self.backend, **without), registry, self.clock)

    async def stored(self) -> int:
        return len((await self.backend.store.list_jobs(JobQuery(limit=500))).jobs)

    async def succeed_next(self) -> None:
        """Claim the next job and settle it succeeded, as a worker would."""
        request = ClaimRequest(queues=("default",), worker_id="w", limit=1, lease_seconds=30)
        [lease] = await leases_of(self.backend).claim(request)
        await leases_of(self.backend).settle(lease, Ending.succeeded(None))


def test_submit_stores_a_queued_job_with_the_types_defaults() -> None:
    world = World()

    async def scenario() -> None:
        payload = {"name": "r", "rows": 3}
        accepted = await world.service.submit(Submission(type="report", payload=payload))
        job = await world.service.get(accepted.job.id)
        assert accepted.created
        assert job.status is JobStatus.QUEUED
        assert (job.payload, job.max_attempts) == ({**payload, "seconds": 2.0}, 3)

    asyncio.run(scenario())


def test_submit_refuses_an_unknown_type_and_stores_nothing() -> None:
    world = World()

    async def scenario() -> None:
        with pytest.raises(UnknownJobTypeError):
            await world.service.submit(Submission(type="os.system", payload={}))
        assert await world.stored() == 0

    asyncio.run(scenario())


def test_get_of_an_unknown_id_raises_not_found() -> None:
    with pytest.raises(JobNotFoundError):
        asyncio.run(World().service.get("f" * 32))


def test_a_batch_is_validated_whole_and_names_each_bad_item_by_index() -> None:
    world = World()

    async def scenario() -> None:
        with pytest.raises(InvalidJobError) as caught:
            await world.service.submit_batch(
                [
                    REPORT,
                    Submission(type="report", payload={"rows": -1}),
                    REPORT,
                    Submission(type="nope", payload={}),
                ]
            )
        paths = {e.path for e in caught.value.errors}
        assert {"[1].payload.name", "[1].payload.rows", "[3].type"} <= paths
        assert not any(p.startswith(("[0]", "[2]")) for p in paths)
        assert await world.stored() == 0
        accepted = await world.service.submit_batch([REPORT, REPORT])
        assert [a.created for a in accepted] == [True, True]
        assert len({a.job.id for a in accepted}) == 2

    asyncio.run(scenario())


def test_a_repeat_under_an_idempotency_key_answers_the_first_job() -> None:
    world = World()

    async def scenario() -> None:
        first = await world.service.submit(REPORT, idempotency_key="order-1")
        again = await world.service.submit(
            Submission(type="report", payload={"rows": 1, "name": "r"}), idempotency_key="order-1"
        )
        assert (first.created, again.created) == (True, False)
        assert again.job.id == first.job.id
        with pytest.raises(IdempotencyConflictError):
            await world.service.submit(
                Submission(type="report", payload={"name": "other", "rows": 1}),
                idempotency_key="order-1",
            )
        assert await world.stored() == 1

    asyncio.run(scenario())


def test_details_explain_a_waiting_job_and_wait_returns_once_it_ends() -> None:
    world = World()

    async def scenario() -> None:
        later = Submission(type="dummy", payload={"mode": "succeed"}, delay=10)
        job = (await world.service.submit(later)).job
        details = await world.service.details(job.id)
        assert details.waiting_reason is not None
        assert details.waiting_reason.kind is WaitingKind.SCHEDULED
        assert [e.kind for e in details.timeline] == [EventKind.SUBMITTED, EventKind.SCHEDULED]
        now = await world.service.submit(Submission(type="dummy", payload={"mode": "succeed"}))

        async def finish() -> None:
            await asyncio.sleep(0.2)
            await world.succeed_next()

        runner = asyncio.create_task(finish())
        loop = asyncio.get_running_loop()
        started = loop.time()
        waited = await world.service.details(now.job.id, wait=5)
        assert waited.job.status is JobStatus.SUCCEEDED
        assert loop.time() - started < 2
        await runner

    asyncio.run(scenario())


def test_a_wait_is_woken_by_the_watcher_not_by_reading_the_job_over_and_over() -> None:
    world = World()
    reads = 0
    store = world.backend.store
    real_get = store.get

    async def counted_get(job_id: str) -> Any:
        nonlocal reads
        reads += 1
        return await real_get(job_id)

    async def scenario() -> None:
        job = (
            await world.service.submit(Submission(type="dummy", payload={"mode": "succeed"}))
        ).job
        store.get = counted_get  # type: ignore[method-assign]

        async def finish() -> None:
            await asyncio.sleep(1.0)
            await world.succeed_next()

        runner = asyncio.create_task(finish())
        waited = await world.service.wait(job.id, 5)
        await runner
        assert waited.status is JobStatus.SUCCEEDED
        assert reads == 2  # before waiting, and once woken

    asyncio.run(scenario())


def test_past_the_most_waits_a_reader_is_answered_at_once_and_a_wait_ended_frees_its_place() -> (
    None
):
    clock = FakeClock()
    backend = memory_backend(clock)
    waiters = Waiters(limit=2)
    service = JobService(backend, default_registry(RecordingEmailSender()), clock, waiters=waiters)

    async def scenario() -> None:
        job = (await service.submit(Submission(type="dummy", payload={"mode": "succeed"}))).job
        loop = asyncio.get_running_loop()
        held = [asyncio.create_task(service.wait(job.id, 0.5)) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert waiters.held == 2
        started = loop.time()
        assert (await service.wait(job.id, 5)).status is JobStatus.QUEUED
        assert loop.time() - started < 0.1  # answered at once, as the job is
        await asyncio.gather(*held)
        assert waiters.held == 0
        started = loop.time()
        await service.wait(job.id, 0.3)  # room again: this one waits
        assert loop.time() - started >= 0.25

    asyncio.run(scenario())


def test_waits_woken_together_read_their_jobs_a_few_at_a_time_and_all_are_answered() -> None:
    """A notice that wakes many waits lets `reads_at_once` of them read their job at once:
    the rest wait their turn off the event loop's ready queue, where a submit would queue
    behind all of them."""
    clock = FakeClock()
    backend = memory_backend(clock)
    waiters = Waiters(limit=100, reads_at_once=3)
    service = JobService(backend, default_registry(RecordingEmailSender()), clock, waiters=waiters)
    store = backend.store
    real_get = store.get
    reading = most = 0

    async def slow_get(job_id: str) -> Any:
        nonlocal reading, most
        reading += 1
        most = max(most, reading)
        await asyncio.sleep(0.01)  # a round trip
        reading -= 1
        return await real_get(job_id)

    async def scenario() -> None:
        submitted = await service.submit_batch(
            [Submission(type="dummy", payload={"mode": "succeed"})] * 20
        )
        ids = [accepted.job.id for accepted in submitted]
        waits = [asyncio.create_task(service.wait(job_id, 5)) for job_id in ids]
        await asyncio.sleep(0.05)  # every wait read its job once, and waits
        store.get = slow_get  # type: ignore[method-assign]
        assert backend.leases is not None
        request = ClaimRequest(queues=("default",), worker_id="w1", limit=20, lease_seconds=60)
        leases = await backend.leases.claim(request)
        for lease in leases:  # one notice each, all in one go
            await backend.leases.settle(lease, Ending.succeeded(None))
        answers = await asyncio.wait_for(asyncio.gather(*waits), 5)
        assert {job.status for job in answers} == {JobStatus.SUCCEEDED}
        assert most == 3

    asyncio.run(scenario())


def test_without_a_watcher_a_wait_reads_the_job_less_and_less_often() -> None:
    world = World(watcher=None)
    reads = 0
    store = world.backend.store
    real_get = store.get

    async def counted_get(job_id: str) -> Any:
        nonlocal reads
        reads += 1
        return await real_get(job_id)

    async def scenario() -> None:
        job = (
            await world.service.submit(Submission(type="dummy", payload={"mode": "succeed"}))
        ).job
        store.get = counted_get  # type: ignore[method-assign]
        assert (await world.service.wait(job.id, 3)).status is JobStatus.QUEUED
        # 0.1 s, growing by half up to 1 s: about ten reads in 3 s, not thirty.
        assert 5 <= reads <= 12

    asyncio.run(scenario())


# -- roles a backend lacks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "call", "capability"),
    [
        ("pauser", lambda s: s.pause("default"), "pause"),
        ("pauser", lambda s: s.resume("default"), "pause"),
        ("control", lambda s: s.cancel("0" * 32), "cancel"),
        ("control", lambda s: s.retry("0" * 32), "cancel"),
        ("monitor", lambda s: s.queues(), "queue_stats"),
    ],
)
def test_what_needs_a_role_the_backend_lacks_is_refused_naming_it(
    role: str, call: Any, capability: str
) -> None:
    world = World(**{role: None})

    with pytest.raises(UnsupportedOperationError) as refused:
        asyncio.run(call(world.service))

    assert refused.value.capability == capability


def test_a_backend_without_a_monitor_still_explains_a_waiting_job() -> None:
    world = World(monitor=None)

    async def scenario() -> None:
        job = (await world.service.submit(REPORT)).job
        details = await world.service.details(job.id)
        assert details.waiting_reason is not None

    asyncio.run(scenario())


def test_a_deadline_needs_a_submitter_that_enforces_one_and_nothing_is_stored_without() -> None:
    world = World()
    limited = attrs.evolve(world.backend, submitter=NoDeadlines(world.backend.submitter))
    service = JobService(limited, default_registry(RecordingEmailSender()), world.clock)

    async def scenario() -> None:
        with pytest.raises(UnsupportedOperationError) as refused:
            await service.submit_batch([REPORT, attrs.evolve(REPORT, deadline=60)])
        assert refused.value.capability == "deadlines"
        assert await world.stored() == 0
        assert (await service.submit(REPORT)).created

    asyncio.run(scenario())


def test_every_role_of_the_memory_backend_is_named() -> None:
    backend: Backend = World().backend
    assert set(backend.roles()) == {"cancel", "queue_stats", "pause", "worker_claims"}
