"""The RQ backend: Conveyor's jobs in RQ's keys, run by RQ's own worker.

- `rq_backend` builds the roles the API uses (store, submitter, control, monitor);
- `build_worker` makes the RQ worker that runs them, through the one dispatcher RQ calls;
- `RqMaintenance` queues due jobs and settles abandoned ones where no worker does.

Every attempt is settled by `domain.settlement` (see `settling`).
"""

from adapters.rq.backend import rq_backend
from adapters.rq.client import create_rq_redis
from adapters.rq.config import RqWorkerConfig, WorkerKind
from adapters.rq.maintenance import RqMaintenance
from adapters.rq.submitter import HARD_TIMEOUT_GRACE
from adapters.rq.worker import (
    ConveyorBaseWorker,
    ConveyorSimpleWorker,
    ConveyorWorker,
    FollowParent,
    build_worker,
)

__all__ = [
    "HARD_TIMEOUT_GRACE",
    "ConveyorBaseWorker",
    "ConveyorSimpleWorker",
    "ConveyorWorker",
    "FollowParent",
    "RqMaintenance",
    "RqWorkerConfig",
    "WorkerKind",
    "build_worker",
    "create_rq_redis",
    "rq_backend",
]
