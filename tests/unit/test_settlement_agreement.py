"""Settling an attempt stores the same job on every backend, and what the domain says.

The Redis backend settles attempts in Lua (`adapters/redis_queue/lua/lib/decide.lua`, a
rendering of `domain.settlement.decide`). Hypothesis draws how an attempt ends and the job
it ends (attempts, max attempts, deadline, cancel request, progress); the same active job is
set up on the memory backend (the reference) and on the Redis backend, settled with the same
`Ending` through `LeaseQueue.settle` (or left to lapse and settled by `recover`), and each
stored job is compared field by field with the others and with `settle_job`.

Here on fakeredis (Lua through lupa); `tests/integration/test_settlement_agreement.py` adds a
real Redis. Times are drawn with margins of an hour or more, far beyond the test's own
duration, so the backends' clocks reading a few ms apart cannot change a decision.
"""

from __future__ import annotations

import abc
import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import attrs
import fakeredis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.memory import MemoryState, memory_roles
from adapters.redis_queue import redis_backend
from adapters.redis_queue.codec import to_micros
from adapters.redis_queue.keys import QueueKeys
from adapters.system_clock import SystemClock
from domain.jobs import AttemptOutcome, ErrorKind, Job, JobError, JobStatus, JSONValue, Lease
from domain.ports import Backend, ClaimRequest, LeaseQueue, store_new
from domain.settlement import FAILURES, Ending, settle_job

O = AttemptOutcome  # noqa: E741
S = JobStatus
HOUR: Final = 3600.0
LAPSING_LEASE: Final = 0.05  # seconds: the lease of an attempt left to lapse
RETRY_AT_TOLERANCE: Final = timedelta(seconds=5)
EXAMPLES: Final = 150


# -- the drawn cases ------------------------------------------------------------------------


@attrs.frozen
class Case:
    """An active job, and how its attempt ends (None: its lease lapses)."""

    ending: Ending | None
    attempts: int  # counted so far, the ending one included
    max_attempts: int
    deadline_in: float | None  # seconds from now
    cancel_requested: bool
    progress: int | None

    @property
    def settled_as(self) -> Ending:
        return self.ending if self.ending is not None else Ending.lease_expired()


_json: st.SearchStrategy[JSONValue] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)

# Retry delays: none known, due at once (zero or less), soon (well before any future
# deadline drawn), or long after it.
_retry_in = st.one_of(
    st.none(),
    st.just(0.0),
    st.floats(-HOUR, -0.001),
    st.floats(1.0, HOUR),
    st.floats(3 * 24 * HOUR, 30 * 24 * HOUR),
)
# Deadlines: none, passed an hour or more ago, or two hours or more ahead.
_deadline_in = st.one_of(st.none(), st.floats(-48 * HOUR, -HOUR), st.floats(2 * HOUR, 48 * HOUR))


@st.composite
def _errors(draw: st.DrawFn, outcome: AttemptOutcome) -> JobError:
    kind = ErrorKind.ERROR if outcome is O.FAILED else ErrorKind(outcome.value)
    return JobError(
        message=draw(st.text(max_size=300)),
        type=draw(st.text(min_size=1, max_size=30)),
        kind=kind,
        traceback=draw(st.none() | st.text(max_size=100)),
        exit_code=draw(st.none() | st.integers(-255, 255)),
        signal=draw(st.none() | st.sampled_from(["SIGKILL", "SIGSEGV"])),
    )


@st.composite
def _endings(draw: st.DrawFn) -> Ending | None:
    if draw(st.integers(0, 9)) == 9:
        return None  # the lease lapses (one case in ten; shrinking leads away from it)
    outcome = draw(st.sampled_from(AttemptOutcome))
    retry_in = draw(_retry_in)
    if outcome is O.SUCCEEDED:
        return Ending(outcome=outcome, result=draw(_json), retry_in=retry_in)
    if outcome in FAILURES:
        return Ending(outcome=outcome, error=draw(_errors(outcome)), retry_in=retry_in)
    return Ending(outcome=outcome, retry_in=retry_in)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    return Case(
        ending=draw(_endings()),
        attempts=draw(st.integers(1, 5)),
        max_attempts=draw(st.integers(1, 5)),
        deadline_in=draw(_deadline_in),
        cancel_requested=draw(st.booleans()),
        progress=draw(st.none() | st.integers(0, 100)),
    )


# -- the backends ---------------------------------------------------------------------------


class Backing(abc.ABC):
    """One backend to settle the case on, and how to give an active job a deadline (the
    ports cannot: a deadline is set when a job is submitted, and a passed one would expire
    the job before it could be claimed)."""

    name: str
    backend: Backend

    @abc.abstractmethod
    async def plant_deadline(self, job: Job, deadline: datetime) -> None: ...


class MemoryBacking(Backing):
    name = "memory"

    def __init__(self) -> None:
        self.state = MemoryState(
            SystemClock(), result_ttl=HOUR, dead_ttl=HOUR, idempotency_ttl=HOUR, admission=None
        )
        self.backend = memory_roles(self.state)

    async def plant_deadline(self, job: Job, deadline: datetime) -> None:
        self.state.jobs[job.id] = attrs.evolve(self.state.jobs[job.id], deadline=deadline)


class RedisBacking(Backing):
    def __init__(self, name: str, client: redis.asyncio.Redis, prefix: str) -> None:
        self.name = name
        self.client = client
        self.prefix = prefix
        self.backend = redis_backend(client, prefix=prefix)

    async def plant_deadline(self, job: Job, deadline: datetime) -> None:
        key = QueueKeys.of(self.prefix, job.queue).job(job.id)
        await self.client.hset(key, "deadline", str(to_micros(deadline)))


@asynccontextmanager
async def fakeredis_backing(server: fakeredis.FakeServer) -> AsyncIterator[Backing]:
    client = fakeredis.FakeAsyncRedis(server=server, version=(7,))
    backing = RedisBacking("redis on fakeredis", client, "agree")
    try:
        yield backing
    finally:
        await backing.backend.connection.close()


# -- one case on one backend ----------------------------------------------------------------


@attrs.frozen
class Seen:
    """What a backend stored for the settled job, in the terms compared."""

    backend: str
    status: JobStatus | None  # what `settle` answered (the stored status for a lapse)
    stored: Job
    first_in_line: bool | None  # a queued job: is it claimed next? (None: not queued)
    expected: Job  # `settle_job` on the job as this backend held it before settling
    head: bool  # the settlement puts a queued job first in line


def _job(case: Case, queue: str, n: int) -> Job:
    job = Job.submitted(
        id=uuid.uuid4().hex,
        type="dummy",
        payload={"n": n},
        queue=queue,
        max_attempts=case.max_attempts,
        timeout=30.0,
        now=datetime.now(UTC),
    )
    return attrs.evolve(job, attempts=case.attempts - 1) if n == 0 else job


async def _claim(leases: LeaseQueue, queue: str, lease_seconds: float) -> Lease:
    (lease,) = await leases.claim(
        ClaimRequest(queues=(queue,), worker_id="w1", limit=1, lease_seconds=lease_seconds)
    )
    return lease


async def settle_on(backing: Backing, case: Case) -> Seen:
    backend = backing.backend
    assert backend.leases is not None
    assert backend.control is not None
    queue = f"q{uuid.uuid4().hex[:12]}"
    job = _job(case, queue, 0)
    await store_new(backend.submitter, job)
    lapses = case.ending is None
    lease = await _claim(backend.leases, queue, LAPSING_LEASE if lapses else HOUR)
    assert lease.attempt == case.attempts
    await store_new(backend.submitter, _job(case, queue, 1))  # waits behind it
    if case.progress is not None:
        assert await backend.leases.set_progress(lease, case.progress)
    if case.deadline_in is not None:
        deadline = datetime.now(UTC) + timedelta(seconds=case.deadline_in)
        await backing.plant_deadline(job, deadline)
    if case.cancel_requested:
        await backend.control.cancel(job.id)
    before = await backend.store.get(job.id)
    assert before is not None
    assert before.status is S.ACTIVE
    if lapses:
        await asyncio.sleep(LAPSING_LEASE * 2)
        now = datetime.now(UTC)
        assert await backend.leases.recover([queue]) == 1
        status = None
    else:
        now = datetime.now(UTC)
        status = await backend.leases.settle(lease, case.settled_as)
    expected, settlement = settle_job(before, case.settled_as, now)
    situation = await backend.store.situation(job.id)
    assert situation is not None
    stored = situation.job
    if lapses:
        status = stored.status
    first = None if stored.status is not S.QUEUED else situation.ahead == 0
    return Seen(backing.name, status, stored, first, expected, settlement.head)


# -- comparing ------------------------------------------------------------------------------


def facts_of(job: Job) -> dict[str, Any]:
    """The fields compared, of a job settled once (its history holds that attempt alone)."""
    assert len(job.history) == 1, job.history
    record = job.history[-1]
    return {
        "status": job.status,
        "attempts": job.attempts,
        "error": job.error,
        "progress": job.progress,
        "result": job.result,
        "finished": job.finished_at is not None,
        "retry_at": job.retry_at,
        "record": (record.attempt, record.outcome, record.error),
    }


def _differ(field: str, a: Any, b: Any) -> bool:
    if field == "retry_at" and a is not None and b is not None:
        return bool(abs(a - b) > RETRY_AT_TOLERANCE)
    return bool(a != b)


def check_agreement(case: Case, seen: Sequence[Seen]) -> None:
    """Each backend stored what the domain says, and all stored what the first (the memory
    backend, the reference) stored; every disagreement is listed."""
    reference = seen[0]
    wrong: list[str] = []
    for one in seen:
        got = facts_of(one.stored)
        got["answered"] = one.status
        got["first in line"] = one.first_in_line
        domain = facts_of(one.expected)
        domain["answered"] = one.expected.status
        domain["first in line"] = one.head if one.expected.status is S.QUEUED else None
        ref = facts_of(reference.stored)
        ref["answered"] = reference.status
        ref["first in line"] = reference.first_in_line
        for field, value in got.items():
            for source, said in (("the domain", domain), (reference.backend, ref)):
                if _differ(field, value, said[field]):
                    wrong.append(f"{one.backend}: {field} {value!r}, {source}: {said[field]!r}")
    assert not wrong, "\n".join([f"{case}:", *wrong])


async def agree(case: Case, backings: Sequence[Backing]) -> None:
    seen = [await settle_on(backing, case) for backing in backings]
    check_agreement(case, seen)


# -- the unit twin: memory and fakeredis ----------------------------------------------------

_FAKE_SERVER: Final = fakeredis.FakeServer(version=(7,))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_the_lua_settlement_stores_what_the_domain_and_the_memory_backend_store(
    case: Case,
) -> None:
    async def main() -> None:
        async with AsyncExitStack() as stack:
            fake = await stack.enter_async_context(fakeredis_backing(_FAKE_SERVER))
            await agree(case, [MemoryBacking(), fake])

    asyncio.run(main())
