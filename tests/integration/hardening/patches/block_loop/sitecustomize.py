"""TEST-ONLY patch: a `dummy` handler that blocks its worker's event loop.

Loaded through PYTHONPATH by the worker processes of `test_watchdog` only. A `succeed` job
whose result is "block-the-loop" sleeps on the event loop (not in a thread) for
CONVEYOR_TEST_BLOCK_SECONDS (300) on its first attempt, as a handler that calls a blocking
function without `run_blocking` would; later attempts succeed at once.
"""

from __future__ import annotations

import os
import time
from typing import Any


def _report(line: str) -> None:
    path = os.environ.get("CONVEYOR_TEST_PATCH_REPORT")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{line} pid={os.getpid()}\n".encode())
        finally:
            os.close(fd)


def _apply() -> None:
    from domain.job_types import dummy

    run_dummy = dummy.run_dummy
    seconds = float(os.environ.get("CONVEYOR_TEST_BLOCK_SECONDS", "300"))

    async def blocking_dummy(payload: Any, context: Any) -> Any:
        if payload.get("result") == "block-the-loop" and context.attempt == 1:
            # On the event loop's thread, on purpose: nothing else runs meanwhile.
            time.sleep(seconds)  # noqa: ASYNC251
        return await run_dummy(payload, context)

    dummy.run_dummy = blocking_dummy


try:
    _apply()
except Exception as exc:  # reported, so the test fails loudly instead of testing nothing
    _report(f"FAILED block_loop: {type(exc).__name__}: {exc}")
else:
    _report("applied block_loop")
