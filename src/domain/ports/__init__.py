"""The ports: what the domain needs from the outside world, as small roles.

A backend is the set of roles it plays (`Backend`); each role is one abstract class whose
every method the backend implements fully. What a backend lacks is absent, never a method
that refuses. Abstract base classes rather than Protocols, so a framework that checks
dependency types at run time (Litestar does) can check them.
"""

from domain.ports.backend import ROLE_NAMES, Backend, Connection
from domain.ports.control import (
    JobControl,
    QueueMonitor,
    QueuePauser,
    QueueStats,
    WorkerInfo,
    WorkerLoad,
)
from domain.ports.leases import AttemptReporter, ClaimRequest, LeaseQueue
from domain.ports.store import JobPage, JobQuery, JobSituation, JobStore
from domain.ports.submit import (
    AdmissionPolicy,
    JobSubmitter,
    NewJob,
    QueueLimits,
    Submitted,
    SubmitTraits,
    store_new,
)
from domain.ports.system import Clock, EmailMessage, EmailSender
from domain.ports.watch import JobWatcher, Watch

__all__ = [
    "ROLE_NAMES",
    "AdmissionPolicy",
    "AttemptReporter",
    "Backend",
    "ClaimRequest",
    "Clock",
    "Connection",
    "EmailMessage",
    "EmailSender",
    "JobControl",
    "JobPage",
    "JobQuery",
    "JobSituation",
    "JobStore",
    "JobSubmitter",
    "JobWatcher",
    "LeaseQueue",
    "NewJob",
    "QueueLimits",
    "QueueMonitor",
    "QueuePauser",
    "QueueStats",
    "SubmitTraits",
    "Submitted",
    "Watch",
    "WorkerInfo",
    "WorkerLoad",
    "store_new",
]
