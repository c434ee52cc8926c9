"""The event loop RQ's synchronous work-horse drives an attempt on.

One loop per process and thread, kept between attempts: a simple worker reuses its loop
instead of building one per job; a forked work-horse uses the one its worker made before
forking (`prepare_horse_loop`).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from domain.eager import start_eagerly

T = TypeVar("T")

_loops: dict[tuple[int, int], asyncio.AbstractEventLoop] = {}
_horse_loop: tuple[int, asyncio.AbstractEventLoop] | None = None


def prepare_horse_loop() -> asyncio.AbstractEventLoop:
    """Make, in the forking worker, the event loop its work-horses will run on.

    Building a loop (a selector, a self-pipe) and first running one cost a fresh process over a
    millisecond; made once here, every horse inherits it ready. The worker itself never runs
    it, and its horses run one at a time (RQ waits for each before forking the next), each
    exiting after its one attempt, so no two processes ever use the loop (or its selector) at
    once.
    """
    global _horse_loop
    loop = asyncio.new_event_loop()
    _horse_loop = (os.getpid(), loop)
    return loop


def current_loop() -> asyncio.AbstractEventLoop:
    """This thread's loop: the one inherited from the worker in a work-horse's main thread,
    else one of its own, made on first use."""
    key = (os.getpid(), threading.get_ident())
    loop = _loops.get(key)
    if loop is None or loop.is_closed():
        inherited = _horse_loop
        if (
            inherited is not None
            and inherited[0] == os.getppid()
            and threading.current_thread() is threading.main_thread()
            and not inherited[1].is_closed()
        ):
            loop = inherited[1]
        else:
            loop = asyncio.new_event_loop()
        _loops[key] = loop
    return loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to its end on this thread's loop. It starts eagerly, with the loop marked
    running: an attempt that never waits (most short jobs) ends there, without a task or a
    turn of the loop; one that waits carries on where it stopped, on the loop."""
    loop = current_loop()
    try:
        asyncio._set_running_loop(loop)
        try:
            attempt = start_eagerly(main)
        finally:
            asyncio._set_running_loop(None)
        if not attempt.done():
            loop.run_until_complete(attempt)
        return attempt.result()
    finally:
        # Like asyncio.run: nothing of this attempt may run on into the next one.
        leftover = asyncio.all_tasks(loop)
        for task in leftover:
            task.cancel()
        if leftover:
            loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
