"""A local Sentinel set: one primary, its replicas and the Sentinels that watch them."""

from __future__ import annotations

from pathlib import Path
from typing import Self

import redis

from entrypoints.local_redis import (
    HOST,
    LocalRedis,
    find_server_binary,
    process_args,
)
from entrypoints.local_topologies.nodes import (
    LocalTopologyError,
    ask,
    info,
    pairs,
    stop_all,
    wait_until,
)
from entrypoints.supervised import Supervised

READY_TIMEOUT_S = 30.0
FAILOVER_TIMEOUT_S = 15.0


class _Sentinel(LocalRedis):
    """A LocalRedis run as ``<binary> <conf> --sentinel``; the conf is written per start.

    Sentinel rewrites its config file as it learns the topology, so each start gets a fresh
    one naming the primary to monitor, with timeouts short enough for tests.
    """

    def __init__(self, data_dir: Path, *, binary: Path, monitor: str) -> None:
        super().__init__(data_dir, binary=binary)
        self._monitor = monitor

    def _command(self, binary: Path, data_dir: Path, port: int) -> list[str]:
        conf = data_dir / "sentinel.conf"
        conf.write_text(self._monitor)
        return [str(binary), str(conf), "--sentinel", *process_args(data_dir, port)]


class LocalSentinelSet(Supervised):
    """One primary, its replicas and the Sentinels that watch them, all on 127.0.0.1."""

    def __init__(
        self,
        base_dir: Path,
        *,
        replicas: int = 2,
        sentinels: int = 3,
        quorum: int = 2,
        service: str = "conveyor",
        binary: Path | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        ready_timeout: float = READY_TIMEOUT_S,
    ) -> None:
        if replicas < 0 or sentinels < 1 or not 1 <= quorum <= sentinels:
            raise ValueError(
                f"need replicas >= 0, sentinels >= 1 and 1 <= quorum <= sentinels; got "
                f"replicas={replicas}, sentinels={sentinels}, quorum={quorum}"
            )
        if not service.isidentifier():  # it goes into a config line and a URL path
            raise ValueError(f"service must be a plain name, got {service!r}")
        self._base_dir = Path(base_dir)
        self._replicas = replicas
        self._sentinel_count = sentinels
        self._quorum = quorum
        self._service = service
        self._binary = binary
        self._down_after_ms = down_after_ms
        self._failover_timeout_ms = failover_timeout_ms
        self._ready_timeout = ready_timeout
        self._data_nodes: list[LocalRedis] = []
        self._sentinels: list[LocalRedis] = []
        self._data_ports: tuple[int, ...] = ()
        self._sentinel_ports: tuple[int, ...] = ()

    @property
    def service(self) -> str:
        return self._service

    @property
    def url(self) -> str:
        hosts = ",".join(f"{HOST}:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self._service}"

    @property
    def sentinel_ports(self) -> tuple[int, ...]:
        return self._require(self._sentinel_ports)

    @property
    def data_ports(self) -> tuple[int, ...]:
        """Ports of the data nodes in start order: the first primary, then its replicas."""
        return self._require(self._data_ports)

    @property
    def primary_port(self) -> int:
        """The port of the node started as primary. After a failover, ask primary_address()."""
        return self.data_ports[0]

    @property
    def replica_ports(self) -> tuple[int, ...]:
        """The ports of the nodes started as replicas."""
        return self.data_ports[1:]

    @property
    def pids(self) -> tuple[int, ...]:
        """The pids of every node still running (a killed primary is not among them)."""
        return tuple(node.pid for node in self._nodes() if node.running)

    @property
    def running(self) -> bool:
        return any(node.running for node in self._nodes())

    def start(self) -> Self:
        """Start every node; return once a failover could begin at once.

        That is: every replica is in sync with the primary, and every Sentinel knows the
        primary, every replica and every other Sentinel. Raises LocalTopologyError.
        """
        if self.running:
            raise LocalTopologyError("the Sentinel set is already running")
        binary = self._binary if self._binary is not None else find_server_binary()
        self._data_nodes, self._sentinels = [], []
        try:
            self._start_data_nodes(binary)
            self._start_sentinels(binary)
            wait_until("Sentinels agreeing on the topology", self._ready_timeout, self._unready)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_data_nodes(self, binary: Path) -> None:
        # Any data node may become the primary; none should wait the default 5 s for more
        # replicas to arrive before it sends a full copy to the first.
        quick = ("--repl-diskless-sync-delay", "0")
        primary = LocalRedis(self._base_dir / "data-1", binary=binary, extra_args=quick)
        self._data_nodes = [primary]
        primary.start()
        for index in range(2, self._replicas + 2):
            replica = LocalRedis(
                self._base_dir / f"data-{index}",
                binary=binary,
                extra_args=(*quick, "--replicaof", HOST, str(primary.port)),
            )
            self._data_nodes.append(replica)
            replica.start()
        self._data_ports = tuple(node.port for node in self._data_nodes)
        wait_until("replicas in sync", self._ready_timeout, self._replicas_unsynced)

    def _replicas_unsynced(self) -> str | None:
        for port in self.replica_ports:
            status = info(port, "replication").get("master_link_status")
            if status != "up":
                return f"replica {port} has master_link_status {status}"
        return None

    def _start_sentinels(self, binary: Path) -> None:
        service = self._service
        monitor = (
            f"sentinel monitor {service} {HOST} {self.primary_port} {self._quorum}\n"
            f"sentinel down-after-milliseconds {service} {self._down_after_ms}\n"
            f"sentinel failover-timeout {service} {self._failover_timeout_ms}\n"
            f"sentinel parallel-syncs {service} 1\n"
        )
        for index in range(1, self._sentinel_count + 1):
            sentinel = _Sentinel(
                self._base_dir / f"sentinel-{index}", binary=binary, monitor=monitor
            )
            self._sentinels.append(sentinel)
            sentinel.start()
        self._sentinel_ports = tuple(node.port for node in self._sentinels)

    def _unready(self) -> str | None:
        for port in self._sentinel_ports:
            master = pairs(ask(port, "SENTINEL", "MASTER", self._service))
            if master.get("flags") != "master":
                return f"sentinel {port} sees the primary as {master.get('flags')}"
            replicas = [pairs(r) for r in ask(port, "SENTINEL", "REPLICAS", self._service)]
            linked = [r for r in replicas if r.get("master-link-status") == "ok"]
            if len(linked) != self._replicas:
                return f"sentinel {port} knows {len(linked)} linked replicas"
            others = [pairs(s) for s in ask(port, "SENTINEL", "SENTINELS", self._service)]
            connected = [s for s in others if s.get("flags") == "sentinel"]
            if len(connected) != self._sentinel_count - 1:
                return f"sentinel {port} knows {len(connected)} other sentinels"
        return None

    def primary_address(self) -> tuple[str, int]:
        """The primary's address as the first Sentinel that answers names it."""
        errors = []
        for port in self.sentinel_ports:
            try:
                host, primary_port = ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self._service)
            except (redis.RedisError, TypeError, ValueError) as exc:
                errors.append(f"{port}: {exc!r}")
                continue
            return str(host), int(primary_port)
        raise LocalTopologyError(f"no Sentinel named a primary: {'; '.join(errors)}")

    def kill_primary(self) -> int:
        """SIGKILL the process of the current primary, as a crash would; return its port."""
        _, port = self.primary_address()
        by_port = dict(zip(self.data_ports, self._data_nodes, strict=True))
        node = by_port.get(port)
        if node is None or not node.running:
            raise LocalTopologyError(f"the primary {port} is not one of our running nodes")
        node.kill()
        return port

    def wait_for_failover(
        self, old_port: int, timeout: float = FAILOVER_TIMEOUT_S
    ) -> tuple[str, int]:
        """Wait until every Sentinel names one primary other than ``old_port`` that answers
        as a primary; return its address. Raises LocalTopologyError after ``timeout`` s.
        """
        found: list[tuple[str, int]] = []

        def pending() -> str | None:
            named = {
                (str(host), int(port))
                for host, port in (
                    ask(s, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self._service)
                    for s in self.sentinel_ports
                )
            }
            if len(named) != 1:
                return f"the Sentinels name different primaries: {sorted(named)}"
            address = named.pop()
            if address[1] == old_port:
                return f"the Sentinels still name {old_port}"
            role = ask(address[1], "ROLE")[0]
            if role != "master":
                return f"{address[1]} is named but answers ROLE {role}"
            found.append(address)
            return None

        wait_until(f"a failover away from {old_port}", timeout, pending)
        return found[-1]

    def stop(self) -> None:
        """Stop the Sentinels first (so they do not fail over), then the data nodes."""
        stop_all([*self._sentinels, *reversed(self._data_nodes)])

    def _nodes(self) -> list[LocalRedis]:
        return [*self._data_nodes, *self._sentinels]

    def _require(self, ports: tuple[int, ...]) -> tuple[int, ...]:
        if not ports:
            raise LocalTopologyError("the Sentinel set has not been started")
        return ports

    def __repr__(self) -> str:
        state = f"url={self.url}" if self.running else "stopped"
        return f"LocalSentinelSet({str(self._base_dir)!r}, {state})"
