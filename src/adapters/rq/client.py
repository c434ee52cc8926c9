"""The Redis client RQ needs, and calls to it named in domain terms."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry as RedisRetry

from adapters.redis_client import redis_errors

T = TypeVar("T")


def create_rq_redis(
    url: str, *, connect_timeout: float, socket_timeout: float | None
) -> redis.Redis:
    """A synchronous, bytes-mode client for RQ (which cannot use redis.asyncio or decoded
    responses). Connection errors are retried twice, like the async client's."""
    client: redis.Redis = redis.Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        socket_keepalive=True,
        health_check_interval=30,
        retry=RedisRetry(ExponentialBackoff(cap=0.25, base=0.02), 2),
        retry_on_error=[RedisConnectionError],
        # Resolved once, here: otherwise redis-py reads its package metadata for every new
        # connection, and each work-horse RQ forks opens one (about 4 ms a job).
        driver_info=DriverInfo(),
    )
    return client


def guarded(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)`, with Redis being unreachable raised as QueueUnavailableError."""
    with redis_errors():
        return fn(*args)


def text(value: object) -> str:
    """A Redis reply (bytes) or a name (str) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
