"""The native backend on a real 3-primary Redis Cluster (`LocalCluster`, loopback).

Every contract runs here too, on a prefix of its own, the flow limits' included (their keys
have a slot of their own: see `adapters/redis_queue/permits.py`); a scenario the cluster
cannot play is skipped with its reason (a batch over queues stored all or nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from redis.crc import key_slot

from adapters.redis_client import create_redis
from adapters.redis_cluster import NOT_A_CLUSTER
from adapters.redis_queue import redis_backend
from domain.errors import AdmissionRefusedError, PartialSubmissionError
from domain.jobs import JobStatus
from domain.ports import AdmissionPolicy, LeaseQueue, NewJob, QueueLimits
from domain.settlement import Ending
from entrypoints.local_topologies import LocalCluster
from tests.contracts.all import AllContracts
from tests.contracts.base import BackendFactory, BackendOptions
from tests.contracts.builders import claim, enqueue, enqueue_all, ids_of, new_job
from tests.integration.processes import Api, Conveyor, free_port, service_env, wait_for_job
from tests.integration.test_contracts_redis import RedisFactory

TERMINAL = {"succeeded", "dead", "cancelled", "expired"}


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(Path(tmp_path_factory.mktemp("cluster")), primaries=3) as cluster:
        yield cluster


class ClusterFactory(RedisFactory):
    name = "redis cluster"


class TestRedisClusterBackend(AllContracts):
    @pytest.fixture
    def backend_factory(self, local_cluster: LocalCluster) -> BackendFactory:
        return ClusterFactory(local_cluster.url)


def spread_queues(cluster: LocalCluster, prefix: str, per_primary: int = 2) -> dict[str, int]:
    """Queue names, `per_primary` on each primary of `cluster`: name -> its primary's port."""
    chosen: dict[str, int] = {}
    taken: dict[int, int] = dict.fromkeys(cluster.primary_ports, 0)
    for n in range(1000):
        name = f"q{n}"
        port = cluster.slot_owner(key_slot(f"{{{prefix}:{name}}}".encode()))
        if taken[port] < per_primary:
            taken[port] += 1
            chosen[name] = port
        if all(count == per_primary for count in taken.values()):
            return chosen
    raise AssertionError(f"no spread of queues found: {taken}")


def queue_to_move(cluster: LocalCluster, prefix: str) -> tuple[str, int, int, int]:
    """A queue, its slot, the primary holding it, and another one (where to move it)."""
    (name, source), *_ = spread_queues(cluster, prefix, per_primary=1).items()
    slot = key_slot(f"{{{prefix}:{name}}}".encode())
    return name, slot, source, next(port for port in cluster.primary_ports if port != source)


def print_slot_map(prefix: str, queues: dict[str, int]) -> None:
    for name, port in queues.items():
        print(f"queue {name} -> slot {key_slot(f'{{{prefix}:{name}}}'.encode())} -> node {port}")


def test_jobs_on_six_queues_over_three_primaries_all_succeed_through_api_and_worker(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    queues = spread_queues(local_cluster, prefix)
    print_slot_map(prefix, queues)
    assert len(queues) >= 6
    assert set(queues.values()) == set(local_cluster.primary_ports)
    env = service_env(
        local_cluster.url,
        CONVEYOR_KEY_PREFIX=prefix,
        CONVEYOR_WORKER_QUEUES=",".join(queues),
    )
    with Api(env, tmp_path) as api, Conveyor(["worker"], env, tmp_path), api.client() as client:
        ids: dict[str, str] = {}
        for name in queues:
            body = {"type": "dummy", "payload": {"mode": "succeed", "result": name}, "queue": name}
            response = client.post("/jobs", json=body, headers={"Idempotency-Key": f"k-{name}"})
            assert response.status_code == 202, response.text
            ids[response.json()["id"]] = name
        # One batch over every queue: stored queue by queue, every item answered.
        batch = [
            {"type": "dummy", "payload": {"mode": "succeed", "result": n}, "queue": name}
            for n, name in enumerate(queues)
        ]
        response = client.post("/jobs/batch", json={"jobs": batch})
        assert response.status_code == 202, response.text
        ids |= {
            item["id"]: name for item, name in zip(response.json()["jobs"], queues, strict=True)
        }
        # A repeat under an idempotency key answers the first job, on its own queue.
        first = next(iter(queues))
        again = client.post(
            "/jobs",
            json={"type": "dummy", "payload": {"mode": "succeed", "result": first}, "queue": first},
            headers={"Idempotency-Key": f"k-{first}"},
        )
        assert again.status_code == 202, again.text
        assert (again.json()["id"] in ids, again.json()["replayed"]) == (True, True)
        for job_id, name in ids.items():
            # Long polling: woken by the finish notice published from the queue's primary.
            view = client.get(f"/jobs/{job_id}", params={"wait": 10}).json()
            view = (
                wait_for_job(client, job_id, TERMINAL) if view["status"] not in TERMINAL else view
            )
            assert (view["status"], view["queue"]) == ("succeeded", name), view
        listed = {row["name"] for row in client.get("/queues").json()["queues"]}
        assert set(queues) <= listed
        # Schedules live under their own hash tag, on one primary: a tick makes its job.
        schedule = {
            "name": "tick",
            "every": 1,
            "type": "dummy",
            "payload": {"mode": "succeed"},
            "options": {"queue": first},
        }
        assert client.post("/schedules", json=schedule).status_code == 201
        deadline = time.monotonic() + 15
        while (made := client.get("/schedules/tick").json()["last_job_id"]) is None:
            assert time.monotonic() < deadline, "the schedule never ticked"
            time.sleep(0.1)
        assert wait_for_job(client, made, TERMINAL)["status"] == "succeeded"


def test_a_cluster_url_pointing_at_a_single_server_stops_start_up_with_one_line(
    redis_url: str, tmp_path: Path
) -> None:
    single = urlsplit(redis_url)
    env = service_env(f"redis+cluster://{single.hostname}:{single.port}")
    worker = Conveyor(["worker"], env, tmp_path)
    with worker:
        code = worker.wait(timeout=30)
    output = worker.output()
    assert code != 0, output
    assert "not in cluster mode" in output, output
    assert "Traceback" not in output, output
    api = Conveyor(["api", "--port", str(free_port())], env, tmp_path)
    with api:
        code = api.wait(timeout=30)
    output = api.output()
    assert code != 0, output
    assert output.strip().splitlines()[-1] == f"conveyor: {NOT_A_CLUSTER}", output
    assert "Traceback" not in output, output


def test_a_batch_over_queues_is_stored_queue_by_queue_and_says_what_happened_to_each(
    local_cluster: LocalCluster,
) -> None:
    factory = ClusterFactory(local_cluster.url)
    small = AdmissionPolicy(queues={"small": QueueLimits(max_depth=1)})

    async def scenario() -> None:
        async with factory.open(BackendOptions(admission=small)) as backend:
            submitter = backend.submitter
            assert submitter.traits.atomic_across_queues is False
            batch = [new_job(queue="big", n=0), new_job(queue="small", n=1)]
            batch.append(new_job(queue="small", n=2))  # two: over its limit of one
            batch.append(new_job(queue="big", n=3))
            with pytest.raises(PartialSubmissionError) as partial:
                await submitter.submit([NewJob(job=job) for job in batch])
            stored, errors = partial.value.stored, partial.value.errors
            assert stored == (batch[0].id, None, None, batch[3].id)
            assert [type(e).__name__ if e else None for e in errors] == [
                None,
                "AdmissionRefusedError",
                "AdmissionRefusedError",
                None,
            ]
            assert [await backend.store.get(job.id) is not None for job in batch] == [
                True,
                False,
                False,
                True,
            ]
            # Every part refused: the refusal itself, nothing stored.
            again = [new_job(queue="small", n=4), new_job(queue="small", n=5)]
            with pytest.raises(AdmissionRefusedError):
                await submitter.submit([NewJob(job=job) for job in again])

    asyncio.run(scenario())


def test_a_primary_lost_fails_only_the_calls_whose_queues_it_holds(tmp_path: Path) -> None:
    """Calls of one tick share a round trip; on a cluster each primary's part is answered
    on its own: a batch with a queue on a dead primary stores the rest and says so, and a
    submission batched with one for that queue is stored and answered 202's way."""
    # A cluster of its own, one primary of which dies; a node timeout longer than the test,
    # so that the others go on serving their slots meanwhile.
    with LocalCluster(tmp_path / "cluster", primaries=3, node_timeout_ms=30_000) as cluster:
        factory = ClusterFactory(cluster.url)
        prefix = factory.prefix
        registry = cluster.slot_owner(key_slot(f"{prefix}:queues".encode()))
        queues = spread_queues(cluster, prefix, per_primary=1)
        print_slot_map(prefix, queues)
        alive, doomed = (name for name, port in queues.items() if port != registry)

        async def scenario() -> None:
            # Not `factory.open`: its clean-up would ask the dead primary too.
            backend = redis_backend(factory.client(), prefix=prefix)
            try:
                submitter = backend.submitter
                # Both queues registered while every primary is up.
                await enqueue_all(submitter, [new_job(queue=alive), new_job(queue=doomed)])
                cluster.kill_node(queues[doomed])
                batch = [new_job(queue=alive, n=0), new_job(queue=doomed, n=1)]
                batch.append(new_job(queue=alive, n=2))
                with pytest.raises(PartialSubmissionError) as partial:
                    await submitter.submit([NewJob(job=job) for job in batch])
                assert partial.value.stored == (batch[0].id, None, batch[2].id)
                errors = partial.value.errors
                assert [type(e).__name__ if e else None for e in errors] == [
                    None,
                    "QueueUnavailableError",
                    None,
                ]
                # Two submissions in one tick, one round trip: each its own answer.
                kept, lost = new_job(queue=alive, n=3), new_job(queue=doomed, n=4)
                answers = await asyncio.gather(
                    submitter.submit([NewJob(job=kept)]),
                    submitter.submit([NewJob(job=lost)]),
                    return_exceptions=True,
                )
                assert [type(a).__name__ for a in answers] == ["list", "QueueUnavailableError"]
                # Stored (read on the primary itself: these test ids carry no queue tag, so
                # a lookup by id would ask every queue, the dead one's too).
                primary = redis.Redis(port=queues[alive])
                for job in (batch[0], batch[2], kept):
                    key = f"{{{prefix}:{alive}}}:job:{job.id}"
                    assert primary.hget(key, "status") == JobStatus.QUEUED.value.encode()
                primary.close()
            finally:
                await backend.connection.close()

        asyncio.run(scenario())


def test_readers_waiting_for_a_job_are_woken_after_the_node_of_their_subscription_dies(
    tmp_path: Path,
) -> None:
    """A process's one subscription to finish notices is on some node; when that node dies
    its readers are still woken when their job finishes (the subscription comes back on a
    node that lives, picked at random; until then the watched jobs are polled), and the
    clients of the process go on with the queues of the nodes that live."""
    with LocalCluster(tmp_path / "cluster", primaries=3, node_timeout_ms=30_000) as cluster:
        factory = ClusterFactory(cluster.url)
        prefix = factory.prefix
        registry = cluster.slot_owner(key_slot(f"{prefix}:queues".encode()))
        queues = spread_queues(cluster, prefix, per_primary=1)
        home = next(name for name, port in queues.items() if port == registry)
        channel = f"{prefix}:finished"

        def subscribed_on() -> list[int]:
            found = []
            for port in cluster.primary_ports:
                with contextlib.suppress(redis.ConnectionError):
                    with redis.Redis(port=port) as node:
                        if dict(node.pubsub_numsub(channel)).get(channel.encode()):
                            found.append(port)
            return found

        async def finish(leases: LeaseQueue, job_id: str) -> float:
            # This job, and those of the backends closed before, all queued.
            claimed = await claim(leases, [home], limit=100)
            assert job_id in ids_of(claimed)
            for lease in claimed:
                assert await leases.settle(lease, Ending.succeeded("ok")) is not None
            return time.monotonic()

        async def lost(watcher: object, within: float) -> None:
            deadline = time.monotonic() + within
            while getattr(watcher, "subscribed", True):
                assert time.monotonic() < deadline, "the lost subscription went unnoticed"
                await asyncio.sleep(0.02)

        async def subscribed(watcher: object, within: float) -> None:
            deadline = time.monotonic() + within
            while not getattr(watcher, "subscribed", False):
                assert time.monotonic() < deadline, "no subscription"
                await asyncio.sleep(0.02)

        async def scenario() -> None:
            # The subscription's node is picked at random: a backend whose subscription
            # shares the primary of the queue and the registry is closed and another made.
            for n in range(20):
                backend = redis_backend(factory.client(), prefix=prefix)
                try:
                    watcher, leases = backend.watcher, backend.leases
                    assert watcher is not None
                    assert leases is not None
                    job = new_job(queue=home, n=n)
                    await enqueue(backend.submitter, job)
                    with watcher.watch(job.id) as watch:
                        await subscribed(watcher, within=5)
                        (node,) = subscribed_on()
                        if node == registry:
                            continue
                        cluster.kill_node(node)
                        await lost(watcher, within=5)  # the process saw its subscription go
                        await watch.wait(0)  # a wake the loss gave: the reader looks, waits on
                        started = time.monotonic()
                        finishing = asyncio.create_task(finish(leases, job.id))
                        # The reader as the API's is: woken, it reads the job, and waits on.
                        while True:
                            await watch.wait(10)
                            finished = await backend.store.get(job.id)
                            assert finished is not None
                            if finished.status is JobStatus.SUCCEEDED:
                                break
                            assert time.monotonic() < started + 10, "the reader was not woken"
                        settled = await finishing
                        seen_in = time.monotonic() - settled
                    print(
                        f"\nsubscribed on {node}, killed; the reader saw the finish {seen_in:.2f} s"
                        " after it"
                    )
                    assert seen_in < 3.0
                    await subscribed(watcher, within=15)
                    assert subscribed_on() not in ([], [node])
                    return
                finally:
                    await backend.connection.close()
            raise AssertionError("every subscription was on the registry's primary")

        asyncio.run(scenario())


def test_a_claim_waiting_on_queues_of_three_primaries_wakes_for_each_and_stops_at_once(
    local_cluster: LocalCluster,
) -> None:
    factory = ClusterFactory(local_cluster.url)
    queues = spread_queues(local_cluster, factory.prefix, per_primary=1)
    print_slot_map(factory.prefix, queues)
    names = list(queues)

    async def scenario() -> None:
        async with factory.open() as backend:
            leases = backend.leases
            assert leases is not None
            woken_in: list[float] = []
            for name in names:  # one job on each primary in turn
                job = new_job(queue=name)
                waiting = asyncio.create_task(claim(leases, names, wait_seconds=5.0))
                await asyncio.sleep(0.2)  # the claim is waiting now
                submitted = time.monotonic()
                await enqueue(backend.submitter, job)
                assert ids_of(await waiting) == [job.id]
                woken_in.append(time.monotonic() - submitted)
            print("woken after a submit, s:", [f"{s:.3f}" for s in woken_in])
            assert max(woken_in) < 1.0, woken_in  # by the submit, not the 4 s block
            started = time.monotonic()
            waiting = asyncio.create_task(claim(leases, names, wait_seconds=5.0, worker_id="w1"))
            await asyncio.sleep(0.2)
            await leases.stop_waiting("w2", names)  # another worker's: no effect
            await asyncio.sleep(0.2)
            assert not waiting.done()
            await leases.stop_waiting("w1", names)
            assert await waiting == []
            assert time.monotonic() - started < 1.5  # not the 5 s wait

    asyncio.run(scenario())


def _calls(ports: tuple[int, ...], command: str) -> int:
    total = 0
    for port in ports:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as node:
            stats: dict[str, dict[str, int]] = node.info("commandstats")
            total += stats.get(f"cmdstat_{command}", {}).get("calls", 0)
    return total


def test_an_idle_claim_on_three_primaries_makes_one_blpop_per_slot_per_block(
    local_cluster: LocalCluster,
) -> None:
    factory = ClusterFactory(local_cluster.url)
    names = list(spread_queues(local_cluster, factory.prefix, per_primary=1))
    ports = local_cluster.primary_ports

    async def scenario() -> tuple[int, int]:
        async with factory.open() as backend:
            assert backend.leases is not None
            await claim(backend.leases, names)  # scripts loaded, connections made
            blpops, scripts = _calls(ports, "blpop"), _calls(ports, "evalsha")
            # 4.5 s: the first claim runs the script once per queue, then waits in blocks of
            # at most 4 s (MAX_BLOCK_SECONDS): two blocks, one BLPOP per slot in each.
            assert await claim(backend.leases, names, wait_seconds=4.5) == []
            return _calls(ports, "blpop") - blpops, _calls(ports, "evalsha") - scripts

    blpops, scripts = asyncio.run(scenario())
    print(f"idle 4.5 s over 3 primaries: {blpops} BLPOP, {scripts} EVALSHA")
    # Two blocks (a third only if the second returned before the wait's end).
    assert 2 * len(names) <= blpops <= 3 * len(names)
    assert scripts == len(names)  # nothing changed: no script until the next look


def test_a_queue_whose_slot_moves_to_another_primary_loses_nothing_meanwhile(
    local_cluster: LocalCluster,
) -> None:
    factory = ClusterFactory(local_cluster.url)
    name, slot, source, target = queue_to_move(local_cluster, factory.prefix)

    async def scenario() -> None:
        async with factory.open() as backend:
            leases = backend.leases
            assert leases is not None
            before = [new_job(queue=name, n=n) for n in range(20)]
            await enqueue_all(backend.submitter, before)
            held = await claim(leases, [name], limit=5)
            during: list[str] = []

            async def keep_submitting() -> None:
                for n in range(1000):
                    job = new_job(queue=name, n=100 + n)
                    await enqueue(backend.submitter, job)
                    during.append(job.id)
                    await asyncio.sleep(0.005)

            submitting = asyncio.create_task(keep_submitting())
            moved = await asyncio.to_thread(local_cluster.migrate_slot, slot, target)
            submitting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await submitting
            print(
                f"queue {name}: slot {slot} moved {source} -> {target}, {moved} keys;"
                f" {len(during)} jobs submitted meanwhile"
            )
            assert local_cluster.slot_owner(slot) == target
            for lease in held:  # leases taken before the move settle after it
                assert await leases.settle(lease, Ending.succeeded(None)) == JobStatus.SUCCEEDED
            while batch := await claim(leases, [name], limit=50):
                for lease in batch:
                    assert await leases.settle(lease, Ending.succeeded(None)) == (
                        JobStatus.SUCCEEDED
                    )
            for job_id in [job.id for job in before] + during:
                found = await backend.store.get(job_id)
                assert found is not None, job_id
                assert found.status is JobStatus.SUCCEEDED, job_id
            assert await factory.stale_writes(backend) == 0

    asyncio.run(scenario())


def test_a_claim_waiting_while_its_queues_slot_moves_is_still_woken_by_a_submit(
    local_cluster: LocalCluster,
) -> None:
    factory = ClusterFactory(local_cluster.url)
    name, slot, source, target = queue_to_move(local_cluster, factory.prefix)

    async def scenario() -> None:
        async with factory.open() as backend:
            leases = backend.leases
            assert leases is not None
            await enqueue(backend.submitter, new_job(queue=name))  # the queue's keys exist
            assert len(await claim(leases, [name])) == 1
            waiting = asyncio.create_task(claim(leases, [name], wait_seconds=10.0))
            await asyncio.sleep(0.2)
            await asyncio.to_thread(local_cluster.migrate_slot, slot, target)
            job = new_job(queue=name, n=1)
            submitted = time.monotonic()
            await enqueue(backend.submitter, job)
            assert ids_of(await waiting) == [job.id]
            woken = time.monotonic() - submitted
            print(
                f"slot {slot} moved {source} -> {target} under a waiting claim; woken in"
                f" {woken:.3f} s"
            )
            assert woken < 5.0  # by the submit (or the next block), not the 10 s wait

    asyncio.run(scenario())


def test_a_burst_past_the_most_connections_waits_for_a_turn_instead_of_failing(
    local_cluster: LocalCluster,
) -> None:
    async def burst() -> list[object]:
        client = create_redis(
            local_cluster.url, connect_timeout=2.0, socket_timeout=5.0, max_connections=4
        )
        try:
            await client.ping()  # the slot map is read once, before the burst
            return await asyncio.gather(
                *(client.hget(f"{{burst:{n % 3}}}:h", "f") for n in range(300)),
                return_exceptions=True,
            )
        finally:
            await client.aclose()

    answers = asyncio.run(burst())
    assert [a for a in answers if isinstance(a, BaseException)] == []
