"""Finding the primary through Redis Sentinel, and following it after a failover.

A Sentinel URL names the Sentinels and the service they watch::

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]
        [?sentinel_username=...&sentinel_password=...]

The userinfo is the data nodes' credential; the Sentinels' own (if they require one) goes in
the query. A port left out is Sentinel's 26379.

The client is redis-py's Sentinel-managed client: every new connection asks the Sentinels
where the primary is, a connection to a primary that was demoted answers READONLY, which
redis-py turns into a connection error, and the client's retry reconnects to the new primary.
So the API and the workers follow a failover without a restart; in the seconds before the
Sentinels agree on a new primary, calls fail as `QueueUnavailableError` (a 503 to the API, a
back-off to a worker).
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import unquote

import attrs
import redis.asyncio
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)
from redis.exceptions import RedisError

from adapters.redis_urls import host_list, split_userinfo

SCHEME: Final = "redis+sentinel://"
DEFAULT_PORT: Final = 26379
_QUERY: Final = frozenset({"sentinel_username", "sentinel_password"})


@attrs.frozen
class SentinelTarget:
    """What a Sentinel URL says: where the Sentinels are, which service, and credentials."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)
    sentinel_username: str | None = attrs.field(default=None, repr=False)
    sentinel_password: str | None = attrs.field(default=None, repr=False)


def is_sentinel_url(url: str) -> bool:
    return url[: len(SCHEME)].lower() == SCHEME


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The target of a ``redis+sentinel://`` URL; ValueError (naming no credential) if not."""
    if not is_sentinel_url(url):
        raise ValueError(f"a Sentinel URL starts with {SCHEME}")
    rest, _, query = url[len(SCHEME) :].partition("?")
    username, password, rest = split_userinfo(rest)
    hosts, slash, path = rest.partition("/")
    sentinels = host_list(hosts, kind="a Sentinel URL", default_port=DEFAULT_PORT)
    parts = [part for part in path.split("/") if part] if slash else []
    if not parts:
        raise ValueError("a Sentinel URL names the service after the hosts: .../<service>")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError("a Sentinel URL's path is /<service> or /<service>/<db number>")
    options = _query(query)
    return SentinelTarget(
        sentinels=sentinels,
        service=unquote(parts[0]),
        db=int(parts[1]) if len(parts) == 2 else 0,
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username"),
        sentinel_password=options.get("sentinel_password"),
    )


def _query(query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        name, _, value = item.partition("=")
        if name not in _QUERY:
            raise ValueError(f"a Sentinel URL takes only {', '.join(sorted(_QUERY))} as parameters")
        options[name] = unquote(value)
    return options


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool, waiting for a free connection as the plain client's pool does
    (redis-py's Sentinel pool raises at once when all are busy)."""


class _SentinelRedis(redis.asyncio.Redis):
    """The primary's client; closing it closes its connections to the Sentinels too."""

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            await self.sentinels.aclose()


def sentinel_client(
    target: SentinelTarget,
    *,
    connection_class: type[SentinelManagedConnection],
    **connection: Any,
) -> redis.asyncio.Redis:
    """A client of the primary `target`'s Sentinels name; `connection` as for a pool of
    `redis.asyncio` (timeouts, retry, pool size and ``timeout`` for a free connection)."""
    timeouts = {
        key: connection[key]
        for key in ("socket_connect_timeout", "socket_timeout")
        if connection.get(key) is not None
    }
    sentinels = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs={
            **timeouts,
            "username": target.sentinel_username,
            "password": target.sentinel_password,
        },
    )
    client = sentinels.master_for(
        target.service,
        redis_class=_SentinelRedis,
        connection_pool_class=_BlockingSentinelPool,
        connection_class=connection_class,
        db=target.db,
        username=target.username,
        password=target.password,
        **connection,
    )
    assert isinstance(client, _SentinelRedis)
    client.sentinels = sentinels
    return client


async def unknown_service(client: object, cause: BaseException | None) -> str | None:
    """One line saying the Sentinels know no primary by `client`'s service name, when
    `cause` is redis-py's MasterNotFoundError and every Sentinel answered without it; None
    otherwise (a Sentinel out of reach, or a primary they know but hold down: a failover
    under way, an outage for later). A mistyped service name is a mistake in REDIS_URL,
    and waiting will not cure it."""
    if not isinstance(cause, MasterNotFoundError) or not isinstance(client, _SentinelRedis):
        return None
    pool = client.connection_pool
    if client.sentinels is None or not isinstance(pool, SentinelConnectionPool):
        return None
    service = pool.service_name
    for sentinel in client.sentinels.sentinels:
        try:
            masters = await sentinel.sentinel_masters()
        except (RedisError, OSError):
            return None
        if service in masters:
            return None
    return (
        f"no Sentinel of REDIS_URL knows a primary named {service!r}: check the service name"
        " after the hosts (redis+sentinel://host:port,.../<service>) against the Sentinels'"
        " `sentinel monitor` lines"
    )
