"""Starting a handler eagerly: the same outcomes a task would give, without the task when it
never waits."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

import pytest

from domain.eager import start_eagerly


async def returns(value: int) -> int:
    return value


async def raises() -> None:
    raise ValueError("boom")


async def cancels_itself() -> None:
    raise asyncio.CancelledError


async def waits_then_returns(seconds: float, value: int) -> int:
    await asyncio.sleep(seconds)
    return value


def in_a_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


@in_a_loop
async def test_a_handler_that_never_waits_is_done_at_once_without_a_task() -> None:
    before = len(asyncio.all_tasks())

    future = start_eagerly(returns(7))

    assert future.done()
    assert future.result() == 7
    assert not isinstance(future, asyncio.Task)
    assert len(asyncio.all_tasks()) == before


@in_a_loop
async def test_an_exception_or_self_cancel_in_the_first_step_ends_the_future_like_a_task() -> None:
    failed = start_eagerly(raises())
    cancelled = start_eagerly(cancels_itself())

    assert isinstance(failed.exception(), ValueError)
    assert cancelled.cancelled()


@in_a_loop
async def test_a_handler_that_waits_carries_on_in_a_task_where_it_stopped() -> None:
    steps: list[str] = []

    async def handler() -> str:
        steps.append("first")
        await asyncio.sleep(0.01)
        steps.append("second")
        return "done"

    future = start_eagerly(handler())

    assert steps == ["first"]
    assert isinstance(future, asyncio.Task)
    assert await future == "done"
    assert steps == ["first", "second"]


@in_a_loop
async def test_cancelling_a_waiting_handler_reaches_it_and_its_cleanup_runs() -> None:
    cleaned = asyncio.Event()

    async def handler() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.set()

    future = start_eagerly(handler())
    await asyncio.sleep(0)
    future.cancel()

    with pytest.raises(asyncio.CancelledError):
        await future
    assert cleaned.is_set()


@in_a_loop
async def test_a_waiting_handler_sees_the_exceptions_and_values_of_what_it_awaits() -> None:
    async def handler() -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, fut.set_result, 41)
        value = await fut
        try:
            await waits_then_returns(0.01, 0)
            raise KeyError("inner")
        except KeyError:
            return value + 1

    assert await start_eagerly(handler()) == 42


@in_a_loop
async def test_an_awaitable_that_is_not_a_coroutine_runs_as_a_task() -> None:
    class Later:
        def __await__(self) -> Generator[Any, None, int]:
            return waits_then_returns(0.001, 5).__await__()

    work: Awaitable[int] = Later()
    future = start_eagerly(work)

    assert await future == 5


class Watched:
    """An awaitable wrapping a coroutine step by step, as the worker's board does."""

    def __init__(self, coro: Coroutine[Any, Any, Any], steps: list[str]) -> None:
        self._coro = coro
        self._steps = steps

    def __await__(self) -> Generator[Any, Any, Any]:
        return self

    def __iter__(self) -> Watched:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        self._steps.append("send")
        return self._coro.send(value)

    def throw(self, *args: Any) -> Any:
        self._steps.append("throw")
        return self._coro.throw(*args)

    def close(self) -> None:
        self._coro.close()


@in_a_loop
async def test_a_wrapped_handler_that_never_waits_is_done_at_once_without_a_task() -> None:
    steps: list[str] = []
    before = len(asyncio.all_tasks())

    future = start_eagerly(Watched(returns(3), steps))

    assert future.done()
    assert future.result() == 3
    assert not isinstance(future, asyncio.Task)
    assert len(asyncio.all_tasks()) == before
    assert steps == ["send"]


@in_a_loop
async def test_a_wrapped_handler_that_waits_is_stepped_by_its_wrapper_and_cancellable() -> None:
    steps: list[str] = []
    cleaned = asyncio.Event()

    async def handler() -> None:
        try:
            await asyncio.sleep(0.01)
            await asyncio.sleep(10)
        finally:
            cleaned.set()

    future = start_eagerly(Watched(handler(), steps))
    assert isinstance(future, asyncio.Task)
    await asyncio.sleep(0.05)
    future.cancel()

    with pytest.raises(asyncio.CancelledError):
        await future
    assert cleaned.is_set()
    assert steps == ["send", "send", "throw"]


@in_a_loop
async def test_a_future_is_answered_as_it_is() -> None:
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    assert start_eagerly(fut) is fut
