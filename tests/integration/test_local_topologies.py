"""LocalSentinelSet and LocalCluster against real server binaries (every one found here)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.sentinel import Sentinel

from entrypoints.cli.serve import local_redis_for_dev
from entrypoints.local_redis import find_server_binary
from entrypoints.local_topologies import LocalCluster, LocalSentinelSet, LocalTopologyError
from tests.integration.server_binaries import binary_params, pid_alive, wait_dead

pytestmark = pytest.mark.timeout(60)

FAILOVER_BOUND_S = 15.0

MakeCluster = Callable[..., LocalCluster]
MakeSentinels = Callable[..., LocalSentinelSet]


@pytest.fixture(params=binary_params())
def server_binary(request: pytest.FixtureRequest) -> Path:
    binary: Path | None = request.param
    return binary if binary is not None else find_server_binary()


@pytest.fixture
def make_cluster(server_binary: Path, tmp_path: Path) -> Iterator[MakeCluster]:
    clusters: list[LocalCluster] = []

    def make(name: str = "cluster", **options: int) -> LocalCluster:
        cluster = LocalCluster(tmp_path / name, binary=server_binary, **options)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


@pytest.fixture
def make_sentinels(server_binary: Path, tmp_path: Path) -> Iterator[MakeSentinels]:
    sets: list[LocalSentinelSet] = []

    def make(name: str = "sentinel") -> LocalSentinelSet:
        sentinels = LocalSentinelSet(tmp_path / name, binary=server_binary)
        sets.append(sentinels)
        return sentinels

    yield make
    for sentinels in sets:
        sentinels.stop()


@pytest.fixture
def cluster(make_cluster: MakeCluster) -> LocalCluster:
    return make_cluster().start()


@pytest.fixture
def sentinels(make_sentinels: MakeSentinels) -> LocalSentinelSet:
    return make_sentinels().start()


def _node(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=2, decode_responses=True)


def _command(port: int, *args: str | int) -> Any:
    run: Any = _node(port).execute_command  # redis-py's is untyped
    return run(*args)


def _cluster_client(cluster: LocalCluster) -> RedisCluster:
    return RedisCluster(
        host="127.0.0.1", port=cluster.primary_ports[0], socket_timeout=2, decode_responses=True
    )


def _port_refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _tags_per_primary(cluster: LocalCluster) -> dict[int, str]:
    """A hash tag whose slot each primary owns, found by trying tags in turn."""
    tags: dict[int, str] = {}
    for index in range(1000):
        tag = f"t{index}"
        tags.setdefault(cluster.slot_owner(key_slot(f"{{{tag}}}".encode())), tag)
        if len(tags) == len(cluster.primary_ports):
            return tags
    raise AssertionError(f"1000 tags did not reach every primary: {tags}")


# --- cluster -------------------------------------------------------------------------------


def test_cluster_covers_all_16384_slots_with_three_primaries(cluster: LocalCluster) -> None:
    owned = [set(cluster.slots_of(port)) for port in cluster.primary_ports]

    assert len(cluster.primary_ports) == 3
    assert [len(slots) for slots in owned] == [5461, 5461, 5462]
    assert set().union(*owned) == set(range(16384))
    hosts = ",".join(f"127.0.0.1:{port}" for port in cluster.primary_ports)
    assert cluster.url == f"redis+cluster://{hosts}"
    for port in cluster.node_ports:
        cluster_info = _command(port, "CLUSTER INFO")
        assert cluster_info["cluster_state"] == "ok"
        assert int(cluster_info["cluster_known_nodes"]) == 3


def test_keys_with_different_hash_tags_land_on_different_primaries(
    cluster: LocalCluster,
) -> None:
    client = _cluster_client(cluster)
    tags = _tags_per_primary(cluster)

    for port, tag in tags.items():
        client.set(f"{{{tag}}}:job", f"on {port}")

    assert len(set(tags)) == 3
    for port, tag in tags.items():
        assert client.get(f"{{{tag}}}:job") == f"on {port}"
        assert _node(port).get(f"{{{tag}}}:job") == f"on {port}"  # held there, not elsewhere


def test_migrate_slot_moves_its_keys_while_a_client_writes(cluster: LocalCluster) -> None:
    client = _cluster_client(cluster)
    slot = key_slot(b"{moving}")
    source = cluster.slot_owner(slot)
    target = next(port for port in cluster.primary_ports if port != source)
    before = {f"{{moving}}:{i}": str(i) for i in range(350)}  # several MIGRATE batches
    client.mset_nonatomic(before)
    written, failures, stop = {}, [], threading.Event()

    def write() -> None:
        writer = _cluster_client(cluster)
        index = 0
        while not stop.is_set():
            key, value = f"{{moving}}:during:{index}", f"w{index}"
            try:
                writer.set(key, value)
            except redis.RedisError as exc:
                failures.append(exc)
                return
            written[key] = value
            index += 1
        writer.close()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        time.sleep(0.2)
        moved = cluster.migrate_slot(slot, target)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(10)

    assert failures == []
    assert moved >= len(before)
    assert cluster.slot_owner(slot) == target
    assert slot in cluster.slots_of(target)
    assert slot not in cluster.slots_of(source)
    assert _command(source, "CLUSTER COUNTKEYSINSLOT", slot) == 0
    expected = {**before, **written}
    assert _command(target, "CLUSTER COUNTKEYSINSLOT", slot) == len(expected)
    assert len(written) > 0
    assert client.mget_nonatomic(list(expected)) == list(expected.values())


def test_cluster_replicas_follow_their_primaries(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(replicas_per_primary=1).start()

    assert len(cluster.node_ports) == 6
    for replica in cluster.replica_ports:
        role = _command(replica, "ROLE")
        assert role[0] == "slave"
        assert role[2] in cluster.primary_ports
        assert role[3] == "connected"


def test_cluster_refuses_data_dirs_of_an_earlier_cluster_and_leaves_nothing_running(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    (tmp_path / "cluster" / "node-2").mkdir(parents=True)
    (tmp_path / "cluster" / "node-2" / "nodes.conf").write_text("old\n")
    cluster = make_cluster()

    with pytest.raises(LocalTopologyError, match="earlier cluster"):
        cluster.start()

    assert not cluster.running
    assert cluster.pids == ()


def test_cluster_stop_leaves_no_process_and_frees_every_port(cluster: LocalCluster) -> None:
    pids, ports = cluster.pids, (*cluster.node_ports, *cluster.bus_ports)
    assert len(pids) == 3

    cluster.stop()

    assert all(wait_dead(pid) for pid in pids)
    assert [port for port in ports if not _port_refused(port)] == []


# --- Sentinel ------------------------------------------------------------------------------


def test_sentinel_set_replicates_a_write_to_both_replicas(sentinels: LocalSentinelSet) -> None:
    primary = _node(sentinels.primary_port)

    primary.set("conveyor:replicated", "yes")
    acknowledged = _command(sentinels.primary_port, "WAIT", 2, 5000)

    assert acknowledged == 2
    assert len(sentinels.replica_ports) == 2
    for port in sentinels.replica_ports:
        assert _node(port).get("conveyor:replicated") == "yes"
    assert sentinels.primary_address() == ("127.0.0.1", sentinels.primary_port)
    hosts = ",".join(f"127.0.0.1:{port}" for port in sentinels.sentinel_ports)
    assert sentinels.url == f"redis+sentinel://{hosts}/conveyor"


def test_killed_primary_is_replaced_within_the_bound_and_clients_write_on_the_new_one(
    sentinels: LocalSentinelSet,
) -> None:
    _node(sentinels.primary_port).set("conveyor:before", "kept")
    _command(sentinels.primary_port, "WAIT", 2, 5000)

    started = time.monotonic()
    old_port = sentinels.kill_primary()
    host, new_port = sentinels.wait_for_failover(old_port, timeout=FAILOVER_BOUND_S)
    took = time.monotonic() - started

    assert old_port == sentinels.primary_port
    assert took < FAILOVER_BOUND_S
    assert (host, new_port) == ("127.0.0.1", new_port)
    assert new_port in sentinels.replica_ports
    sentinel_client: Any = Sentinel  # redis-py's Sentinel is untyped
    sentinel = sentinel_client(
        [("127.0.0.1", port) for port in sentinels.sentinel_ports], socket_timeout=2
    )
    primary = sentinel.master_for(sentinels.service, socket_timeout=2, decode_responses=True)
    assert primary.set("conveyor:after", "written") is True
    assert _node(new_port).get("conveyor:after") == "written"
    assert primary.get("conveyor:before") == "kept"


def test_sentinel_stop_leaves_no_process_and_frees_every_port(
    sentinels: LocalSentinelSet,
) -> None:
    pids, ports = sentinels.pids, (*sentinels.data_ports, *sentinels.sentinel_ports)
    assert len(pids) == 6
    sentinels.kill_primary()  # one node already gone must not stop the others stopping

    sentinels.stop()

    assert all(wait_dead(pid) for pid in pids)
    assert not any(pid_alive(pid) for pid in pids)
    assert [port for port in ports if not _port_refused(port)] == []
    assert not sentinels.running


# --- conveyor dev --------------------------------------------------------------------------


def _hosts(url: str) -> list[tuple[str, int]]:
    netloc = url.split("://", 1)[1].split("/", 1)[0]
    return [(host, int(port)) for host, _, port in (h.rpartition(":") for h in netloc.split(","))]


def test_dev_serves_a_sentinel_set_and_stops_it_after(tmp_path: Path) -> None:
    with local_redis_for_dev("sentinel", tmp_path / "dev") as url:
        sentinel_client: Any = Sentinel  # redis-py's Sentinel is untyped
        primary = sentinel_client(_hosts(url), socket_timeout=2).master_for("conveyor")
        assert url.startswith("redis+sentinel://")
        assert url.endswith("/conveyor")
        assert primary.set("conveyor:dev", "up") is True

    assert [port for _, port in _hosts(url) if not _port_refused(port)] == []


def test_dev_serves_a_fresh_cluster_and_removes_it_after(tmp_path: Path) -> None:
    with local_redis_for_dev("cluster", tmp_path / "dev") as url:
        hosts = _hosts(url)
        client = RedisCluster(host=hosts[0][0], port=hosts[0][1], socket_timeout=2)
        assert url.startswith("redis+cluster://")
        assert len(hosts) == 3
        assert client.set("conveyor:dev", "up") is True
        client.close()

    assert [port for _, port in hosts if not _port_refused(port)] == []
    assert list((tmp_path / "dev").iterdir()) == []  # the run's data dir went with it
