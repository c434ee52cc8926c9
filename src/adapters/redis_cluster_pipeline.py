"""One round trip on Redis Cluster, sent primary by primary, each command's answer (or
error) its own; optionally with each primary's writes confirmed by WAIT.

The commands are grouped by the primary that owns their slot, and each group is sent on
one connection of that primary (as redis-py's cluster pipeline sends a node's group,
`ClusterNode.execute_pipeline`). Unlike that pipeline, a primary that cannot be reached
fails only its own commands: the others' answers are kept (they ran), and the caller
answers each call with its own outcome.

With `wait`, each group is followed by ``WAIT N timeout`` on the same connection: WAIT
blocks a connection until N replicas have acknowledged everything that connection wrote,
and it counts the replicas of the one node that connection reaches, so each primary
confirms its own part (redis-py routes a WAIT of its own to one default node, on a
connection that wrote nothing). Each command's count is its own node's: the caller takes
the least over the commands an answer depends on (one slow primary need not hold up the
answers of the others).

A command answered MOVED, ASK or TRYAGAIN did not run on that node. It is sent again in the
next pass, to the node that serves its slot now (with a WAIT of its own there): MOVED
patches the slot map first, as the client itself does with ``reinitialize_steps=0``; ASK
sends ASKING just before the command, on the same connection. Nothing that ran is sent
again. After the client's ``RedisClusterRequestTTL`` passes (TRYAGAIN waiting 50 ms once
half are spent, as the client's own commands do), what is left answers ClusterError("TTL
exhausted."), an outage (see `adapters.redis_cluster`).

A node whose connection fails answers that error for each of its commands (they may have
run: nothing is sent again), and the client reads the slot map again before its next
command, as it does after a single command's connection error.

This reaches into redis-py's cluster client (its slot map, a node's pipeline); nowhere else
does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.cluster import PRIMARY
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    NoScriptError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from adapters.redis_cluster import remap_after

# A command as a pipeline queued it: its arguments and options.
Command = tuple[Sequence[Any], Mapping[str, Any]]
# How many replicas confirmed a command: its node's WAIT answer (a count, or the error it
# answered instead), or None when the command did not run.
Acknowledged = int | Exception | None

# Answers that say the command did not run on the node that gave them.
_REFUSED_UNRUN: Final = (AskError, TryAgainError, NoScriptError, ClusterDownError)
_TRYAGAIN_PAUSE_S: Final = 0.05


async def execute_per_node(
    client: object, commands: Sequence[Command], wait: tuple[int, int] | None = None
) -> tuple[list[Any], list[Acknowledged]]:
    """Run `commands` on the cluster `client` reaches, each primary's on one connection and,
    with `wait` (replicas, timeout in ms), followed by ``WAIT replicas timeout`` on it;
    answers each command's reply (an error in place, as ``raise_on_error=False``) and, per
    command, how many replicas confirmed it (None without `wait`).
    """
    cluster = cast(RedisCluster, client)
    await cluster.initialize()
    results: list[Any] = [None] * len(commands)
    acknowledged: list[Acknowledged] = [None] * len(commands)
    pending = list(range(len(commands)))
    asking: dict[int, ClusterNode] = {}
    passes = cluster.RedisClusterRequestTTL
    while pending:
        if passes <= 0:
            for i in pending:
                results[i] = ClusterError("TTL exhausted.")
            break
        passes -= 1
        groups: dict[str, tuple[ClusterNode, list[int]]] = {}
        for i in pending:
            node = asking.get(i)
            if node is None:
                try:
                    node = await _node_of(cluster, commands[i][0])
                except RedisError as exc:  # a slot no node serves now, say
                    results[i] = exc
                    cluster._initialize = True
                    continue
            groups.setdefault(node.name, (node, []))[1].append(i)
        sends = [_send(node, indexes, commands, asking, wait) for node, indexes in groups.values()]
        answers = await asyncio.gather(*sends, return_exceptions=True)
        pending, asking, again = [], {}, False
        for (node, indexes), answer in zip(groups.values(), answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, Exception):
                    raise answer
                answer = ([answer] * len(indexes), answer)
            replies, waited = answer
            if waited is not None and not isinstance(waited, Exception):
                waited = int(waited)
            await _after_errors(cluster, node, (*replies, waited))
            for i, reply in zip(indexes, replies, strict=True):
                if isinstance(reply, MovedError):  # an AskError too: first
                    await cluster.nodes_manager.move_slot(reply)
                    pending.append(i)
                elif isinstance(reply, AskError):
                    asking[i] = _node_at(cluster, reply)
                    pending.append(i)
                elif isinstance(reply, TryAgainError):
                    pending.append(i)
                    again = True
                else:
                    results[i] = reply
                    if wait is not None and not isinstance(reply, _REFUSED_UNRUN):
                        acknowledged[i] = waited
        if again and passes < cluster.RedisClusterRequestTTL / 2:
            await asyncio.sleep(_TRYAGAIN_PAUSE_S)
    return results, acknowledged


async def _send(
    node: ClusterNode,
    indexes: Sequence[int],
    commands: Sequence[Command],
    asking: Mapping[int, ClusterNode],
    wait: tuple[int, int] | None,
) -> tuple[list[Any], Any]:
    """One node's commands, and a WAIT if asked, on one of its connections (one write, then
    the replies in order); answers the replies and WAIT's (None without)."""
    stack: list[PipelineCommand] = []
    mine: list[PipelineCommand] = []
    for i in indexes:
        args, options = commands[i]
        if i in asking:  # allows the next command only, on this connection
            stack.append(PipelineCommand(-1, "ASKING"))
        command = PipelineCommand(i, *args, **options)
        stack.append(command)
        mine.append(command)
    waited = None if wait is None else PipelineCommand(-1, "WAIT", *wait)
    if waited is not None:
        stack.append(waited)
    try:
        await node.execute_pipeline(stack)
    except (AttributeError, RuntimeError) as exc:
        # The connection was closed under this call while it was being opened: redis-py
        # closes every connection of the client when a single command meets CLUSTERDOWN,
        # and its stream then fails with these (seen as 500s in the failover test). A lost
        # connection; what it sent, if anything, is not sent again.
        raise RedisConnectionError(f"connection closed while in use: {exc!r}") from exc
    return [command.result for command in mine], None if waited is None else waited.result


async def _node_of(cluster: RedisCluster, args: Sequence[Any]) -> ClusterNode:
    """The primary serving the slot of the command's keys, by the client's slot map."""
    slot = await cluster._determine_slot(*args)
    return cluster.nodes_manager.get_node_from_slot(slot)


def _node_at(cluster: RedisCluster, redirect: AskError) -> ClusterNode:
    """The node an ASK names, added to the client's nodes if it did not know it (as a
    MOVED to a new node adds it)."""
    manager = cluster.nodes_manager
    node = manager.get_node(host=redirect.host, port=redirect.port)
    if node is None:
        node = ClusterNode(redirect.host, redirect.port, PRIMARY, **manager.connection_kwargs)
        manager.set_nodes(manager.nodes_cache, {node.name: node})
    return node


async def _after_errors(cluster: RedisCluster, node: ClusterNode, replies: Sequence[Any]) -> None:
    """What the client does after a command's connection error (the node's connections in
    use are made again once released, and it is asked last for the slot map) or CLUSTERDOWN:
    the slot map is read again before the next command, since a failover may have moved the
    node's slots. Its free connections are left alone: disconnecting them from here raced
    with another call taking one and connecting it (redis-py's single commands do so; it
    cost that call a 500 in the failover test), and one that is broken fails on its next
    use as any lost connection does."""
    if any(isinstance(r, RedisConnectionError | RedisTimeoutError | OSError) for r in replies):
        node.update_active_connections_for_reconnect()
        cluster.nodes_manager.move_node_to_end_of_cached_nodes(node.name)
    remap_after(cluster, replies)
