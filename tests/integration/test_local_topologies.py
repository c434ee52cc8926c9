"""LocalSentinelSet against real server binaries (every one found here)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.sentinel import Sentinel

from entrypoints.local_redis import find_server_binary
from entrypoints.local_topologies import LocalSentinelSet
from tests.integration.server_binaries import binary_params, pid_alive, wait_dead

pytestmark = pytest.mark.timeout(60)

FAILOVER_BOUND_S = 15.0

MakeSentinels = Callable[..., LocalSentinelSet]


@pytest.fixture(params=binary_params())
def server_binary(request: pytest.FixtureRequest) -> Path:
    binary: Path | None = request.param
    return binary if binary is not None else find_server_binary()


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
def sentinels(make_sentinels: MakeSentinels) -> LocalSentinelSet:
    return make_sentinels().start()


def _node(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=2, decode_responses=True)


def _command(port: int, *args: str | int) -> Any:
    run: Any = _node(port).execute_command  # redis-py's is untyped
    return run(*args)


def _port_refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


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
