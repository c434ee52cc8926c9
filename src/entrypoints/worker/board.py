"""Which job each thread of a worker process is executing, readable after the process dies.

A worker process runs many jobs at once, so when it crashes (a segfault, `os._exit`, an
abort) every job it held was in flight; only one of them was executing. The board says
which: one fixed-size slot for the event loop's thread and one per handler thread, each
holding the id of the job whose code that thread runs right now (or nothing while it waits).
It lives in a small file mapped into memory, written with plain stores, so the supervisor
can read it after the process is gone and charge the crash to the jobs that were executing,
not to the ones that were only waiting.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any, Final

_SLOT: Final = 32  # a job id: 32 hex characters
_EMPTY: Final = b"\0" * _SLOT


class Board:
    def __init__(self, path: Path, threads: int) -> None:
        self._slots = 1 + threads  # slot 0: the event loop's thread
        size = self._slots * _SLOT
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._free = list(range(1, self._slots))
        self._lock = threading.Lock()

    def mark_loop(self, job_id: str | None) -> None:
        self._write(0, job_id)

    def take_thread_slot(self) -> int:
        with self._lock:
            return self._free.pop() if self._free else 0

    def give_back_thread_slot(self, slot: int) -> None:
        if slot:
            self._write(slot, None)
            with self._lock:
                self._free.append(slot)

    def mark_thread(self, slot: int, job_id: str | None) -> None:
        if slot:
            self._write(slot, job_id)

    def _write(self, slot: int, job_id: str | None) -> None:
        start = slot * _SLOT
        self._map[start : start + _SLOT] = _EMPTY if job_id is None else job_id.encode()


def executing(path: Path) -> set[str]:
    """The job ids a (dead) worker's threads were executing, from its board file."""
    try:
        data = path.read_bytes()
    except OSError:
        return set()
    ids = set()
    for start in range(0, len(data) - _SLOT + 1, _SLOT):
        chunk = data[start : start + _SLOT]
        if chunk != _EMPTY:
            ids.add(chunk.decode(errors="replace"))
    return ids


class Observed:
    """Wraps a coroutine so the board shows its job on the loop's slot while it executes."""

    def __init__(self, coro: Any, board: Board, job_id: str) -> None:
        self._coro = coro
        self._board = board
        self._job_id = job_id

    def __await__(self) -> Generator[Any, None, Any]:
        return self

    def __iter__(self) -> Observed:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        self._board.mark_loop(self._job_id)
        try:
            return self._coro.send(value)
        finally:
            self._board.mark_loop(None)

    def throw(self, *args: Any) -> Any:
        self._board.mark_loop(self._job_id)
        try:
            return self._coro.throw(*args)
        finally:
            self._board.mark_loop(None)

    def close(self) -> None:
        self._coro.close()
