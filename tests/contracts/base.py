"""What the contract scenarios run on: a backend factory per backing, and the scenario runner.

Time: leases and retry delays use short real durations (a few hundred ms). A backend on a
fake clock makes `BackendFactory.elapse` advance that clock, and `BackendFactory.now` read
it; one on Redis's clock sleeps, and reads the local clock. Claims that wait always use real
time. Every scenario runs under `TEST_TIMEOUT`.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import attrs
import pytest

from domain.errors import UnsupportedOperationError
from domain.limits import FlowLimits
from domain.ports import (
    AdmissionPolicy,
    Backend,
    JobControl,
    JobStore,
    JobSubmitter,
    JobWatcher,
    LeaseQueue,
    QueueMonitor,
    QueuePauser,
)
from tests.contracts.builders import PAST_SOON, SOON
from tests.contracts.driving import claim_and_process

TEST_TIMEOUT: Final = 20.0
# How long a backend may keep a queue nothing uses before it forgets it (seconds): a backend
# with such a grace is built with this one; the scenarios let it pass first.
QUEUE_GRACE: Final = 0.3
DRAIN_TICK: Final = 0.001  # seconds a drain lets pass before each claim
_MARGIN: Final = PAST_SOON - SOON  # how far past an instant `Rig.elapse_past` lets the clock go
P = TypeVar("P")


@attrs.frozen(kw_only=True)
class BackendOptions:
    """What a backend is built with besides its connection: retention and admission.

    The names are the backend builders' keywords: `kwargs()` passes them on as they are,
    e.g. ``redis_backend(client, prefix=prefix, **options.kwargs())``.
    """

    result_ttl: float = 86400.0  # seconds succeeded, cancelled and expired jobs are kept
    dead_ttl: float = 7 * 86400.0  # seconds dead jobs are kept
    idempotency_ttl: float = 86400.0  # seconds an idempotency key is held
    admission: AdmissionPolicy | None = None
    max_queues: int | None = None  # queues kept at most
    max_result_bytes: int | None = None  # the longest result kept, as JSON
    limits: FlowLimits | None = None  # rate and concurrency limits per job type

    def kwargs(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False)


DEFAULTS: Final = BackendOptions()


class BackendFactory(abc.ABC):
    """Opens backends for one backing, and controls how time passes for them."""

    name: str  # how skip reasons name the backend: "memory", "redis on fakeredis", ...

    @abc.abstractmethod
    def open(self, options: BackendOptions = DEFAULTS) -> AbstractAsyncContextManager[Backend]:
        """A fresh, empty backend built with `options`, closed (its data removed) on exit.

        Raises UnsupportedOperationError for options the backend cannot honour (an admission
        policy on a backend that cannot enforce one): the scenario is skipped with the reason.
        """

    async def elapse(self, seconds: float) -> None:
        """Let `seconds` pass on the clock the backend reads for leases and delays."""
        await asyncio.sleep(seconds)

    async def now(self, backend: Backend) -> datetime:
        """The time on the clock the backend reads: what run_at and deadlines are measured on."""
        return datetime.now(UTC)

    async def stale_writes(self, backend: Backend) -> int | None:
        """The backend's count of rejected stale writes, or None if it exposes none."""
        return None

    async def drain(self, backend: Backend, job_ids: Sequence[str]) -> None:
        """Run jobs the way this backend's workers do, until every one of `job_ids` has
        settled, one after the other, each started at a later time than the one before. The
        default drives the backend's LeaseQueue with the domain's JobProcessor; a backend
        whose own worker runs the jobs (RQ) overrides it."""

        async def tick() -> None:
            await self.elapse(DRAIN_TICK)

        await claim_and_process(Rig(backend, self).leases, backend.store, job_ids, tick=tick)


def _present(port: P | None, role: type, backend: Backend) -> P:
    if port is None:  # the scenario runner skips a scenario that needs a role not played
        raise AssertionError(f"the {backend.name} backend has no {role.__name__}")
    return port


@attrs.frozen
class Rig:
    """A backend under test, its roles as non-optional attributes, and its factory."""

    backend: Backend
    factory: BackendFactory

    @property
    def store(self) -> JobStore:
        return self.backend.store

    @property
    def submitter(self) -> JobSubmitter:
        return self.backend.submitter

    @property
    def leases(self) -> LeaseQueue:
        return _present(self.backend.leases, LeaseQueue, self.backend)

    @property
    def control(self) -> JobControl:
        return _present(self.backend.control, JobControl, self.backend)

    @property
    def monitor(self) -> QueueMonitor:
        return _present(self.backend.monitor, QueueMonitor, self.backend)

    @property
    def pauser(self) -> QueuePauser:
        return _present(self.backend.pauser, QueuePauser, self.backend)

    @property
    def watcher(self) -> JobWatcher:
        return _present(self.backend.watcher, JobWatcher, self.backend)

    async def elapse(self, seconds: float) -> None:
        await self.factory.elapse(seconds)

    async def now(self) -> datetime:
        return await self.factory.now(self.backend)

    async def elapse_past(self, instant: datetime) -> None:
        """Let the backend's clock pass `instant` by the margin PAST_SOON gives SOON."""
        remaining = (instant - await self.now()).total_seconds()
        await self.elapse(max(remaining, 0.0) + _MARGIN)

    async def drain(self, job_ids: Sequence[str]) -> None:
        await self.factory.drain(self.backend, job_ids)

    async def stale_writes(self) -> int:
        """The backend's count of rejected stale writes. Skips the scenario, with the reason,
        on a backend that exposes none: call it before the scenario does anything."""
        count = await self.factory.stale_writes(self.backend)
        if count is None:
            pytest.skip(f"the {self.factory.name} backend exposes no count of stale writes")
        return count


# The optional roles, by the attribute of `Backend` that holds each.
_ROLES: Final[dict[type, str]] = {
    LeaseQueue: "leases",
    JobControl: "control",
    QueueMonitor: "monitor",
    QueuePauser: "pauser",
    JobWatcher: "watcher",
}

Scenario = Callable[[Any, Rig], Awaitable[None]]
Test = Callable[[Any, BackendFactory], None]


def missing(backend: Backend, roles: Sequence[type], traits: Sequence[str]) -> str | None:
    """Why `backend` cannot run a scenario needing `roles` and submitter `traits`, or None."""
    for role in roles:
        if getattr(backend, _ROLES[role]) is None:
            return f"the {backend.name} backend has no {role.__name__}"
    for trait in traits:
        if not getattr(backend.submitter.traits, trait):
            return f"the {backend.name} backend's submitter does not honour {trait}"
    return None


def scenario(
    *roles: type, traits: Sequence[str] = (), options: BackendOptions = DEFAULTS
) -> Callable[[Scenario], Test]:
    """Turns `async def test_x(self, rig)` into a sync pytest test on a fresh backend built
    with `options`. Skipped, with the reason, on a backend that lacks one of `roles` (the
    optional roles of `Backend`), whose submitter lacks one of `traits` (`SubmitTraits`), or
    that cannot be built with `options`.

    (No pytest-asyncio: each test runs its own event loop with `asyncio.run`.)
    """
    for role in roles:
        if role not in _ROLES:
            raise TypeError(f"{role.__name__} is not an optional role of Backend")

    def decorate(fn: Scenario) -> Test:
        def test(self: Any, backend_factory: BackendFactory) -> None:
            async def main() -> str | None:
                async with AsyncExitStack() as stack:
                    try:
                        backend = await stack.enter_async_context(backend_factory.open(options))
                    except UnsupportedOperationError as refused:
                        return f"the {backend_factory.name} backend cannot be built so: {refused}"
                    reason = missing(backend, roles, traits)
                    if reason is not None:
                        return reason
                    await asyncio.wait_for(fn(self, Rig(backend, backend_factory)), TEST_TIMEOUT)
                return None

            skipped = asyncio.run(main())
            if skipped is not None:
                pytest.skip(skipped)

        test.__name__ = fn.__name__
        test.__qualname__ = fn.__qualname__
        test.__doc__ = fn.__doc__
        return test

    return decorate
