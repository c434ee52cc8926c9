"""The Redis client's connections put commands together with hiredis: byte for byte what
redis-py's own asyncio connection sends, and redis-py's refusals kept."""

from __future__ import annotations

import enum
from typing import Any

import pytest
import redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.driver_info import DriverInfo
from redis.exceptions import DataError
from redis.typing import EncodableT

from adapters.redis_client import create_redis


class _Status(enum.StrEnum):
    QUEUED = "queued"


class _Slot(enum.IntEnum):
    ONE = 1


COMMANDS: list[tuple[EncodableT, ...]] = [
    ("PING",),
    ("SCRIPT LOAD", "return 1"),
    (b"CLIENT SETINFO", b"LIB-NAME", b"x"),
    ("EVALSHA", "a" * 40, 2, "{q}:k1", "{q}:k2", -7, 2**62, 0.1, 1e-9, 3.0, "", b"\x00\xff"),
    ("HSET", "{q}:job:1", "payload", '{"to": "ünïcødé ✉", "n": 1}', "x" * 100_000),
    ("ZADD", "{q}:index", *(str(n) for n in range(2_000))),
    # Kinds hiredis encodes itself, and kinds it leaves to redis-py's encoder (an IntEnum,
    # which redis-py sends as its repr).
    ("SET", _Status.QUEUED, memoryview(b"mv"), 10**30, -0.0, float("inf")),
    ("SET", "k", _Slot.ONE, 2, _Slot.ONE),
]


def connection(url: str) -> AbstractConnection:
    """A connection as the client's pool makes one (nothing connects)."""
    pool = create_redis(url, connect_timeout=1.0, socket_timeout=1.0).connection_pool
    return pool.connection_class(**pool.connection_kwargs)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0])[:14])
def test_a_command_is_packed_as_redis_py_packs_it(command: tuple[EncodableT, ...]) -> None:
    ours = connection("redis://127.0.0.1:6399/0")
    theirs = Connection(host="127.0.0.1", port=6399)
    assert type(ours) is not Connection
    assert isinstance(ours, Connection)
    assert b"".join(ours.pack_command(*command)) == b"".join(theirs.pack_command(*command))
    assert b"".join(ours.pack_commands([command, command])) == b"".join(
        theirs.pack_commands([command, command])
    )


@pytest.mark.parametrize("value", [None, True, object()])
def test_what_redis_py_refuses_to_send_is_still_refused(value: Any) -> None:
    ours = connection("redis://127.0.0.1:6399/0")
    with pytest.raises(DataError):
        ours.pack_command("SET", "k", value)


def test_a_connection_with_another_encoding_packs_as_redis_py_does_with_it() -> None:
    ours = connection("redis://127.0.0.1:6399/0")
    theirs = Connection(host="127.0.0.1", port=6399, encoding="latin-1", encoding_errors="replace")
    ours.encoder = theirs.encoder
    command = ("SET", "k", "ünï ✉", 3)

    assert b"".join(ours.pack_command(*command)) == b"".join(theirs.pack_command(*command))
    assert b"\xfcn\xef ?" in b"".join(ours.pack_command(*command))


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("redis://127.0.0.1:6399/0", Connection),
        ("rediss://127.0.0.1:6399/0", SSLConnection),
        ("unix:///tmp/redis.sock", UnixDomainSocketConnection),
    ],
)
def test_every_scheme_keeps_its_connection_class(url: str, base: type[AbstractConnection]) -> None:
    chosen = create_redis(url, connect_timeout=1.0, socket_timeout=1.0).connection_pool
    assert issubclass(chosen.connection_class, base)
    assert chosen.connection_class is not base


def test_a_clients_connections_share_one_driver_info_with_redis_pys_own_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`CLIENT SETINFO` sends what redis-py would (its name and version), read once for the
    client: redis-py reads its package metadata for each connection left to make its own."""
    client = create_redis("redis://127.0.0.1:6399/0", connect_timeout=1.0, socket_timeout=1.0)
    reads: list[str] = []

    def read_version() -> str:
        reads.append("read")
        return "0"

    monkeypatch.setattr("redis.utils.get_lib_version", read_version)
    pool = client.connection_pool
    first, second = pool.make_connection(), pool.make_connection()  # type: ignore[no-untyped-call]

    assert first.driver_info is second.driver_info
    assert first.driver_info == DriverInfo(name="redis-py", lib_version=redis.__version__)
    assert reads == []
