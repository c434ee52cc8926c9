"""CONVEYOR_MIN_REPLICAS on a real Redis Cluster: 3 primaries with 1 replica each, loopback.

A round trip may write to several primaries; each must confirm its own writes, with a WAIT
on the connection that carried them (WAIT counts what its own connection wrote, on the one
node it reaches). The tests read every replica the moment a call returns, watch each
primary's commands (MONITOR) to see whose connection sent its WAIT, freeze one primary's
replica (SIGSTOP) to see the whole batch refused and then confirmed on a retry with no job
stored twice, and count a worker's unconfirmed settlement in its metrics.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from adapters.redis_client import create_redis
from adapters.redis_queue import redis_backend
from domain.errors import NotReplicatedError
from domain.jobs import JobStatus
from domain.ports import Backend
from domain.submission import Submission
from entrypoints.local_topologies import LocalCluster
from entrypoints.local_topologies.nodes import info
from tests.integration.faults.harness import Pool
from tests.integration.observability.test_metrics import scrape, total
from tests.integration.processes import Api, free_port, service_env, wait_for_job
from tests.integration.test_redis_cluster import spread_queues
from tests.integration.test_replication import service_of, synchronous

pytestmark = pytest.mark.timeout(90)

TIMEOUT_MS = 300
UNREPLICATED = "conveyor_settlements_unreplicated_total"
CAUGHT_UP_WITHIN_S = 10.0


class ReplicatedCluster:
    """A LocalCluster with a replica per primary, and what the tests ask of its nodes."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster

    @property
    def url(self) -> str:
        return self.cluster.url

    def replica_of(self, primary: int) -> int:
        """The port of the replica of the primary on `primary`."""
        for port in self.cluster.replica_ports:
            if int(info(port, "replication").get("master_port", 0)) == primary:
                return port
        raise AssertionError(f"no replica of {primary}")

    @contextlib.contextmanager
    def frozen(self, port: int) -> Iterator[None]:
        """The node on `port` stopped (SIGSTOP) for the block, always resumed, and then
        caught up with its primary."""
        pid = int(info(port, "server")["process_id"])
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)
        self.caught_up(port)

    def caught_up(self, replica: int) -> None:
        primary = int(info(replica, "replication")["master_port"])
        wanted = int(info(primary, "replication")["master_repl_offset"])
        deadline = time.monotonic() + CAUGHT_UP_WITHIN_S
        while True:
            state = info(replica, "replication")
            if state.get("master_link_status") == "up" and (
                int(state.get("slave_repl_offset", 0)) >= wanted
            ):
                return
            assert time.monotonic() < deadline, f"replica {replica} did not catch up"
            time.sleep(0.02)

    def on_replica(self, primary: int, prefix: str, queue: str, job_id: str) -> Any:
        """The job's status as the replica of `primary` has it, read at once."""
        client = redis.Redis(port=self.replica_of(primary), socket_timeout=5)
        try:
            run: Any = client.execute_command  # redis-py's is untyped
            run("READONLY")  # a cluster replica answers reads of its primary's slots
            return client.hget(f"{{{prefix}:{queue}}}:job:{job_id}", "status")
        finally:
            client.close()

    def waits(self, port: int) -> int:
        """WAIT commands the node on `port` ran so far."""
        stats = info(port, "commandstats").get("cmdstat_wait", "calls=0")
        return int(stats.split(",")[0].removeprefix("calls="))


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicatedCluster]:
    base = Path(tmp_path_factory.mktemp("cluster-replicas"))
    with LocalCluster(base, primaries=3, replicas_per_primary=1) as cluster:
        yield ReplicatedCluster(cluster)


@contextlib.asynccontextmanager
async def backend_on(
    cluster: ReplicatedCluster, min_replicas: int, prefix: str | None = None
) -> AsyncIterator[tuple[Backend, str]]:
    prefix = prefix or f"crepl-{uuid.uuid4().hex[:12]}"
    client = create_redis(cluster.url, connect_timeout=1.0, socket_timeout=5.0)
    backend = redis_backend(
        client, prefix=prefix, min_replicas=min_replicas, replica_timeout_ms=TIMEOUT_MS
    )
    try:
        yield backend, prefix
    finally:
        await backend.connection.close()


def one_per_primary(cluster: ReplicatedCluster, prefix: str) -> dict[str, int]:
    """A queue on each primary: name -> its primary's port."""
    return spread_queues(cluster.cluster, prefix, per_primary=1)


def batch_over(queues: dict[str, int]) -> list[Submission]:
    return [Submission(type="dummy", payload={"mode": "succeed"}, queue=name) for name in queues]


@synchronous
async def test_a_batch_over_three_primaries_is_on_every_replica_when_the_submit_returns(
    replicated: ReplicatedCluster,
) -> None:
    async with backend_on(replicated, 1) as (backend, prefix):
        queues = one_per_primary(replicated, prefix)
        for _ in range(5):
            accepted = await service_of(backend).submit_batch(batch_over(queues))
            found = [
                replicated.on_replica(queues[a.job.queue], prefix, a.job.queue, a.job.id)
                for a in accepted
            ]
            assert found == [b"queued"] * len(queues)


class Monitor:
    """MONITOR on one node, from a thread: every command it runs, with its client's address
    and port (a script's own commands show ``lua:``, and are left out)."""

    def __init__(self, port: int) -> None:
        self._client = redis.Redis(port=port, socket_timeout=10)
        self._monitor = self._client.monitor()  # type: ignore[no-untyped-call]
        self._monitor.__enter__()  # on once MONITOR answered OK
        self.seen: list[tuple[str, str]] = []  # (client address, command name)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(redis.RedisError, OSError, ValueError):
            for line in self._monitor.listen():
                address = f"{line['client_address']}:{line['client_port']}"
                self.seen.append((address, str(line["command"]).split()[0]))

    def close(self) -> list[tuple[str, str]]:
        time.sleep(0.2)  # the last lines on their way
        self._monitor.__exit__()
        self._client.close()
        self._thread.join(timeout=5)
        return [(address, name.upper()) for address, name in self.seen if address != "lua:"]


@synchronous
async def test_every_primary_written_confirms_with_a_wait_on_the_connection_that_wrote(
    replicated: ReplicatedCluster,
) -> None:
    async with backend_on(replicated, 1) as (backend, prefix):
        queues = one_per_primary(replicated, prefix)
        jobs = service_of(backend)
        await jobs.submit_batch(batch_over(queues))  # scripts loaded, queues registered
        monitors = {port: Monitor(port) for port in replicated.cluster.primary_ports}
        try:
            await jobs.submit_batch(batch_over(queues))
        finally:
            seen = {port: monitor.close() for port, monitor in monitors.items()}
    for port, commands in seen.items():
        writers = {address for address, name in commands if name == "EVALSHA"}
        waiters = [address for address, name in commands if name == "WAIT"]
        assert writers, (port, commands)  # each primary holds one of the queues
        # One WAIT per connection that wrote, on that connection, after its writes.
        assert sorted(waiters) == sorted(writers), (port, commands)
        for address in writers:
            mine = [name for a, name in commands if a == address]
            assert mine[-1] == "WAIT", (port, address, mine)


@synchronous
async def test_a_redirected_command_runs_once_and_waits_on_the_node_that_ran_it(
    replicated: ReplicatedCluster,
) -> None:
    """A slot moved behind the client's back: its script is answered MOVED, did not run,
    and runs again on the new owner, confirmed by a WAIT there."""
    async with backend_on(replicated, 1) as (backend, prefix):
        queues = one_per_primary(replicated, prefix)
        jobs = service_of(backend)
        await jobs.submit_batch(batch_over(queues))
        moving, home = next(iter(queues.items()))
        # Not where the registry of queue names is: its REGISTER there would add a WAIT.
        registry = replicated.cluster.slot_owner(key_slot(f"{prefix}:queues".encode()))
        away = next(p for p in replicated.cluster.primary_ports if p not in (home, registry))
        slot = key_slot(f"{{{prefix}:{moving}}}".encode())
        replicated.cluster.migrate_slot(slot, away)
        try:
            before = replicated.waits(away)
            (accepted,) = await jobs.submit_batch(
                [Submission(type="dummy", payload={"mode": "succeed"}, queue=moving)]
            )
            assert replicated.waits(away) == before + 1
            assert replicated.on_replica(away, prefix, moving, accepted.job.id) == b"queued"
            assert backend.monitor is not None
            (stats,) = await backend.monitor.queue_stats([moving])
        finally:
            replicated.cluster.migrate_slot(slot, home)
    # Stored once: the first batch's job and this one.
    assert stats.counts[JobStatus.QUEUED] == 2, stats


@synchronous
async def test_a_batch_fails_within_the_timeout_while_one_primarys_replica_is_frozen(
    replicated: ReplicatedCluster,
) -> None:
    async with backend_on(replicated, 1) as (backend, prefix):
        queues = one_per_primary(replicated, prefix)
        jobs = service_of(backend)
        await jobs.submit_batch(batch_over(queues))
        frozen = replicated.replica_of(next(iter(queues.values())))
        with replicated.frozen(frozen):
            started = time.monotonic()
            with pytest.raises(NotReplicatedError) as raised:
                await jobs.submit_batch(batch_over(queues))
            took = time.monotonic() - started
    assert (raised.value.acknowledged, raised.value.required) == (0, 1)
    assert TIMEOUT_MS / 1000 * 0.9 <= took <= TIMEOUT_MS / 1000 + 0.5, took


def test_the_api_answers_a_batch_503_while_a_replica_is_frozen_and_202_once_on_a_retry(
    replicated: ReplicatedCluster, tmp_path: Path
) -> None:
    prefix = f"crepl-api-{uuid.uuid4().hex[:12]}"
    queues = one_per_primary(replicated, prefix)
    env = service_env(
        replicated.url,
        CONVEYOR_KEY_PREFIX=prefix,
        CONVEYOR_MIN_REPLICAS="1",
        CONVEYOR_REPLICA_TIMEOUT_MS=str(TIMEOUT_MS),
    )

    def batch(tag: str) -> dict[str, Any]:
        return {
            "jobs": [
                {
                    "type": "dummy",
                    "payload": {"mode": "succeed"},
                    "queue": name,
                    "idempotency_key": f"{tag}-{name}",
                }
                for name in queues
            ]
        }

    tag = f"k-{uuid.uuid4().hex[:8]}"
    with Api(env, tmp_path) as api, api.client() as client:
        first = client.post("/jobs/batch", json=batch("warm"))
        assert first.status_code == 202, first.text
        with replicated.frozen(replicated.replica_of(next(iter(queues.values())))):
            started = time.monotonic()
            refused = client.post("/jobs/batch", json=batch(tag))
            took = time.monotonic() - started
        again = client.post("/jobs/batch", json=batch(tag))
        listed = {name: client.get(f"/queues/{name}").json()["counts"]["queued"] for name in queues}
    assert refused.status_code == 503, refused.text
    assert refused.json()["type"] == "urn:conveyor:problem:not-replicated"
    assert took < TIMEOUT_MS / 1000 + 1.0, took
    assert again.status_code == 202, again.text
    items = again.json()["jobs"]
    # The refused request stored the jobs; the retry answers them rather than store others.
    assert [(i["created"], i["replayed_by"]) for i in items] == [(False, "idempotency_key")] * len(
        queues
    ), items
    for item, (name, primary) in zip(items, queues.items(), strict=True):
        assert replicated.on_replica(primary, prefix, name, item["id"]) == b"queued"
    assert listed == dict.fromkeys(queues, 2), listed  # the warm-up's job and one more


def test_a_worker_counts_a_settlement_the_frozen_replica_did_not_confirm(
    replicated: ReplicatedCluster, tmp_path: Path
) -> None:
    prefix = f"crepl-w-{uuid.uuid4().hex[:12]}"
    (queue, primary), *_ = one_per_primary(replicated, prefix).items()
    metrics_port = free_port()
    env = service_env(
        replicated.url,
        CONVEYOR_KEY_PREFIX=prefix,
        CONVEYOR_MIN_REPLICAS="1",
        CONVEYOR_REPLICA_TIMEOUT_MS=str(TIMEOUT_MS),
        CONVEYOR_WORKER_QUEUES=queue,
    )
    metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    body = {"type": "dummy", "payload": {"mode": "sleep", "seconds": 1.0}, "queue": queue}
    with (
        Api(env, tmp_path) as api,
        api.client() as client,
        Pool(
            {**env, "CONVEYOR_METRICS_PORT": str(metrics_port)},
            tmp_path,
            processes=1,
            concurrency=1,
            queues=queue,
        ) as pool,
    ):
        pool.wait_children(1)
        confirmed = client.post("/jobs", json={**body, "payload": {"mode": "succeed"}})
        assert confirmed.status_code == 202, confirmed.text
        wait_for_job(client, confirmed.json()["id"], {"succeeded"})
        submitted = client.post("/jobs", json=body)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        wait_for_job(client, job_id, {"active"})
        with replicated.frozen(replicated.replica_of(primary)):
            view = wait_for_job(client, job_id, {"succeeded"})
            # Written on the primary before WAIT gave up: counted once it did.
            deadline = time.monotonic() + 5
            while (counted := total(scrape(metrics), UNREPLICATED)) < 1:
                assert time.monotonic() < deadline, "the shortfall was never counted"
                time.sleep(0.05)
    assert view["status"] == "succeeded", view
    assert counted == 1, counted
