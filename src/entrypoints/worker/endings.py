"""How the attempts a worker runs end: settling the ones it stops, and saying what happened.

What the worker logs and writes to its audit log comes from the status the backend stored,
never from what the worker expected: a failure the backend stored as `expired` (its
deadline passed) or `cancelled` (a cancel request came first) is said to be that, and
"will retry" only when a retry is stored.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping
from typing import Any, Final

from domain.errors import NotReplicatedError, QueueUnavailableError
from domain.jobs import JobStatus, JSONObject, Lease
from domain.ports import AttemptReporter
from domain.processing import JobProcessor, ProcessResult, describe
from domain.settlement import Ending
from entrypoints.logs import log_event
from entrypoints.worker.context import WorkerJobContext

S = JobStatus
log = logging.getLogger("conveyor.worker")

# The audit log's words besides a stored status (see `AuditLog.ended` and `observers`).
LEASE_LOST: Final = "lease_lost"  # the backend refused the write: someone else owns the job
LEFT_TO_LEASE: Final = "left_to_lease"  # the backend was not told: the lease lapses instead
RELEASED: Final = "released"  # handed back by a stopping worker: queued, its attempt uncounted

_SAID: Final[Mapping[JobStatus, tuple[int, str]]] = {
    S.SUCCEEDED: (logging.INFO, "job succeeded"),
    S.FAILED: (logging.WARNING, "job failed, will retry"),
    S.QUEUED: (logging.WARNING, "job queued again"),
    S.DEAD: (logging.ERROR, "job dead"),
    S.EXPIRED: (logging.WARNING, "job expired"),
    S.CANCELLED: (logging.INFO, "job cancelled"),
}


def said(status: JobStatus | None) -> str:
    """The audit word for a settlement that stored `status` (None: the lease was lost)."""
    return LEASE_LOST if status is None else status.value


def _log_status(
    status: JobStatus, fields: JSONObject, failure: BaseException | None = None
) -> None:
    level, message = _SAID.get(status, (logging.INFO, f"job {status}"))
    if failure is None:
        log_event(log, level, message, fields)
    else:
        log.log(level, message, extra=fields, exc_info=failure)


def warn_unreplicated(lease: Lease, shortfall: NotReplicatedError) -> None:
    """Say that an attempt's settlement is on the primary only: a failover before a replica
    has it runs the job again (its lease lapses there, or it was never claimed there)."""
    log.warning(
        "job settlement not confirmed by replicas: a failover now would run it again",
        extra={
            **describe(lease.job),
            "settled": said(shortfall.settled),
            "replicas": shortfall.acknowledged,
            "replicas_required": shortfall.required,
        },
    )


def log_result(lease: Lease, result: ProcessResult, elapsed: float) -> None:
    """Log how an attempt the processor ran ended, as the backend stored it, with the
    handler's traceback when it raised (clients see only its type and message)."""
    quiet = result.status is S.SUCCEEDED and not log.isEnabledFor(logging.INFO)
    if quiet and result.unreplicated is None:
        return  # the most common line, not built when it would not be written
    fields: dict[str, Any] = {**describe(lease.job), "elapsed_ms": round(elapsed * 1000, 1)}
    if result.error is not None:
        fields |= {"error_kind": str(result.error.kind), "error_type": result.error.type}
    if result.status is None:
        log.warning("job result discarded: lease lost", extra=fields, exc_info=result.failure)
        return
    if result.status is S.FAILED:
        fields["retry_in_s"] = round(result.ending.retry_in or 0.0, 3)
    _log_status(result.status, fields, result.failure)
    if result.unreplicated is not None:
        warn_unreplicated(lease, result.unreplicated)


async def hand_back(reporter: AttemptReporter, lease: Lease) -> str:
    """Settle the attempt of a job a stopping worker hands back, uncounted; answers its
    audit word."""
    job = describe(lease.job)
    try:
        status = await reporter.settle(lease, Ending.released())
    except QueueUnavailableError:
        # The lease will lapse and the job runs again elsewhere.
        log.info("job left to its lease", extra=job)
        return LEFT_TO_LEASE
    except NotReplicatedError as exc:
        # Handed back on the primary; lost in a failover, the lease lapses there instead.
        warn_unreplicated(lease, exc)
        status = exc.settled
    if status is None:
        log.warning("job stopped: lease lost", extra=job)
        return LEASE_LOST
    if status is S.QUEUED:
        log.info("job released", extra=job)
        return RELEASED
    # A cancel request or the deadline came first: the job ended as that instead.
    _log_status(status, job)
    return status.value


async def cut_short(
    processor: JobProcessor, lease: Lease, context: WorkerJobContext, within: float
) -> str:
    """Record the attempt of a handler stopped after its cancel request's grace, trying for
    at most `within` seconds; answers its audit word."""
    job = describe(lease.job)
    await context.settle()
    try:
        # Bounded: once the lease lapses, the backend ends the job cancelled by itself.
        result = await asyncio.wait_for(processor.record(lease, Ending.cancelled()), within)
    except TimeoutError:
        log.warning("job left to its lease (it ends cancelled)", extra=job)
        return LEFT_TO_LEASE
    if result.unreplicated is not None:
        warn_unreplicated(lease, result.unreplicated)
    if result.status is S.CANCELLED:
        log.warning("job cancelled: its handler did not stop within the grace period", extra=job)
    elif result.status is None:
        log.warning("job stopped: lease lost", extra=job)
    else:
        _log_status(result.status, job)
    return said(result.status)


def describe_exit(code: int) -> tuple[str, int | None, str | None]:
    """A readable cause, the exit code and the signal name of a process's end."""
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return f"killed by {name}", None, name
    return f"exited with code {code}", code, None
