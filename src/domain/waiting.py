"""How many readers of one process may wait for jobs at once (long polls), and how many
of them read their job again at once when woken."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final

import attrs

# Woken waits reading their job again at once, at most. A finish notice can wake thousands
# of waits together; each read is a task step and a round trip, and a task that awaits goes
# behind every task ready before it. Thousands of reads in flight would put each step of
# every other request (a submit: its body, its batch, its answer) behind all of them: in an
# acceptance test, 2,000 waits woken together held submits up to a second. Past this many,
# the rest wait for their turn on a semaphore, off the ready queue.
READS_AT_ONCE: Final = 64


@attrs.define
class Waiters:
    """The waits one process holds at once: at most `limit`. Past it a reader is answered at
    once with the job as it is, so many slow readers cannot exhaust the process."""

    limit: int = attrs.field(validator=attrs.validators.ge(0))
    reads_at_once: int = attrs.field(default=READS_AT_ONCE, validator=attrs.validators.ge(1))
    _held: int = attrs.field(default=0, init=False)
    # Made at first use, so every field has a plain default: the API's framework reads a
    # dependency's fields, and cannot read a default made from the instance.
    _reading: asyncio.Semaphore | None = attrs.field(default=None, init=False)

    @property
    def held(self) -> int:
        return self._held

    def take(self) -> bool:
        """Hold one more wait, if the limit allows; `release` it when done."""
        if self._held >= self.limit:
            return False
        self._held += 1
        return True

    def release(self) -> None:
        if self._held <= 0:
            raise RuntimeError("released a wait that was not held")
        self._held -= 1

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        """A turn for a woken wait to read its job again: at most `reads_at_once` at once."""
        if self._reading is None:
            self._reading = asyncio.Semaphore(self.reads_at_once)
        async with self._reading:
            yield
