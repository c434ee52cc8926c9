"""Job types: the registered kinds of work. Clients can only name these."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import attrs

from domain.errors import UnknownJobTypeError
from domain.jobs import JSONObject, JSONValue, valid_name
from domain.retry import RetryPolicy
from domain.schema import PayloadSchema

T = TypeVar("T")


class JobContext(abc.ABC):
    """What a running handler may know and do besides computing its result.

    The worker provides it. Handlers are coroutines; blocking or CPU-bound work goes through
    `run_blocking` so the worker keeps its leases alive while it runs.
    """

    @property
    @abc.abstractmethod
    def job_id(self) -> str: ...

    @property
    @abc.abstractmethod
    def attempt(self) -> int:
        """1 for the first attempt."""

    @property
    def cancel_requested(self) -> bool:
        """The job's cancellation was asked for: stop soon by raising JobCancelledError.

        A handler that does not stop within the worker's grace period is cancelled (and, if
        it still runs, its process replaced)."""
        return False

    @property
    def remaining(self) -> float | None:
        """Seconds left before the job's deadline, or None when it has none."""
        return None

    @abc.abstractmethod
    def report_progress(self, percent: int) -> None:
        """Record progress 0-100. Returns at once; the write happens in the background."""

    @abc.abstractmethod
    async def sleep(self, seconds: float) -> None:
        """Wait cooperatively (cancellable)."""

    @abc.abstractmethod
    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking function away from the event loop and await its result."""

    def observe(self, work: Awaitable[T]) -> Awaitable[T]:
        """The handler's run as the worker wants to watch it (by default, unchanged)."""
        return work

    async def settle(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Finish background writes (progress) before the attempt's outcome is recorded."""


Handler = Callable[[JSONObject, JobContext], Awaitable[JSONValue]]


@attrs.frozen(kw_only=True)
class JobType:
    """A registered kind of work: its name, payload schema, handler and defaults."""

    name: str = attrs.field(validator=valid_name)
    description: str
    schema: PayloadSchema
    handler: Handler = attrs.field(eq=False)
    queue: str = attrs.field(default="default", validator=valid_name)
    priority: int = 0
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    timeout: float = attrs.field(default=300.0, validator=attrs.validators.gt(0))
    timeout_limit: float = attrs.field(default=3600.0, validator=attrs.validators.gt(0))


class JobTypeRegistry(Mapping[str, JobType]):
    """Job types by name. Built once at start-up; nothing is ever looked up by import path."""

    def __init__(self, job_types: Iterable[JobType]) -> None:
        self._types: dict[str, JobType] = {}
        for job_type in job_types:
            if job_type.name in self._types:
                raise ValueError(f"job type {job_type.name!r} registered twice")
            self._types[job_type.name] = job_type

    def __getitem__(self, name: str) -> JobType:
        return self._types[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._types)

    def __len__(self) -> int:
        return len(self._types)

    def resolve(self, name: object) -> JobType:
        """The job type called `name`; raises UnknownJobTypeError for anything else."""
        if isinstance(name, str) and name in self._types:
            return self._types[name]
        return _raise_unknown(name, list(self._types))


def _raise_unknown(name: object, known: list[str]) -> JobType:
    raise UnknownJobTypeError(name if isinstance(name, str) else repr(name), known)
