"""The `redis.asyncio` client a process uses, and its failures named in domain terms."""

from __future__ import annotations

from contextlib import AbstractContextManager
from types import TracebackType
from typing import Final

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, ReadOnlyError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from domain.errors import QueueUnavailableError

HEALTH_CHECK_INTERVAL_S: Final = 30
DEFAULT_MAX_CONNECTIONS: Final = 64
DEFAULT_POOL_TIMEOUT_S: Final = 5.0
_RETRIES: Final = 2
_BACKOFF_BASE_S: Final = 0.02
_BACKOFF_CAP_S: Final = 0.25


def create_redis(
    url: str,
    *,
    connect_timeout: float,
    socket_timeout: float | None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    pool_timeout: float = DEFAULT_POOL_TIMEOUT_S,
) -> redis.asyncio.Redis:
    """A client for `url` (``redis://``, ``rediss://``, ``unix://``; passwords in the URL work).

    Nothing connects until the first command. Responses are *bytes*
    (``decode_responses=False``): the queue adapter decodes what it stores itself, so one odd
    byte planted in Redis cannot break a whole reply.

    `socket_timeout` bounds every read, so it must exceed the longest blocking command the
    process issues: a waiting `RedisLeaseQueue.claim` blocks in BLPOP for at most
    `RedisLeaseQueue.MAX_BLOCK_SECONDS` (1 s) at a time, so use at least 2 s, or None.

    The pool holds at most `max_connections`; a command issued while all are busy waits up
    to `pool_timeout` for one (redis-py's default pool raises at once instead, which turns a
    burst of concurrent calls into errors).

    Connection errors are retried twice with a short exponential backoff (a pooled connection
    to a restarted server fails once, the retry reconnects), so an outage surfaces as
    `QueueUnavailableError` within about half a second. Timeouts are *not* retried: a command
    that timed out may have run, and running a script twice is not always harmless.
    """
    retry = Retry(
        ExponentialBackoff(cap=_BACKOFF_CAP_S, base=_BACKOFF_BASE_S),
        _RETRIES,
        supported_errors=(RedisConnectionError,),
    )
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        decode_responses=False,
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        socket_keepalive=True,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=retry,
    )
    # from_pool: closing the client closes the pool it owns.
    client: redis.asyncio.Redis = redis.asyncio.Redis.from_pool(pool)
    return client


def unavailable(exc: BaseException) -> QueueUnavailableError | None:
    """The domain's error for a Redis failure that a later retry may cure, else None."""
    if isinstance(exc, BusyLoadingError):
        return QueueUnavailableError("redis is loading its dataset", retry_after=2.0)
    if isinstance(exc, ReadOnlyError):
        return QueueUnavailableError("redis is a read-only replica (failover?)", retry_after=2.0)
    if isinstance(exc, RedisTimeoutError):
        return QueueUnavailableError(f"redis timed out: {exc}")
    if isinstance(exc, RedisConnectionError | OSError):
        return QueueUnavailableError(f"cannot reach redis: {exc}")
    return None


class _RedisErrors:
    """Re-raises connection, timeout and loading errors as `QueueUnavailableError`.

    A class rather than a @contextmanager generator: it wraps every queue call, and this is
    several times cheaper.
    """

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None and isinstance(exc, _UNAVAILABLE):
            mapped = unavailable(exc)
            if mapped is not None:
                raise mapped from exc


_UNAVAILABLE: Final = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)
_REDIS_ERRORS: Final = _RedisErrors()


def redis_errors() -> AbstractContextManager[None]:
    """A context that re-raises connection, timeout and loading errors as
    `QueueUnavailableError`; anything else passes through unchanged."""
    return _REDIS_ERRORS
