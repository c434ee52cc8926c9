"""How many readers of one process may wait for jobs at once (long polls)."""

from __future__ import annotations

import attrs


@attrs.define
class Waiters:
    """The waits one process holds at once: at most `limit`. Past it a reader is answered at
    once with the job as it is, so many slow readers cannot exhaust the process."""

    limit: int = attrs.field(validator=attrs.validators.ge(0))
    _held: int = attrs.field(default=0, init=False)

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
