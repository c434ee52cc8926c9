"""The `redis.asyncio` client a process uses, and its failures named in domain terms."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Final, cast

import hiredis
import redis.asyncio
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelManagedConnection
from redis.backoff import ExponentialBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import BusyLoadingError, ClusterError, RedisClusterException, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from adapters.redis_cluster import (
    NOT_A_CLUSTER,
    cluster_client,
    cluster_outage,
    is_cluster_url,
    not_a_cluster,
    parse_cluster_url,
)
from adapters.redis_sentinel import is_sentinel_url, parse_sentinel_url, sentinel_client
from domain.errors import QueueUnavailableError

HEALTH_CHECK_INTERVAL_S: Final = 30
DEFAULT_MAX_CONNECTIONS: Final = 64
DEFAULT_POOL_TIMEOUT_S: Final = 5.0
_RETRIES: Final = 2
_BACKOFF_BASE_S: Final = 0.02
_BACKOFF_CAP_S: Final = 0.25
# What `CLIENT SETINFO` sends (redis-py and its version), made once per process: left to
# each connection, redis-py reads its package metadata again for every one (1.4-3 ms each).
# The version is its own `__version__`, the one its metadata holds: reading the metadata
# would load `importlib.metadata`, which the `conveyor` command leaves for later (`launch`).
_DRIVER_INFO: Final = DriverInfo(name="redis-py", lib_version=redis.__version__)


def create_redis(
    url: str,
    *,
    connect_timeout: float,
    socket_timeout: float | None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    pool_timeout: float = DEFAULT_POOL_TIMEOUT_S,
) -> redis.asyncio.Redis:
    """A client for `url` (``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``
    for the primary a set of Sentinels names, see `adapters.redis_sentinel`, or
    ``redis+cluster://`` for a Redis Cluster, see `adapters.redis_cluster`; passwords in the
    URL work).

    Nothing connects until the first command. Responses are *bytes*
    (``decode_responses=False``): the queue adapter decodes what it stores itself, so one odd
    byte planted in Redis cannot break a whole reply.

    `socket_timeout` bounds every read, so it must exceed the longest blocking command the
    process issues: a waiting `RedisLeaseQueue.claim` blocks in BLPOP for at most
    `RedisLeaseQueue.MAX_BLOCK_SECONDS` (4 s) at a time, so use at least 5 s, or None.

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
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": pool_timeout,
        "decode_responses": False,
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "retry": retry,
        "driver_info": _DRIVER_INFO,
    }
    if is_sentinel_url(url):
        # The retry above also follows a failover: a demoted primary's READONLY becomes a
        # connection error, and the next connection asks the Sentinels again.
        return sentinel_client(
            parse_sentinel_url(url), connection_class=_CPackedSentinel, **options
        )
    if is_cluster_url(url):
        # redis-py's cluster nodes make their own connections: commands are packed in
        # Python there.
        return cluster_client(parse_cluster_url(url), **options)
    pool = redis.asyncio.BlockingConnectionPool.from_url(url, **options)
    # The URL's scheme chose the class (plain, TLS or a unix socket); no connection exists yet.
    pool.connection_class = _C_PACKING.get(pool.connection_class, pool.connection_class)
    # from_pool: closing the client closes the pool it owns.
    client: redis.asyncio.Redis = redis.asyncio.Redis.from_pool(pool)
    return client


def _pack_in_c(self: AbstractConnection, *args: EncodableT) -> list[bytes]:
    """A command in the Redis protocol, each argument encoded as redis-py encodes it and the
    whole put together by hiredis in C.

    redis-py's asyncio connection puts a command together in Python, joining its buffer
    again for every argument: with the hundreds of arguments of a batched submit, most of a
    bulk submission's time (its synchronous client already packs with hiredis)."""
    if isinstance(args[0], str):
        args = (*args[0].encode().split(), *args[1:])
    elif isinstance(args[0], bytes) and b" " in args[0]:
        args = (*args[0].split(), *args[1:])
    encoder = self.encoder
    if encoder.encoding == "utf-8" and encoder.encoding_errors == "strict":
        # hiredis encodes bytes, str, int and float exactly as redis-py's encoder does with
        # these settings, in C, and refuses (TypeError) every other type: those, bool and
        # None among them, go through redis-py's own encoding, to be sent or refused as it
        # would.
        with contextlib.suppress(TypeError):
            return [hiredis.pack_command(cast(Any, args))]  # its stub types a 1-tuple
    return [hiredis.pack_command(tuple(map(encoder.encode, args)))]


class _CPacked(Connection):
    pack_command = _pack_in_c


class _CPackedSSL(SSLConnection):
    pack_command = _pack_in_c


class _CPackedUnix(UnixDomainSocketConnection):
    pack_command = _pack_in_c


class _CPackedSentinel(SentinelManagedConnection):
    pack_command = _pack_in_c


_C_PACKING: Final[Mapping[type[AbstractConnection], type[AbstractConnection]]] = {
    Connection: _CPacked,
    SSLConnection: _CPackedSSL,
    UnixDomainSocketConnection: _CPackedUnix,
}


# Replies by which a server refuses a command for a while, by their error code, with what to
# tell the caller and how long it should wait. Redis gives each of them before the command (or
# script) has written anything (a script is refused at its first write that could grow memory,
# never after one), so the caller may always try again: an outage, not a bug, and not the
# client's fault.
_REFUSALS: Final[Mapping[str, tuple[str, float]]] = {
    "OOM": ("redis is out of memory (maxmemory reached; nothing is evicted)", 5.0),
    "LOADING": ("redis is loading its dataset", 2.0),
    "BUSY": ("redis is busy running a script", 1.0),
    "READONLY": ("redis is a read-only replica (failover?)", 2.0),
    "MASTERDOWN": ("redis lost the link to its primary", 2.0),
    "MISCONF": ("redis refuses writes: it cannot persist to disk", 5.0),
    "NOREPLICAS": ("redis refuses writes: too few replicas are in sync", 2.0),
    "TRYAGAIN": ("redis cluster is moving the keys", 1.0),
    "CLUSTERDOWN": ("redis cluster is down", 2.0),
}
# Redis 6 reports a command refused inside a script as `ERR Error running script ...: -OOM
# command not allowed ...`; Redis 7 and Valkey keep the command's own code.
_CODE_IN_SCRIPT_ERROR: Final = re.compile(r"\s-([A-Z]+) ")


def refusal_code(exc: ResponseError) -> str | None:
    """The code of a server's transient refusal (`OOM`, `BUSY`, ...), else None."""
    code = exc.status_code
    message = str(exc)
    if code is None:  # a code redis-py does not know stays at the start of the message
        code = message.split(" ", 1)[0]
    if code == "ERR" or code not in _REFUSALS:
        found = _CODE_IN_SCRIPT_ERROR.search(message) if "script" in message else None
        code = found.group(1) if found else None
    return code if code in _REFUSALS else None


# uvloop (the loop of the API and the workers) raises a RuntimeError saying so when a command
# is written to a connection the server has just closed, where asyncio's own loop raises an
# OSError or drops the write (MagicStack/uvloop#506): a primary dying, or killing its clients
# as a failover promotes or demotes it. Nothing was sent: an outage like any lost connection.
_CLOSED_TRANSPORT: Final = "the handler is closed"


def unavailable(exc: BaseException) -> QueueUnavailableError | None:
    """The domain's error for a Redis failure that a later retry may cure, else None.

    One place decides what is an outage: an unreachable or silent server, and the refusals
    of `_REFUSALS` (a full Redis, a replica after a failover, a server loading or busy). The
    API answers them with 503 + `Retry-After`; workers back off and try again.
    """
    if isinstance(exc, BusyLoadingError):
        return QueueUnavailableError(*_REFUSALS["LOADING"])
    if isinstance(exc, ResponseError):
        code = refusal_code(exc)
        return None if code is None else QueueUnavailableError(*_REFUSALS[code])
    if isinstance(exc, RedisTimeoutError):
        return QueueUnavailableError(f"redis timed out: {exc}")
    if isinstance(exc, RedisConnectionError | OSError):
        return QueueUnavailableError(f"cannot reach redis: {exc}")
    if isinstance(exc, RuntimeError) and _CLOSED_TRANSPORT in str(exc):
        return QueueUnavailableError(f"cannot reach redis: the connection was closed ({exc})")
    if isinstance(exc, RedisClusterException | ClusterError):
        if not_a_cluster(exc):
            # Start-up refuses it (`Connection.verify`); a process that got past its check
            # while the server was away sees it as an outage.
            return QueueUnavailableError(NOT_A_CLUSTER, 5.0)
        if cluster_outage(exc):
            return QueueUnavailableError(f"redis cluster unavailable: {exc}", 2.0)
    return None


class _RedisErrors:
    """Re-raises what `unavailable` calls an outage as `QueueUnavailableError`.

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


_UNAVAILABLE: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    ResponseError,
    OSError,
    RuntimeError,
    RedisClusterException,
    ClusterError,
)
_REDIS_ERRORS: Final = _RedisErrors()


def redis_errors() -> AbstractContextManager[None]:
    """A context that re-raises what `unavailable` calls an outage as `QueueUnavailableError`;
    anything else passes through unchanged."""
    return _REDIS_ERRORS
