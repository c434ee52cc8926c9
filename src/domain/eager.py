"""Start a coroutine at once, in the caller's step, and make it a task only if it suspends.

Python 3.12's eager task factory, for one call site and for 3.11: most handlers of short jobs
return without ever waiting, and for them a task, a `wait` and a few turns of the event loop
cost more than the handler itself. A handler that does suspend carries on in a task exactly
where it stopped (cancellation and exceptions reach it as they would in any task).
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, TypeVar, cast

T = TypeVar("T")


def start_eagerly(work: Awaitable[T]) -> asyncio.Future[T]:
    """Run `work` up to its first suspension now; the future (or task) of its outcome.

    Needs a running event loop. An exception that would end a task (anything but
    KeyboardInterrupt and SystemExit, which propagate, as asyncio does) ends the future.
    """
    loop = asyncio.get_running_loop()
    steps: Coroutine[Any, Any, T] | Generator[Any, Any, T]
    if isinstance(work, types.CoroutineType):
        steps = work
    elif isinstance(work, asyncio.Future):
        return work
    else:
        # An awaitable that wraps a coroutine (the worker's board watching a handler) steps
        # through it the same way, so it is not made a task before it has to be.
        steps = work.__await__()
        if not isinstance(steps, Generator):
            return asyncio.ensure_future(work)
    future: asyncio.Future[T] = loop.create_future()
    try:
        first = steps.send(None)
    except StopIteration as stop:
        future.set_result(cast(T, stop.value))
        return future
    except asyncio.CancelledError:
        future.cancel()
        return future
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        future.set_exception(exc)
        return future
    return loop.create_task(_resumed(steps, first))


async def _resumed(coro: Coroutine[Any, Any, T] | Generator[Any, Any, T], first: Any) -> T:
    result: T = await _Relay(coro, first)
    return result


class _Relay:
    """Awaiting it carries on a started coroutine: what it yields (the future it waits for)
    goes up to the task, and what the task sends or throws goes down to it."""

    def __init__(
        self, coro: Coroutine[Any, Any, Any] | Generator[Any, Any, Any], first: Any
    ) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, signal = self._coro, self._first
        while True:
            try:
                sent = yield signal
            except BaseException as exc:  # handed down to the coroutine, as a task would
                try:
                    signal = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    signal = coro.send(sent)
                except StopIteration as stop:
                    return stop.value
