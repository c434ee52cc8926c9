"""Settling an attempt stores the same job on the memory backend, on fakeredis and on a real
Redis, and what the domain says (the drawn cases and the comparison are in the unit twin,
`tests/unit/test_settlement_agreement.py`)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack

import fakeredis
import pytest
from hypothesis import HealthCheck, given, settings

from adapters.redis_client import create_redis
from tests.unit.test_settlement_agreement import (
    EXAMPLES,
    Case,
    MemoryBacking,
    RedisBacking,
    agree,
    cases,
    fakeredis_backing,
)

_FAKE_SERVER = fakeredis.FakeServer(version=(7,))


@pytest.fixture(scope="module")
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this module's own, whose keys are deleted afterwards."""
    prefix = f"test-{uuid.uuid4().hex}"
    yield prefix

    async def delete() -> None:
        client = create_redis(redis_url, connect_timeout=2.0, socket_timeout=5.0)
        try:
            for pattern in (f"{{{prefix}:*", f"{prefix}:*"):
                keys = [k async for k in client.scan_iter(match=pattern, count=1000)]
                for start in range(0, len(keys), 500):
                    await client.unlink(*keys[start : start + 500])
        finally:
            await client.aclose()

    asyncio.run(delete())


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_memory_fakeredis_and_a_real_redis_settle_every_ending_alike(
    redis_url: str, redis_prefix: str, case: Case
) -> None:
    async def main() -> None:
        async with AsyncExitStack() as stack:
            fake = await stack.enter_async_context(fakeredis_backing(_FAKE_SERVER))
            client = create_redis(redis_url, connect_timeout=2.0, socket_timeout=5.0)
            real = RedisBacking("redis", client, redis_prefix)
            stack.push_async_callback(real.backend.connection.close)
            await agree(case, [MemoryBacking(), fake, real])

    asyncio.run(main())
