"""A local Redis Cluster, built and resharded with cluster commands alone (no redis-cli)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Self

import attrs
import redis

from entrypoints.local_redis import (
    HOST,
    LocalRedis,
    find_server_binary,
    pick_free_port,
    server_args,
)
from entrypoints.local_topologies.nodes import (
    LocalTopologyError,
    ask,
    ask_bytes,
    info,
    stop_all,
    wait_until,
)
from entrypoints.supervised import Supervised

SLOTS = 16384
READY_TIMEOUT_S = 20.0
CONFIG_FILE_NAME = "nodes.conf"

_MIGRATE_BATCH = 100
_MIGRATE_TIMEOUT_MS = 5000

# (first slot, last slot, primary's port, its replicas' ports): how every node should see it.
SlotMap = tuple[tuple[int, int, int, tuple[int, ...]], ...]


class _ClusterNode(LocalRedis):
    """A LocalRedis in cluster mode, with a bus port picked afresh for each start attempt.

    The default bus port (port + 10000) may be taken, or past 65535 for a high free port.
    """

    def __init__(self, data_dir: Path, *, binary: Path, node_timeout_ms: int) -> None:
        super().__init__(data_dir, binary=binary)
        self._node_timeout_ms = node_timeout_ms
        self.bus_port = 0

    def _command(self, binary: Path, data_dir: Path, port: int) -> list[str]:
        self.bus_port = pick_free_port()
        return [
            *server_args(binary, data_dir, port),
            *("--cluster-enabled", "yes"),
            *("--cluster-config-file", CONFIG_FILE_NAME),
            *("--cluster-node-timeout", str(self._node_timeout_ms)),
            *("--cluster-port", str(self.bus_port)),
            *("--repl-diskless-sync-delay", "0"),  # a replica's first sync starts at once
        ]


@attrs.frozen
class _Peer:
    """One line of CLUSTER NODES: a node as another node (or itself) sees it."""

    node_id: str
    port: int
    flags: frozenset[str]
    primary_id: str | None
    slot_ranges: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, line: str) -> _Peer:
        # <id> <ip:port@cport[,hostname]> <flags> <primary> <ping> <pong> <epoch> <link> <slot>*
        fields = line.split()
        ranges = []
        for token in fields[8:]:
            if token.startswith("["):  # a slot being imported or migrated: not owned yet
                continue
            first, _, last = token.partition("-")
            ranges.append((int(first), int(last or first)))
        return cls(
            node_id=fields[0],
            port=int(fields[1].split("@")[0].rsplit(":", 1)[1]),
            flags=frozenset(fields[2].split(",")),
            primary_id=None if fields[3] == "-" else fields[3],
            slot_ranges=tuple(ranges),
        )

    @property
    def settled(self) -> bool:
        """Known at its address and reachable: no handshake, no failure suspected."""
        return not self.flags & {"handshake", "noaddr", "fail", "fail?"}


def _peers(port: int) -> list[_Peer]:
    return [_Peer.parse(line) for line in str(ask(port, "CLUSTER", "NODES")).splitlines()]


def _cluster_info(port: int) -> dict[str, str]:
    lines = str(ask(port, "CLUSTER", "INFO")).splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def _slot_map(peers: list[_Peer]) -> SlotMap:
    by_id = {peer.node_id: peer for peer in peers}
    replicas: dict[int, list[int]] = {}
    for peer in peers:
        primary = by_id.get(peer.primary_id or "")
        if primary is not None and "slave" in peer.flags:
            replicas.setdefault(primary.port, []).append(peer.port)
    return tuple(
        sorted(
            (first, last, peer.port, tuple(sorted(replicas.get(peer.port, []))))
            for peer in peers
            if "master" in peer.flags
            for first, last in peer.slot_ranges
        )
    )


def _even_ranges(count: int) -> list[tuple[int, int]]:
    return [(i * SLOTS // count, (i + 1) * SLOTS // count - 1) for i in range(count)]


class LocalCluster(Supervised):
    """A Redis Cluster of ``primaries`` primaries with their replicas, all on 127.0.0.1.

    Each start builds a new cluster in empty data dirs: the nodes' ports change between
    starts, so an earlier cluster's config could not be rejoined.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        primaries: int = 3,
        replicas_per_primary: int = 0,
        binary: Path | None = None,
        node_timeout_ms: int = 2000,
        ready_timeout: float = READY_TIMEOUT_S,
    ) -> None:
        if primaries < 1 or replicas_per_primary < 0:
            raise ValueError(
                f"need primaries >= 1 and replicas_per_primary >= 0; got "
                f"primaries={primaries}, replicas_per_primary={replicas_per_primary}"
            )
        self._base_dir = Path(base_dir)
        self._primaries = primaries
        self._replicas_per_primary = replicas_per_primary
        self._binary = binary
        self._node_timeout_ms = node_timeout_ms
        self._ready_timeout = ready_timeout
        self._nodes: list[_ClusterNode] = []
        self._ports: tuple[int, ...] = ()
        self._ids: dict[int, str] = {}
        self._expected: SlotMap = ()

    @property
    def url(self) -> str:
        hosts = ",".join(f"{HOST}:{port}" for port in self.primary_ports)
        return f"redis+cluster://{hosts}"

    @property
    def node_ports(self) -> tuple[int, ...]:
        """Every node's port: the primaries first, then the replicas, in start order."""
        if not self._ports:
            raise LocalTopologyError("the cluster has not been started")
        return self._ports

    @property
    def primary_ports(self) -> tuple[int, ...]:
        """The ports of the nodes started as primaries."""
        return self.node_ports[: self._primaries]

    @property
    def replica_ports(self) -> tuple[int, ...]:
        return self.node_ports[self._primaries :]

    @property
    def bus_ports(self) -> tuple[int, ...]:
        """The nodes' cluster bus ports, in the order of node_ports."""
        return tuple(node.bus_port for node in self._nodes)

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(node.pid for node in self._nodes if node.running)

    @property
    def running(self) -> bool:
        return any(node.running for node in self._nodes)

    def start(self) -> Self:
        """Start the nodes and build the cluster; return once every node reports
        ``cluster_state:ok`` and sees the same slot map. Raises LocalTopologyError.
        """
        if self.running:
            raise LocalTopologyError("the cluster is already running")
        binary = self._binary if self._binary is not None else find_server_binary()
        self._nodes = []
        try:
            self._start_nodes(binary)
            self._assign_slots()
            self._meet()
            wait_until("every node knowing every other", self._ready_timeout, self._unmet)
            self._replicate()
            wait_until("one slot map on every node", self._ready_timeout, self._unsettled)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_nodes(self, binary: Path) -> None:
        total = self._primaries * (1 + self._replicas_per_primary)
        for index in range(1, total + 1):
            data_dir = self._base_dir / f"node-{index}"
            if (data_dir / CONFIG_FILE_NAME).exists():
                raise LocalTopologyError(
                    f"{data_dir} holds an earlier cluster's {CONFIG_FILE_NAME}; a local "
                    f"cluster starts only in empty data dirs"
                )
            node = _ClusterNode(data_dir, binary=binary, node_timeout_ms=self._node_timeout_ms)
            self._nodes.append(node)
            node.start()
        self._ports = tuple(node.port for node in self._nodes)
        self._ids = {port: str(ask(port, "CLUSTER", "MYID")) for port in self._ports}

    def _assign_slots(self) -> None:
        # Distinct config epochs up front, as redis-cli does: the nodes need not resolve
        # a collision of equal epochs before they agree on who owns what.
        for epoch, port in enumerate(self._ports, start=1):
            ask(port, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for port, (first, last) in zip(
            self.primary_ports, _even_ranges(self._primaries), strict=True
        ):
            ask(port, "CLUSTER", "ADDSLOTSRANGE", first, last)

    def _meet(self) -> None:
        first = self._ports[0]
        for node in self._nodes[1:]:
            ask(first, "CLUSTER", "MEET", HOST, node.port, node.bus_port)

    def _unmet(self) -> str | None:
        for port in self._ports:
            settled = [peer for peer in _peers(port) if peer.settled]
            if len(settled) != len(self._ports):
                return f"node {port} knows {len(settled)} of {len(self._ports)} nodes"
        return None

    def _replicate(self) -> None:
        replicas = iter(self.replica_ports)
        expected = []
        for primary, (first, last) in zip(
            self.primary_ports, _even_ranges(self._primaries), strict=True
        ):
            mine = tuple(next(replicas) for _ in range(self._replicas_per_primary))
            for replica in mine:
                ask(replica, "CLUSTER", "REPLICATE", self._ids[primary])
            expected.append((first, last, primary, tuple(sorted(mine))))
        self._expected = tuple(sorted(expected))

    def _unsettled(self) -> str | None:
        for port in self._ports:
            state = _cluster_info(port).get("cluster_state")
            if state != "ok":
                return f"node {port} has cluster_state {state}"
            seen = _slot_map(_peers(port))
            if seen != self._expected:
                return f"node {port} sees another slot map: {seen}"
        for port in self.replica_ports:
            link = info(port, "replication").get("master_link_status")
            if link != "up":
                return f"replica {port} has master_link_status {link}"
        return None

    def slot_owner(self, slot: int) -> int:
        """The port of the primary that owns ``slot``, as the first node answering sees it."""
        _check_slot(slot)
        for first, last, primary, _ in _slot_map(self._any_peers()):
            if first <= slot <= last:
                return primary
        raise LocalTopologyError(f"no node owns slot {slot}")

    def slots_of(self, port: int) -> list[int]:
        """The slots the primary on ``port`` owns, in order."""
        return [
            slot
            for first, last, primary, _ in _slot_map(self._any_peers())
            if primary == port
            for slot in range(first, last + 1)
        ]

    def migrate_slot(self, slot: int, to_port: int) -> int:
        """Move ``slot`` and its keys to the primary on ``to_port``; return how many keys moved.

        The steps of ``redis-cli --cluster reshard`` for one slot. Clients may keep writing
        to the slot meanwhile: the source answers ASK for any key it no longer holds, so a
        key lives on one node at a time. Returns once every node places the slot on
        ``to_port``. Should it fail midway, the slot stays MIGRATING on its owner and
        IMPORTING on ``to_port`` (as with redis-cli); calling it again finishes the move.
        """
        source = self.slot_owner(slot)
        if source == to_port:
            return 0
        primaries = [peer.port for peer in self._any_peers() if "master" in peer.flags]
        if to_port not in primaries:
            raise LocalTopologyError(f"{to_port} is not a primary of this cluster")
        target_id = self._ids[to_port]
        ask(to_port, "CLUSTER", "SETSLOT", slot, "IMPORTING", self._ids[source])
        ask(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = self._move_keys(slot, source, to_port)
        # The target first, so that it owns the slot before the source stops answering ASK.
        ask(to_port, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        ask(source, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for port in primaries:  # the rest would learn it by gossip, only later
            if port not in (source, to_port) and self._node_running(port):
                ask(port, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        wait_until(
            f"every node placing slot {slot} on {to_port}",
            self._ready_timeout,
            lambda: self._misplaced(slot, to_port),
        )
        return moved

    def _move_keys(self, slot: int, source: int, target: int) -> int:
        # While the slot is MIGRATING the source creates no key in it (it answers ASK), so
        # once GETKEYSINSLOT comes back empty it stays empty.
        moved = 0
        while keys := ask_bytes(source, "CLUSTER", "GETKEYSINSLOT", slot, _MIGRATE_BATCH):
            timeout = _MIGRATE_TIMEOUT_MS
            ask(source, "MIGRATE", HOST, target, "", 0, timeout, "KEYS", *keys, timeout=10.0)
            moved += len(keys)
        return moved

    def _misplaced(self, slot: int, port: int) -> str | None:
        for node in self._ports:
            if not self._node_running(node):
                continue
            owners = [p for f, last, p, _ in _slot_map(_peers(node)) if f <= slot <= last]
            if owners != [port]:
                return f"node {node} places slot {slot} on {owners}"
        return None

    def kill_node(self, port: int) -> None:
        """SIGKILL the node on ``port``, as a crash would: its replica takes over once the
        other primaries have not heard from it for ``node_timeout_ms``."""
        node = next((n for n in self._nodes if n.running and n.port == port), None)
        if node is None:
            raise LocalTopologyError(f"{port} is not one of our running nodes")
        node.kill()

    def _any_peers(self) -> list[_Peer]:
        errors = []
        for port in self._live_ports():
            try:
                return _peers(port)
            except redis.RedisError as exc:
                errors.append(f"{port}: {exc!r}")
        raise LocalTopologyError(f"no cluster node answered: {'; '.join(errors) or 'none run'}")

    def _live_ports(self) -> Iterator[int]:
        return (node.port for node in self._nodes if node.running)

    def _node_running(self, port: int) -> bool:
        return any(node.running and node.port == port for node in self._nodes)

    def stop(self) -> None:
        """Stop every node. Safe to call repeatedly."""
        stop_all(reversed(self._nodes))

    def __repr__(self) -> str:
        state = f"url={self.url}" if self.running else "stopped"
        return f"LocalCluster({str(self._base_dir)!r}, {state})"


def _check_slot(slot: int) -> None:
    if not 0 <= slot < SLOTS:
        raise ValueError(f"slot must be in 0..{SLOTS - 1}, got {slot}")
