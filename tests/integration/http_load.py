"""A lean HTTP/1.1 load client for tests that send tens of thousands of requests.

httpx's connection pool costs more CPU per request than the API under test does (on two
cores it caps a run near 200 requests/s at 64 connections); this client sends each request on
its own keep-alive connection and reads the answer by its Content-Length, nothing more.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from typing import Any

import attrs


@attrs.frozen
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.frozen
class Request:
    method: str
    path: str
    body: Any = None
    headers: Mapping[str, str] = attrs.field(factory=dict)

    def encode(self) -> bytes:
        payload = b"" if self.body is None else json.dumps(self.body).encode()
        lines = [f"{self.method} {self.path} HTTP/1.1", "Host: 127.0.0.1"]
        if self.body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def _read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(int(status_line.split(" ")[1]), headers, body)


async def send_all(
    port: int, requests: Iterable[Request], *, connections: int = 64, reply_within: float = 30.0
) -> list[Answer]:
    """Send every request over `connections` keep-alive connections at once; answers in the
    order the requests were given."""
    pending = list(enumerate(requests))
    answers: list[Answer | None] = [None] * len(pending)
    queue: asyncio.Queue[tuple[int, Request]] = asyncio.Queue()
    for item in pending:
        queue.put_nowait(item)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                index, request = queue.get_nowait()
                writer.write(request.encode())
                await writer.drain()
                answers[index] = await asyncio.wait_for(_read_answer(reader), reply_within)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    assert all(a is not None for a in answers)
    return [a for a in answers if a is not None]
