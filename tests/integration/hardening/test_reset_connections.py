"""A server that resets every connection it accepts, as a dying primary or one a failover
promotes or demotes (killing its clients) does: every call through the adapters' client is an
outage (`QueueUnavailableError`: the API answers 503, a worker backs off), never another error
(the API would answer 500).

On uvloop, the loop of the API and the workers, a command written to a connection the server
has just reset raises a RuntimeError instead of an OSError, now and then: the test goes on
until it has seen that one too, so it cannot pass without it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
import redis.asyncio
import uvloop

from adapters.redis_client import create_redis, redis_errors
from domain.errors import QueueUnavailableError

CALLS_AT_LEAST = 200
CALLS_AT_MOST = 20_000
AT_ONCE = 50  # calls in flight together: their retries' backoffs overlap


@pytest.fixture
def resetting_port() -> Iterator[int]:
    """A loopback port whose server resets each connection as soon as it accepts it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            # SO_LINGER with a zero timeout: close() sends a reset, not a FIN.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_every_call_to_a_server_resetting_its_connections_is_an_outage(
    resetting_port: int,
) -> None:
    causes: Counter[str] = Counter()

    async def call(client: redis.asyncio.Redis) -> None:
        with pytest.raises(QueueUnavailableError) as raised, redis_errors():
            await client.ping()
        causes[type(raised.value.__cause__).__name__] += 1

    async def calls() -> None:
        client = create_redis(
            f"redis://127.0.0.1:{resetting_port}/0",
            connect_timeout=1.0,
            socket_timeout=1.0,
            max_connections=AT_ONCE,
        )
        try:
            while causes.total() < CALLS_AT_MOST:
                await asyncio.gather(*(call(client) for _ in range(AT_ONCE)))
                if causes.total() >= CALLS_AT_LEAST and causes["RuntimeError"]:
                    return
        finally:
            await client.aclose()

    uvloop.run(calls())
    assert causes["RuntimeError"] > 0, (
        f"no write on a reset connection in {causes.total()} calls: the test did not see "
        f"the case it is for; causes: {dict(causes)}"
    )
