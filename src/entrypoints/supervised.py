"""Local servers a process starts and must stop (`LocalRedis` and the topologies built of
them), as one kind of context manager."""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self


class Supervised(abc.ABC):
    """Servers this process starts and stops: a context manager that starts them unless
    they run already, and stops them on the way out, whatever happened."""

    @property
    @abc.abstractmethod
    def running(self) -> bool: ...

    @abc.abstractmethod
    def start(self) -> Self: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
