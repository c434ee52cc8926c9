"""Load for the hardening tests: many requests over keep-alive connections, answers counted or
timed as they come, and the Redis commands a server ran, from its INFO commandstats.

Lighter than `tests/integration/http_load.py` for hundreds of thousands of requests: a
connection sends a few requests at once (HTTP/1.1 pipelining, which uvicorn answers in order)
and keeps only each answer's status and time.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import redis


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def post_json(path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, Mapping[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split(" ")[1]), headers, body


async def count_answers(
    port: int,
    requests: Iterator[bytes],
    *,
    connections: int = 32,
    depth: int = 4,
    on_answer: Callable[[int, bytes], None] | None = None,
) -> Counter[int]:
    """Send every request of `requests` (shared by `connections` connections, `depth` at a
    time on each); answers how many answers had each status."""
    statuses: Counter[int] = Counter()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                batch = [request for _, request in zip(range(depth), requests, strict=False)]
                if not batch:
                    return
                writer.write(b"".join(batch))
                for _ in batch:
                    status, _, body = await asyncio.wait_for(read_answer(reader), 30)
                    statuses[status] += 1
                    if on_answer is not None:
                        on_answer(status, body)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return statuses


async def timed_answers(
    port: int, requests: list[bytes], *, connections: int = 4
) -> list[tuple[int, float, bytes]]:
    """Each request, one at a time per connection: its status, seconds, and body, in order."""
    answers: list[tuple[int, float, bytes] | None] = [None] * len(requests)
    pending = iter(enumerate(requests))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for index, request in pending:
                started = time.perf_counter()
                writer.write(request)
                status, _, body = await asyncio.wait_for(read_answer(reader), 30)
                answers[index] = (status, time.perf_counter() - started, body)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return [answer for answer in answers if answer is not None]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class CommandCounter:
    """How many commands a Redis server ran, by name, from INFO commandstats: read before
    and after what is measured. INFO itself is left out."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)

    def snapshot(self) -> Counter[str]:
        stats: dict[str, Any] = self._client.info("commandstats")
        return Counter(
            {
                name.removeprefix("cmdstat_"): int(value["calls"])
                for name, value in stats.items()
                if not name.startswith("cmdstat_info")
            }
        )

    def close(self) -> None:
        self._client.close()
