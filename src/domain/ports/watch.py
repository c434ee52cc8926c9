"""Waiting for jobs to finish: told when they do, instead of asking again and again."""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self


class Watch(abc.ABC):
    """One reader's interest in one job, from `JobWatcher.watch` until closed."""

    @abc.abstractmethod
    async def wait(self, seconds: float) -> None:
        """Return once the job may have finished (a hint: read it again to know), or after
        `seconds`, whichever comes first."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop watching. Idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class JobWatcher(abc.ABC):
    """Wakes the readers waiting for jobs to reach a finished status (`JobStatus.is_terminal`),
    through one mechanism per process, however many wait: no reader polls the backend.

    Optional: readers of a backend without one look at the job again now and then.
    """

    @abc.abstractmethod
    def watch(self, job_id: str) -> Watch:
        """Start watching `job_id`. Call it before reading the job, so that a finish between
        the read and the wait is not missed; close it when done (it is a context manager)."""
