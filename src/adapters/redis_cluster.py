"""Redis Cluster: the URL that selects it, and redis-py's own asyncio cluster client.

A cluster URL lists some of the cluster's nodes (any of them: the client asks one for the
slot map and finds the others)::

    redis+cluster://[[user]:password@]host[:port][,host[:port]...]

A port left out is Redis's 6379. There is no database number (a cluster has only db 0) and
no query: the options are the process's own (timeouts, pool size).

Each queue's keys share one hash tag (`adapters.redis_queue.keys`), so each queue lives in
one slot, on one primary; different queues hash to different slots, spread over the
primaries. The client follows MOVED, ASK and TRYAGAIN by itself, and refreshes its slot map
after a connection error, CLUSTERDOWN or a slot no node serves.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, cast

import attrs
import redis.asyncio
from redis._parsers import AsyncCommandsParser
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from adapters.redis_urls import host_list, split_userinfo

SCHEME: Final = "redis+cluster://"
DEFAULT_PORT: Final = 6379
# What redis-py says when the node it asked for the slot map is not in cluster mode.
_NOT_A_CLUSTER: Final = "Cluster mode is not enabled"
_REDIRECTS_SPENT: Final = "TTL exhausted."
# What Conveyor says of it.
NOT_A_CLUSTER: Final = (
    "REDIS_URL names a Redis Cluster (redis+cluster://), but the server is not in cluster"
    " mode; use a redis:// URL for a single server"
)
# ... and when none of the nodes it knows answers.
_UNREACHABLE: Final = "cannot be connected"


@attrs.frozen
class ClusterTarget:
    """What a cluster URL says: some of the nodes, and the data nodes' credential."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)


def is_cluster_url(url: str) -> bool:
    return url[: len(SCHEME)].lower() == SCHEME


def parse_cluster_url(url: str) -> ClusterTarget:
    """The target of a ``redis+cluster://`` URL; ValueError (naming no credential) if not."""
    if not is_cluster_url(url):
        raise ValueError(f"a cluster URL starts with {SCHEME}")
    username, password, rest = split_userinfo(url[len(SCHEME) :])
    if "?" in rest or "#" in rest:
        raise ValueError("a cluster URL takes no parameters: host:port pairs only")
    hosts, slash, path = rest.partition("/")
    if slash and path not in ("", "0"):
        raise ValueError("a cluster URL names no database (a cluster has only db 0)")
    if not hosts:
        raise ValueError("a cluster URL lists host[:port] pairs separated by commas")
    return ClusterTarget(
        nodes=host_list(hosts, kind="a cluster URL", default_port=DEFAULT_PORT),
        username=username,
        password=password,
    )


# Commands that block on the server: they do not count against the commands in flight (a
# worker waiting on queues of several slots holds one per slot, for seconds).
_BLOCKING: Final = frozenset({"BLPOP"})
# Each node's pool may hold this many times the commands in flight: room for the blocking
# commands and the pipelines besides (a node's pool refuses a connection past its cap, it
# does not wait for one).
_NODE_HEADROOM: Final = 4


class _CommandTableOnce(AsyncCommandsParser):
    """redis-py's reader of the server's command table, read once, not again at every
    reading of the slot map. redis-py asks the map's first primary for it each time; a
    primary that died stays in the map until a replica takes its place (or for good without
    one), and while it came first every reading of the map failed, and with it every call,
    whichever primary held its keys. The table is the server's own and does not change."""

    async def initialize(self, node: ClusterNode | None = None) -> None:
        if node is not None:
            self.node = node
        if not self.commands:
            await super().initialize()


class _WaitingCluster(RedisCluster):
    """redis-py's cluster client, where a command waits (up to `pool_timeout`) while
    `max_connections` others are in flight, as the single server's pool makes it wait for a
    connection: a node's own pool raises MaxConnectionsError at once instead, which turns a
    burst of concurrent calls into errors."""

    # Redirections (MOVED, ASK) and TRYAGAIN replies one command follows before it gives
    # up; past half of them, each TRYAGAIN waits 50 ms. A script whose queue's slot is
    # being migrated is answered TRYAGAIN until the slot's keys are together again: 48
    # covers about 1.2 s of that (redis-py's 16, about 0.4 s, gave up on a migration of
    # 1,600 keys under load, a 500 before this and a 503 now).
    RedisClusterRequestTTL = 48

    def __init__(self, *, max_connections: int, pool_timeout: float, **options: Any) -> None:
        # reinitialize_steps=0: a MOVED patches the slot map with the slot's new owner,
        # never makes the client read the whole map again by closing every connection,
        # which cut the commands other callers had in flight ("Connection closed by
        # server"; a submit that ran was then answered 503).
        super().__init__(
            max_connections=max_connections * _NODE_HEADROOM, reinitialize_steps=0, **options
        )
        self._in_flight = asyncio.Semaphore(max_connections)
        self._pool_timeout = pool_timeout
        self.commands_parser = _CommandTableOnce()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if args[0] in _BLOCKING:
            return await super().execute_command(*args, **kwargs)
        if self._in_flight.locked():
            try:
                await asyncio.wait_for(self._in_flight.acquire(), self._pool_timeout)
            except TimeoutError:
                raise RedisConnectionError(
                    f"no connection to the cluster free within {self._pool_timeout:g} s"
                ) from None
        else:
            await self._in_flight.acquire()
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            self._in_flight.release()

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _RemappingPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py makes its own


# Errors after which the slot map may be wrong: a primary lost, failing over or failed over.
_REMAP_AFTER: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    SlotNotCoveredError,
)


def remap_after(client: object, errors: Any) -> None:
    """Have the cluster `client` read the slot map again before its next command if any of
    `errors` (exceptions, or replies with errors in place) says a primary was lost or moved;
    nothing for a client of one server."""
    if isinstance(client, RedisCluster) and any(isinstance(e, _REMAP_AFTER) for e in errors):
        client._initialize = True


async def subscriber(client: redis.asyncio.Redis) -> PubSub:
    """A pub/sub of `client`; on a cluster, on a node picked at random. A PUBLISH reaches
    every node's subscribers over the cluster bus, so any node will do, and a subscription
    whose node was lost finds another: redis-py's own choice is the node of the channel's
    slot, the same one each time, by a slot map that may still name the lost node."""
    if not isinstance(client, RedisCluster):
        return client.pubsub()
    await client.initialize()
    return cast(PubSub, client.pubsub(node=client.get_random_node()))


class _RemappingPipeline(ClusterPipeline):
    """redis-py's cluster pipeline, after which a lost connection or CLUSTERDOWN makes the
    client read the slot map again before its next command, as one command's does. redis-py's
    pipeline does so only on its way to a retry, and ours never retries (no command is sent
    twice): without this, after a failover every later pipeline (each submit and settle)
    went on to the dead primary, answered 503 until the process restarted."""

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        try:
            results: list[Any] = await super().execute(raise_on_error, allow_redirections)
        except RedisError as exc:
            remap_after(self.cluster_client, (exc,))
            raise
        remap_after(self.cluster_client, results)
        return results


def cluster_client(target: ClusterTarget, **options: Any) -> redis.asyncio.Redis:
    """A client of the cluster `target` names; `options` as for `create_redis`'s pool
    (timeouts, the most commands in flight and how long one waits for its turn). Nothing
    connects until the first command.

    Typed as the single-server client: it answers every command the adapters send in the
    same shape; the few places where a cluster differs (a pipeline's commands, BLPOPs over
    several slots, CONFIG per node) ask `is_cluster`."""
    options["pool_timeout"] = options.pop("timeout")
    # No command is sent twice: redis-py's cluster client would resend a command, and its
    # pipeline the commands that had not answered, after a timeout or a lost connection,
    # when they may have run (a script run twice is not always harmless: a SUBMIT run again
    # answers "not created" for the jobs the first run stored). The caller sees
    # QueueUnavailableError and tries again (the API answers 503, a worker backs off); the
    # client has marked its slot map stale and asks for it again first (its pipelines too:
    # `_RemappingPipeline`). MOVED, ASK and
    # TRYAGAIN are followed by the client itself, which sends nothing twice.
    options["retry"] = Retry(NoBackoff(), 0)
    client = _WaitingCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        username=target.username,
        password=target.password,
        **options,
    )
    return cast(redis.asyncio.Redis, client)


async def not_in_cluster_mode(url: str, *, connect_timeout: float) -> bool:
    """Whether the node a cluster URL names answers but is not in cluster mode (False when
    it is a cluster node, or none can be asked now: that is an outage, for later)."""
    target = parse_cluster_url(url)
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        username=target.username,
        password=target.password,
        socket_connect_timeout=connect_timeout,
        socket_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        await client.initialize()
    except RedisClusterException as exc:
        return not_a_cluster(exc)
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()
    return False


def is_cluster(client: object) -> bool:
    """Whether `client` is a cluster client (see `cluster_client`)."""
    return isinstance(client, RedisCluster)


def not_a_cluster(exc: BaseException) -> bool:
    """Whether `exc` says the server a cluster URL names is not in cluster mode."""
    return isinstance(exc, RedisClusterException) and _NOT_A_CLUSTER in str(exc)


def cluster_outage(exc: BaseException) -> bool:
    """Whether `exc` is the cluster client's way of saying the cluster cannot be reached or
    serves a slot on no node now (an outage, as a connection error is; redis-py raises its
    own RedisClusterException for these, not a ConnectionError)."""
    if isinstance(exc, SlotNotCoveredError):
        return True
    if isinstance(exc, ClusterError) and str(exc) == _REDIRECTS_SPENT:
        # Every redirection or TRYAGAIN of `RedisClusterRequestTTL` was spent: the command
        # never ran (a slot moving for longer, or a cluster changing its map).
        return True
    # A server that answers but is not in cluster mode is a mistake in REDIS_URL, not an
    # outage (redis-py words both as "cannot be connected").
    return (
        isinstance(exc, RedisClusterException)
        and _UNREACHABLE in str(exc)
        and not not_a_cluster(exc)
    )
