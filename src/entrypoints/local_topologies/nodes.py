"""What every local topology does with its nodes: ask one a command, wait for a state."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from entrypoints.local_redis import HOST, LocalRedis, LocalRedisError

POLL_INTERVAL_S = 0.05
ASK_TIMEOUT_S = 1.0


class LocalTopologyError(LocalRedisError):
    """A local topology could not be started, wired together or changed as asked."""


def ask(port: int, *command: str | int | bytes, timeout: float = ASK_TIMEOUT_S) -> Any:
    """Run one command on ``127.0.0.1:port`` over a fresh connection; return the raw reply.

    Raw RESP2 replies (no redis-py reply parsing, which varies between its versions, and no
    RESP3 maps, which newer redis-py asks for by default), over a fresh, short-lived
    connection because nodes come and go, which is what these topologies are for.
    """
    return _ask(port, command, timeout, decode=True)


def ask_bytes(port: int, *command: str | int | bytes, timeout: float = ASK_TIMEOUT_S) -> Any:
    """As :func:`ask`, with replies left as bytes: keys need not be UTF-8."""
    return _ask(port, command, timeout, decode=False)


def _ask(port: int, command: tuple[str | int | bytes, ...], timeout: float, decode: bool) -> Any:
    connection = redis.Connection(  # type: ignore[no-untyped-call]  # unannotated
        host=HOST,
        port=port,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), retries=0),
        decode_responses=decode,
        protocol=2,
    )
    try:
        connection.send_command(*command)  # type: ignore[no-untyped-call]
        return connection.read_response()
    finally:
        connection.disconnect()  # type: ignore[no-untyped-call]


def info(port: int, section: str) -> dict[str, str]:
    """One INFO section as text fields, e.g. ``{"master_link_status": "up", ...}``."""
    lines = str(ask(port, "INFO", section)).splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line and line[0] != "#")


def pairs(reply: Iterable[Any]) -> dict[str, str]:
    """A RESP2 flat ``[key, value, key, value, ...]`` reply (SENTINEL MASTER) as a dict."""
    items = iter(reply)
    return {str(key): str(value) for key, value in zip(items, items, strict=True)}


def wait_until(what: str, timeout: float, pending: Callable[[], str | None]) -> None:
    """Poll ``pending`` until it returns None (done); it returns why not yet, for the error.

    Redis errors count as "not yet": a node may still be loading, or be the one killed.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            why = pending()
        except redis.RedisError as exc:
            why = repr(exc)
        if why is None:
            return
        if time.monotonic() >= deadline:
            raise LocalTopologyError(f"{what} not reached within {timeout:.1f}s: {why}")
        time.sleep(POLL_INTERVAL_S)


def stop_all(nodes: Iterable[LocalRedis]) -> None:
    """Stop every node, even when stopping one fails, then raise the first failure."""
    failure: BaseException | None = None
    for node in nodes:
        try:
            node.stop()
        except BaseException as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
