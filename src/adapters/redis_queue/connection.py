"""The Redis backend's connection: is the server up, is it safe, and letting go of it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from adapters.redis_client import redis_errors
from adapters.redis_cluster import NOT_A_CLUSTER, is_cluster, not_a_cluster
from adapters.redis_queue.core import RedisCore
from adapters.redis_queue.keys import layout_key, legacy_idempotency_window
from adapters.redis_sentinel import unknown_service
from domain.errors import QueueUnavailableError, UnsafeBackendError
from domain.ports import Connection


class RedisConnection(Connection):
    def __init__(self, core: RedisCore) -> None:
        self.core = core

    async def ping(self) -> None:
        with redis_errors():
            await self.core.client.ping()

    async def verify(self) -> Sequence[str]:
        """Refuse a server that may lose jobs by design; answer warnings for lesser risks.

        Raises UnsafeBackendError when `maxmemory-policy` lets Redis evict keys (anything but
        ``noeviction``: an evicted job hash or list is a job lost without a trace). Answers
        warnings: AOF off (a restart loses what was acknowledged since the last snapshot),
        that the check could not be made (CONFIG refused by an ACL or renamed away, as
        managed services do), that the admission policy's memory limit cannot be checked
        (INFO refused: every new job would be refused), that fewer replicas than
        `min_replicas` confirm writes now (every submission would be refused until they do),
        or that the prefix's jobs are stored in the full layout (`keys.layout_key`).
        """
        try:
            with redis_errors():
                # Queue names an older Conveyor registered are adopted as the process starts,
                # so its jobs are found by id from the first read (see registry.py).
                await self.core.registry.adopt()
        except QueueUnavailableError as exc:
            if isinstance(exc.__cause__, RedisClusterException) and not_a_cluster(exc.__cause__):
                raise UnsafeBackendError(NOT_A_CLUSTER) from None
            mistaken = await unknown_service(self.core.client, exc.__cause__)
            if mistaken is not None:
                raise UnsafeBackendError(mistaken) from None
            raise
        with redis_errors():
            await self._learn_legacy_idempotency_window()
            await self.learn_layout()
        warnings = [*await self._memory_warnings(), *await self._replica_warnings()]
        if not self.core.compact_jobs:
            warnings.append(
                "job hashes are written in the full layout: this prefix was in use before a"
                " version that reads the compact one. Once no older Conveyor runs on it,"
                f" `SET {layout_key(self.core.prefix)} compact` saves about 96 bytes of Redis"
                " memory a job (README: Upgrading a prefix in use)"
            )
        try:
            with redis_errors():
                policies, aofs = await self._settings()
        except ResponseError as exc:
            return [
                f"could not check the Redis configuration (CONFIG GET refused: {exc}); make"
                " sure maxmemory-policy is noeviction and appendonly is yes",
                *warnings,
            ]
        for node, policy in policies.items():
            if policy is None:
                warnings.append(
                    f"could not read maxmemory-policy from CONFIG GET{node}; make sure it is"
                    " noeviction"
                )
            elif policy != "noeviction":
                raise UnsafeBackendError(
                    f"Redis maxmemory-policy is {policy!r}{node}: the server may evict job keys"
                    " and lose jobs; set maxmemory-policy to noeviction"
                )
        for node, aof in aofs.items():
            if aof is None:
                warnings.append(
                    f"could not read appendonly from CONFIG GET{node}; make sure AOF is on"
                )
            elif aof != "yes":
                warnings.append(
                    f"AOF is off (appendonly {aof}){node}: a Redis restart loses jobs answered 202"
                )
        return warnings

    async def _learn_legacy_idempotency_window(self) -> None:
        """Until when submits read the idempotency keys an older version held prefix-wide
        (`keys.legacy_idempotency_window`): each such key lives at most the idempotency
        retention after an older process wrote it, so twice that from the first start of
        this version on a prefix in use covers a rolling upgrade; at once on a new prefix.
        Two reads at start-up; none on a cluster, which never reads them."""
        core = self.core
        if is_cluster(core.client):
            return
        now_ms = time.time_ns() // 1_000_000
        in_use = await core.client.exists(core.registry.keys.queues)
        until = now_ms + 2 * core.idempotency_ttl_ms if in_use else now_ms
        marker = legacy_idempotency_window(core.prefix)
        pipe = core.client.pipeline(transaction=False)
        pipe.set(marker, until, nx=True)
        pipe.get(marker)
        _, stored = await pipe.execute()
        core.legacy_idempotency_until = int(stored) / 1000

    async def learn_layout(self) -> None:
        """Which layout submits write job hashes in (`keys.layout_key`): set once, by the
        first process that knows the compact layout to start on the prefix, compact on a
        new prefix and full on one in use. Two round trips at start-up."""
        core = self.core
        in_use = await core.client.exists(core.registry.keys.queues)
        key = layout_key(core.prefix)
        pipe = core.client.pipeline(transaction=False)
        pipe.set(key, "full" if in_use else "compact", nx=True)
        pipe.get(key)
        _, stored = await pipe.execute()
        core.compact_jobs = stored == b"compact"

    async def _settings(self) -> tuple[dict[str, str | None], dict[str, str | None]]:
        """maxmemory-policy and appendonly, by node: ``""`` for a single server, `` on
        <host:port>`` for each primary of a cluster (each holds some of the queues)."""
        client = self.core.client
        if not is_cluster(client):
            pipe = client.pipeline(transaction=False)
            pipe.config_get("maxmemory-policy")
            pipe.config_get("appendonly")
            policy_reply, aof_reply = await pipe.execute()
            return (
                {"": _config_value(policy_reply, "maxmemory-policy")},
                {"": _config_value(aof_reply, "appendonly")},
            )
        found: list[dict[str, str | None]] = []
        for name in ("maxmemory-policy", "appendonly"):
            replies = await client.execute_command(  # type: ignore[no-untyped-call]
                "CONFIG GET", name, target_nodes=RedisCluster.PRIMARIES
            )
            found.append(
                {f" on {node}": _config_value(reply, name) for node, reply in replies.items()}
            )
        return found[0], found[1]

    async def _memory_warnings(self) -> list[str]:
        admission = self.core.admission
        if admission is None or admission.max_memory is None:
            return []
        try:
            with redis_errors():
                await self.core.client.info("memory")
        except RedisError as exc:
            return [
                f"the admission limit on memory cannot be checked (INFO refused: {exc}):"
                " every new job will be refused"
            ]
        return []

    async def _replica_warnings(self) -> list[str]:
        required = self.core.min_replicas
        if not required:
            return []
        try:
            with redis_errors():
                # This connection wrote nothing: WAIT answers how many replicas have what
                # the server has written so far, waiting at most the timeout of a submit.
                confirmed = await self._replicas_confirming()
        except RedisError as exc:
            return [
                f"CONVEYOR_MIN_REPLICAS={required} needs WAIT, which Redis refused ({exc}):"
                " every submission will fail"
            ]
        if confirmed < required:
            return [
                f"CONVEYOR_MIN_REPLICAS={required}, but {confirmed} replicas confirmed writes"
                f" within {self.core.replica_timeout_ms} ms: submissions answer 503 until"
                " enough do"
            ]
        return []

    async def _replicas_confirming(self) -> int:
        """WAIT's answer; on a cluster, the least of every primary's (a submission may write
        to any of them; redis-py would send WAIT to one node)."""
        client, required = self.core.client, self.core.min_replicas
        timeout_ms = self.core.replica_timeout_ms
        if not is_cluster(client):
            return int(await client.wait(required, timeout_ms))
        cluster = cast(RedisCluster, client)
        await cluster.initialize()
        counts = await asyncio.gather(
            *(
                cluster.execute_command("WAIT", required, timeout_ms, target_nodes=node)
                for node in cluster.get_primaries()
            )
        )
        return min(int(count) for count in counts)

    async def close(self) -> None:
        """Send what the batcher holds, then close the client. Idempotent."""
        await self.core.close()


def _config_value(reply: Any, name: str) -> str | None:
    """One setting from a CONFIG GET reply (a dict, or a flat list on some clients)."""
    if isinstance(reply, list):
        reply = dict(zip(reply[::2], reply[1::2], strict=False))
    if not isinstance(reply, dict):
        return None
    for key, value in reply.items():
        text = key.decode() if isinstance(key, bytes) else str(key)
        if text == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None
