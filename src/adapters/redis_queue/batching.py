"""Coalescing the calls made in one event-loop tick into one round trip.

A worker that finishes 100 jobs at once calls `complete` 100 times; an API under load calls
`submit` from many requests at once. Each call is queued here with a future, and a flush
scheduled with `call_soon` runs once every coroutine that was ready in this tick has had its
turn: it sends one script call per (script, group) with every call's arguments (all in one
pipeline) and resolves each future with that call's own answer. A lone call costs one loop
iteration of latency, nothing more.

The script answers each call on its own: a call refused (a stale lease, a submission over an
admission limit) does not affect the calls batched with it, and its caller alone sees the
refusal. An answer that is an exception (that refusal, or on Redis Cluster the error of the
primary holding the call's keys) is raised to its caller alone. A call whose caller is
cancelled after submitting may still be written, exactly like a command already sent on a
socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import attrs

MAX_CALLS_PER_SCRIPT: Final = 256  # keeps each script run short (well under a millisecond)


@attrs.define
class Batch:
    """Calls of one script on one group of keys (a queue), to be run as one invocation."""

    script: object  # a tag the runner dispatches on
    group: str
    calls: list[Any] = attrs.field(factory=list)
    futures: list[asyncio.Future[Any]] = attrs.field(factory=list)


# Runs batches (in order, one round trip) and answers, per batch, one answer per call.
Runner = Callable[[Sequence[Batch]], Awaitable[Sequence[Sequence[Any]]]]


class TickBatcher:
    def __init__(self, run: Runner) -> None:
        self._run = run
        self._batches: list[Batch] = []  # to send at the next flush, in order
        self._open: dict[tuple[object, str], Batch] = {}  # the ones still taking calls
        self._flushes: set[asyncio.Task[None]] = set()

    async def submit(self, script: object, group: str, call: Any) -> Any:
        """Queue one call; answers the script's answer to it."""
        loop = asyncio.get_running_loop()
        if not self._batches:
            loop.call_soon(self._flush)
        batch = self._open.get((script, group))
        if batch is None or len(batch.calls) >= MAX_CALLS_PER_SCRIPT:
            batch = self._open[(script, group)] = Batch(script, group)
            self._batches.append(batch)
        future: asyncio.Future[Any] = loop.create_future()
        batch.calls.append(call)
        batch.futures.append(future)
        return await future

    async def drain(self) -> None:
        """Wait until every call submitted so far has been sent and answered."""
        await asyncio.sleep(0)  # let a scheduled flush start
        while self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)

    def _flush(self) -> None:
        batches, self._batches, self._open = self._batches, [], {}
        task = asyncio.get_running_loop().create_task(self._send(batches))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _send(self, batches: Sequence[Batch]) -> None:
        try:
            answers = await self._run(batches)
        except Exception as exc:
            for future in (f for batch in batches for f in batch.futures):
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (the loop is closing): so are the calls
            for future in (f for batch in batches for f in batch.futures):
                future.cancel()
            raise
        for batch, answer in zip(batches, answers, strict=True):
            for future, value in zip(batch.futures, answer, strict=True):
                if future.done():
                    continue
                if isinstance(value, Exception):
                    future.set_exception(value)
                else:
                    future.set_result(value)
