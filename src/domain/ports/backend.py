"""A backend: the set of roles one technology plays, and the connection behind them."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Final

import attrs

from domain.ports.control import JobControl, QueueMonitor, QueuePauser
from domain.ports.leases import LeaseQueue
from domain.ports.store import JobStore
from domain.ports.submit import JobSubmitter
from domain.ports.watch import JobWatcher


class Connection(abc.ABC):
    """The backend's connection: is it up, is it safe, and letting go of it."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise QueueUnavailableError unless the backend answers."""

    @abc.abstractmethod
    async def verify(self) -> Sequence[str]:
        """Check the backend is safe to run on; answers warnings worth logging.

        Raises UnsafeBackendError when it could drop jobs (a Redis that evicts keys), and
        QueueUnavailableError when it cannot be asked right now.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections. Idempotent."""


# The name of each optional role, as a `501` answer names what the backend lacks (the names
# are part of the API: never change one).
ROLE_NAMES: Final[Mapping[type, str]] = {
    JobControl: "cancel",
    QueueMonitor: "queue_stats",
    QueuePauser: "pause",
    LeaseQueue: "worker_claims",
}


@attrs.frozen(kw_only=True)
class Backend:
    """The roles one backend plays. Every backend stores, reads and submits jobs; the other
    roles are None where the backend does not play them, and what needs them is not offered
    (the API answers 501, the native worker refuses to start)."""

    name: str
    connection: Connection
    store: JobStore
    submitter: JobSubmitter
    control: JobControl | None = None
    monitor: QueueMonitor | None = None
    pauser: QueuePauser | None = None
    leases: LeaseQueue | None = None
    # Wakes readers waiting for a job to finish; without it they look again now and then.
    # (No operation needs it, so its absence is not a missing role: no 501 names it.)
    watcher: JobWatcher | None = None
    # API and workers in separate processes see the same jobs (False: one process only).
    shared_across_processes: bool = True

    def roles(self) -> tuple[str, ...]:
        """The names of the optional roles this backend plays."""
        present = {
            JobControl: self.control,
            QueueMonitor: self.monitor,
            QueuePauser: self.pauser,
            LeaseQueue: self.leases,
        }
        return tuple(ROLE_NAMES[role] for role, port in present.items() if port is not None)
