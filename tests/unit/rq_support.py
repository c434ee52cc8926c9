"""What the RQ tests run jobs with: Conveyor's RQ worker class in bursts, in a thread.

A forking RQ worker loses its work on fakeredis (the forked child's writes go to a copy of the
fake server), so jobs here run in a `ConveyorSimpleWorker` subclass with no signal handlers
(only the main thread may install them) and RQ's thread-based timer for time limits. Between
bursts `RqMaintenance.recover` queues due retries and scheduled jobs, as RQ's scheduler would.
"""

from __future__ import annotations

import abc
import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import fakeredis
import redis
from rq import Callback, Queue
from rq.executions import Execution
from rq.job import Job as RqJob
from rq.serializers import DefaultSerializer, JSONSerializer
from rq.timeouts import TimerDeathPenalty

from adapters.rq import (
    ConveyorBaseWorker,
    ConveyorSimpleWorker,
    RqMaintenance,
    RqWorkerConfig,
    build_worker,
    rq_backend,
)
from adapters.rq.codec import DISPATCHER, SERIALIZER, rq_queue_name
from adapters.rq.jobs import ConveyorRqJob
from domain.job_types import JobContext, JobType, JobTypeRegistry
from domain.job_types.dummy import dummy_job_type
from domain.job_types.report import report_job_type
from domain.jobs import JSONObject, JSONValue
from domain.ports import Backend
from domain.schema import PayloadSchema
from tests.contracts.base import DEFAULTS, BackendFactory, BackendOptions
from tests.contracts.driving import SETTLE_WITHIN, describe, settled

W = TypeVar("W", bound=ConveyorBaseWorker)

# The ids of the `probe` jobs whose handler ran in this process (a simple worker runs jobs in
# its own process): what "it never ran" is checked against.
PROBED: list[str] = []


async def probe(payload: JSONObject, context: JobContext) -> JSONValue:
    PROBED.append(context.job_id)
    return {"ran": True}


TYPES = JobTypeRegistry(
    [
        dummy_job_type(),
        report_job_type(),
        JobType(
            name="probe",
            description="records that it ran",
            schema=PayloadSchema(()),
            handler=probe,
        ),
    ]
)


class BurstWorker(ConveyorSimpleWorker):
    """Conveyor's simple worker, runnable in a thread (tests only)."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        return None


class RqFactory(BackendFactory):
    """RQ backends under one key prefix; `drain` runs jobs in bursts of a `BurstWorker`.

    Retry delays are `random` times the type's ceiling: 0 (the default) makes every retry due
    at once.
    """

    def __init__(self, prefix: str, random: float = 0.0) -> None:
        self.prefix = prefix
        self.random = random
        self.max_result_bytes: int | None = None

    @abc.abstractmethod
    def client(self) -> redis.Redis: ...

    def cleanup(self) -> None:
        """Remove what the backends left (called as each one closes)."""

    @asynccontextmanager
    async def open(self, options: BackendOptions = DEFAULTS) -> AsyncIterator[Backend]:
        kwargs = options.kwargs()
        # RQ's worker, not the API's roles, keeps results: `build` hands it the limit.
        self.max_result_bytes = kwargs.pop("max_result_bytes")
        # Forgetting idle queues as often as asked: scenarios see it at once.
        backend = rq_backend(self.client(), prefix=self.prefix, sweep_interval=0.0, **kwargs)
        try:
            yield backend
        finally:
            await backend.connection.close()
            self.cleanup()

    def worker(self, queues: Sequence[str] = ("default",)) -> BurstWorker:
        return self.build(BurstWorker, queues)

    def build(self, worker_class: type[W], queues: Sequence[str] = ("default",)) -> W:
        """A worker of `worker_class` for `queues`, as `conveyor worker` builds one."""
        worker = build_worker(
            self.client(),
            tuple(queues),
            registry=TYPES,
            prefix=self.prefix,
            config=RqWorkerConfig(),
            result_ttl=3600,
            random=lambda: self.random,
            worker_class=worker_class,
            max_result_bytes=self.max_result_bytes,
        )
        assert isinstance(worker, worker_class)
        return worker

    async def burst(self, queues: Sequence[str] = ("default",)) -> None:
        worker = self.worker(queues)
        await asyncio.to_thread(worker.work, burst=True, logging_level="WARNING")

    def maintenance(self) -> RqMaintenance:
        return RqMaintenance(self.client(), TYPES, prefix=self.prefix, random=lambda: self.random)

    async def recover(self, queues: Sequence[str] = ("default",)) -> int:
        return await asyncio.to_thread(self.maintenance().recover, queues)

    async def drain(self, backend: Backend, job_ids: Sequence[str]) -> None:
        jobs = [await backend.store.get(job_id) for job_id in job_ids]
        queues = sorted({job.queue for job in jobs if job is not None})
        deadline = time.monotonic() + SETTLE_WITHIN
        while not await settled(backend.store, job_ids):
            if time.monotonic() > deadline:
                raise AssertionError(f"not settled: {await describe(backend.store, job_ids)}")
            await self.burst(queues)
            await self.recover(queues)


class RqFakeRedisFactory(RqFactory):
    """Each factory has its own FakeServer."""

    name = "rq on fakeredis"

    def __init__(self, random: float = 0.0) -> None:
        super().__init__("test", random)
        self.server = fakeredis.FakeServer(version=(7,))

    def client(self) -> fakeredis.FakeRedis:
        return fakeredis.FakeRedis(server=self.server, version=(7,))


def take(worker: ConveyorBaseWorker) -> tuple[ConveyorRqJob, Queue]:
    """The next job of the worker's queues, taken off its queue as the worker takes one."""
    taken = Queue.dequeue_any(
        worker.queues,
        None,
        connection=worker.connection,
        job_class=worker.job_class,
        serializer=SERIALIZER,
    )
    assert taken is not None, "no job to take"
    rq_job, rq_queue = taken
    assert isinstance(rq_job, ConveyorRqJob)
    return rq_job, rq_queue


def start_attempt(worker: ConveyorBaseWorker) -> tuple[ConveyorRqJob, Queue, Execution]:
    """What a worker does before a job runs: take it, record the execution, mark it started
    (as its work-horse would)."""
    rq_job, rq_queue = take(worker)
    execution = worker.prepare_execution(rq_job)
    worker.prepare_job_execution(rq_job)
    return rq_job, rq_queue, execution


def registry_key(kind: str, prefix: str = "test", queue: str = "default") -> str:
    """The key of one of RQ's registries (`scheduled`, `wip`, `failed`, `canceled`, ...) of
    our queue."""
    return f"rq:{kind}:{rq_queue_name(prefix, queue)}"


class Planted:
    """Unpickling this creates the marker file: a pickle that runs code as it loads."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def plant_hostile_jobs(client: redis.Redis, marker: Path, prefix: str) -> list[str]:
    """Jobs another program wrote into our RQ queue: pickles, foreign functions, callbacks."""
    name = rq_queue_name(prefix, "default")
    ours = uuid.uuid4().hex
    pickled = Queue(name, connection=client, serializer=DefaultSerializer)
    as_json = Queue(name, connection=client, serializer=JSONSerializer)
    valid_args = [
        "dummy",
        {"mode": "succeed"},
        {
            "id": ours,
            "queue": "default",
            "max_attempts": 3,
            "timeout": 5.0,
            "created_at": "2026-01-01T00:00:00+00:00",
        },
    ]
    jobs: list[RqJob] = [
        # A pickle that runs code as it is loaded, naming even our own dispatcher.
        pickled.enqueue_call(DISPATCHER, args=[Planted(marker)], job_id=uuid.uuid4().hex),
        # A pickled call of a foreign function.
        pickled.enqueue_call("os.system", args=[f"touch {marker}"], job_id=uuid.uuid4().hex),
        # JSON, but a foreign function, with retries it must not get.
        as_json.enqueue_call(
            "pathlib.Path.touch", args=[str(marker)], job_id=uuid.uuid4().hex, retry=None
        ),
        # Our dispatcher and valid arguments, but callbacks RQ would import and call.
        as_json.enqueue_call(
            DISPATCHER,
            args=valid_args,
            job_id=ours,
            on_success=Callback("os.system"),
            on_failure=Callback("os.system"),
        ),
    ]
    return [job.id for job in jobs]
