"""The RQ backend: Conveyor's jobs in RQ's queues and registries, for teams that already run RQ.

RQ's own worker runs the jobs (`worker.build_worker`), so the roles here are the API's: store,
submit, cancel and requeue, queue figures. What RQ's model does not offer is absent, not
refused: no lease queue (RQ's worker dequeues and runs jobs itself; a lost worker is found by
its heartbeat lapsing, and a stalled-but-alive worker may finish a job another one re-ran),
no queue pauser (RQ's worker dequeues from every queue it serves), no deadlines and no
priorities (`RqSubmitter.traits`).
"""

from __future__ import annotations

import redis

from adapters.rq.connection import RqConnection
from adapters.rq.control import RqJobControl
from adapters.rq.monitor import RqQueueMonitor
from adapters.rq.store import RqJobStore
from adapters.rq.submitter import RqSubmitter
from domain.errors import UnsupportedOperationError
from domain.limits import FlowLimits
from domain.ports import AdmissionPolicy, Backend


def rq_backend(
    client: redis.Redis,
    *,
    prefix: str = "conveyor",
    result_ttl: float = 86400.0,
    dead_ttl: float = 7 * 86400.0,
    idempotency_ttl: float = 86400.0,
    admission: AdmissionPolicy | None = None,
    max_queues: int | None = None,
    sweep_interval: float = 10.0,
    limits: FlowLimits | None = None,
) -> Backend:
    """The roles RQ can play, over `client` (see `create_rq_redis`), our keys under `prefix`.

    Succeeded and cancelled jobs are kept `result_ttl` seconds, dead ones `dead_ttl` (RQ's
    failure_ttl), idempotency keys `idempotency_ttl`. At most `max_queues` queues are kept,
    the ones nothing uses forgotten at most every `sweep_interval` seconds to make room (see
    `RqSubmitter`). The longest result is the worker's to enforce (`build_worker`). An
    enabled admission policy raises
    UnsupportedOperationError: RQ's enqueue has no check to add limits to, and limits set but
    not enforced would be worse than none. Rate and concurrency limits per job type raise it
    too, for the same reason: RQ's worker dequeues with no check to add them to.
    """
    if limits:
        raise UnsupportedOperationError(
            "flow limits", "flow limits", "RQ's worker dequeues with no check to add limits to"
        )
    if admission is not None and admission.enabled:
        raise UnsupportedOperationError(
            "admission", "admission", "RQ's enqueue has no admission check to add limits to"
        )
    rq = RqConnection(client, prefix=prefix)
    store = RqJobStore(rq)
    return Backend(
        name="rq",
        connection=rq,
        store=store,
        submitter=RqSubmitter(
            rq,
            result_ttl=result_ttl,
            dead_ttl=dead_ttl,
            idempotency_ttl=idempotency_ttl,
            max_queues=max_queues,
            sweep_interval=sweep_interval,
        ),
        control=RqJobControl(rq, store, result_ttl=result_ttl),
        monitor=RqQueueMonitor(rq),
    )
