"""`conveyor worker` with QUEUE_BACKEND=rq: RQ's own worker, made safe and prompt.

What it adds to a stock `rq worker -S json --with-scheduler`:

- It runs only Conveyor's dispatcher. A job in Redis that names any other function, carries a
  pickle (or anything but JSON), names callbacks, or is otherwise not one of ours is refused
  before anything in it is resolved, and dead-lettered (RQ's failed registry) without a retry.
  The serializer only ever JSON-decodes.
- Abandoned jobs are found in seconds, not RQ's ten-odd minutes: an execution's heartbeat entry
  lives `heartbeat + grace` seconds (RQ: up to 90), the registries are swept every
  `maintenance` seconds (RQ: 600), an idle worker wakes every `idle_wait` seconds to do it, and
  a busy one does it between heartbeats. A job whose worker and work-horse were SIGKILLed is
  retried (or dead-lettered, if out of attempts) by any live worker of its queue within
  `abandoned_bound` seconds of the kill (20 s by default), then runs after its retry backoff.
- A killed work-horse (OOM killer, SIGKILL, segfault) is seen at once by its parent: the job
  gets our WORKER_LOST error and is retried or dead-lettered; never left `started`.
- The work-horse and the scheduler process die with the worker (Linux: PR_SET_PDEATHSIG), so a
  SIGKILLed worker leaves no orphan running its job or holding the scheduler lock.
- Cancellation (see `RqJobQueue.cancel`). As an attempt starts, in the same transaction that
  marks it started, the worker reads the job's cancel marks: a job cancelled after a worker
  took it off its queue (or whose cancellation was requested during an earlier attempt) runs
  nothing. A handler that stops on a cancel request ends the job `cancelled`; one that has not
  stopped `cancel_grace` seconds after the request is killed with its work-horse (checked at
  each heartbeat), and the job ends `cancelled` too. A cancelled job leaves RQ's started
  registry for its canceled registry, kept as long as a result, and is never retried.

The forking `Worker` is the default (each job in its own process); `CONVEYOR_RQ_WORKER_CLASS=
simple` runs jobs in the worker process instead (no fork; a crash takes the worker with it, and
a job is only known abandoned once its timeout has passed).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import attrs
import redis
import rq
from redis.exceptions import RedisError
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.executions import Execution
from rq.job import Job as RqJob
from rq.job import JobStatus as RqStatus
from rq.queue import Queue
from rq.scheduler import RQScheduler
from rq.timeouts import JobTimeoutException
from rq.utils import now as rq_now
from rq.utils import utcformat
from rq.version import VERSION as RQ_VERSION
from rq.worker import WorkerStatus
from rq.worker.base import BaseWorker

from adapters.rq_codec import (
    ATTEMPT,
    CANCEL_REQUESTED_AT,
    CANCELLED_AT,
    DISPATCHER,
    PID,
    PROGRESS,
    SERIALIZER,
    AttemptEnd,
    ConveyorRqJob,
    ForeignJobError,
    note_cancelled,
    note_failure,
    rq_queue_name,
    worker_lost,
)
from adapters.rq_queue import (
    HARD_TIMEOUT_GRACE,
    RqJobQueue,
    create_rq_redis,
    record_abandoned,
)
from domain.jobs import ErrorKind, JobError
from entrypoints.container import build_container
from entrypoints.lifetime import follow_parent
from entrypoints.logs import redact_url
from entrypoints.settings import Settings, SettingsError
from entrypoints.startup import backend_is_safe
from entrypoints.worker import rq_tasks
from entrypoints.worker.rq_tasks import execute
from entrypoints.worker.supervisor import EXIT_CONFIG

log = logging.getLogger("conveyor.worker.rq")

if f"{execute.__module__}.{execute.__qualname__}" != DISPATCHER:  # pragma: no cover
    raise ImportError(f"the dispatcher moved: update DISPATCHER ({DISPATCHER})")

_MAINTENANCE_LOCK_SECONDS: Final = 60  # RQ's is 899: a worker killed mid-sweep blocks sweeps


class WorkerKind(enum.StrEnum):
    FORK = "fork"
    SIMPLE = "simple"


@attrs.frozen(kw_only=True)
class RqWorkerConfig:
    """Timings of the RQ worker; each from an environment variable (seconds, whole numbers)."""

    kind: WorkerKind = WorkerKind.FORK  # CONVEYOR_RQ_WORKER_CLASS=fork|simple
    # How often a busy worker refreshes its job's heartbeat (RQ's job_monitoring_interval).
    heartbeat: int = 5  # CONVEYOR_RQ_HEARTBEAT_SECONDS
    # How long a heartbeat outlives the next one being due (RQ: 60).
    grace: int = 5  # CONVEYOR_RQ_HEARTBEAT_GRACE_SECONDS
    # How often the registries are swept for abandoned jobs (RQ: 600).
    maintenance: int = 5  # CONVEYOR_RQ_MAINTENANCE_SECONDS
    # How long an idle worker blocks waiting for a job before it looks around again.
    idle_wait: int = 5  # CONVEYOR_RQ_IDLE_WAIT_SECONDS

    @property
    def worker_ttl(self) -> int:
        return self.idle_wait + 15  # RQ blocks for worker_ttl - 15 seconds

    @property
    def abandoned_bound(self) -> int:
        """Seconds from a SIGKILL of a forking worker (and its work-horse) until a live worker
        of the queue has retried or dead-lettered the job: its heartbeat entry expires within
        `heartbeat + grace`, and a sweep follows within `maintenance + max(idle_wait,
        heartbeat)`."""
        return self.heartbeat + self.grace + self.maintenance + max(self.idle_wait, self.heartbeat)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RqWorkerConfig:
        env = os.environ if environ is None else environ

        def seconds(name: str, default: int) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            if not raw.isdigit() or int(raw) < 1:
                raise SettingsError(f"{name}={raw!r} is not valid: must be a whole number >= 1")
            return int(raw)

        raw_kind = env.get("CONVEYOR_RQ_WORKER_CLASS", "").strip() or WorkerKind.FORK.value
        try:
            kind = WorkerKind(raw_kind)
        except ValueError:
            raise SettingsError(
                f"CONVEYOR_RQ_WORKER_CLASS={raw_kind!r} is not valid: must be fork or simple"
            ) from None
        return cls(
            kind=kind,
            heartbeat=seconds("CONVEYOR_RQ_HEARTBEAT_SECONDS", 5),
            grace=seconds("CONVEYOR_RQ_HEARTBEAT_GRACE_SECONDS", 5),
            maintenance=seconds("CONVEYOR_RQ_MAINTENANCE_SECONDS", 5),
            idle_wait=seconds("CONVEYOR_RQ_IDLE_WAIT_SECONDS", 5),
        )


class DispatchJob(ConveyorRqJob):
    """A job as the worker sees it: it resolves to `execute` and nothing else."""

    @property
    def func(self) -> Any:
        reason = self.refusal()
        if reason is not None:
            raise ForeignJobError(f"refused to run job {self.id}: {reason}")
        return execute

    @property
    def should_retry(self) -> bool:
        return self.refusal() is None and bool(super().should_retry)

    def prepare_for_execution(self, worker_name: str, pipeline: Any) -> None:
        """RQ marks the job started; in the same round trip, our meta starts the attempt."""
        super().prepare_for_execution(worker_name, pipeline)
        meta = self.conveyor_meta()
        meta[ATTEMPT] = self.next_attempt()
        meta.pop(PROGRESS, None)
        meta[PID] = os.getpid()
        self.meta = meta
        pipeline.hset(self.key, "meta", self._serialize_meta())


class ConveyorRqQueue(Queue):
    def acquire_maintenance_lock(self) -> bool:
        return bool(
            self.connection.set(
                self.registry_cleaning_key, 1, nx=True, ex=_MAINTENANCE_LOCK_SECONDS
            )
        )


class _ParentBoundScheduler(RQScheduler):
    """RQ's scheduler process, ended (releasing its locks) when its worker dies."""

    def work(self) -> None:
        follow_parent(signal.SIGTERM)
        super().work()  # type: ignore[no-untyped-call]


class _ConveyorWorkerBase(BaseWorker):
    config: RqWorkerConfig = RqWorkerConfig()
    stop_asked = False  # SIGTERM/SIGINT arrived (RQ's own flag misses a stop while idle)
    # Seconds a handler has to stop after its job's cancellation was asked for.
    cancel_grace: float = 5.0

    def prepare_job_execution(
        self, job: RqJob, remove_from_intermediate_queue: bool = False
    ) -> None:
        """RQ's, reading the job's cancel marks in the same transaction that marks it
        started: a cancel either came before (the attempt runs nothing) or finds the job
        started (a cancel request, which the handler hears)."""
        with self.connection.pipeline() as pipeline:
            heartbeat_ttl = self.get_heartbeat_ttl(job)
            self.heartbeat(heartbeat_ttl, pipeline=pipeline)
            job.heartbeat(rq_now(), heartbeat_ttl, pipeline=pipeline)
            job.prepare_for_execution(self.name, pipeline=pipeline)
            pipeline.persist(job.key)
            if remove_from_intermediate_queue:
                queue = Queue(job.origin, connection=self.connection)
                pipeline.lrem(queue.intermediate_queue_key, 1, job.id)
            pipeline.hmget(job.key, [CANCELLED_AT, CANCEL_REQUESTED_AT])
            marks = pipeline.execute()[-1]
        if isinstance(job, ConveyorRqJob):
            job.cancelled_before_start = any(marks)
        self.procline(f"Processing {job.func_name} from {job.origin} since {time.time()}")  # type: ignore[no-untyped-call]

    def handle_exception(self, job: RqJob, *exc_info: Any) -> None:
        if isinstance(job, ConveyorRqJob) and job.attempt_end is AttemptEnd.CANCELLED:
            log.info("job %s: its attempt stopped on the job's cancellation", job.id)
            return  # not an error: nothing to report
        super().handle_exception(job, *exc_info)

    def handle_job_failure(
        self,
        job: RqJob,
        queue: Queue,
        started_job_registry: Any = None,
        exc_string: str = "",
        execution: Execution | None = None,
    ) -> None:
        if isinstance(job, ConveyorRqJob) and self._ends_cancelled(job):
            if self._stopped_job_id == job.id:
                self._stopped_job_id = None
            self._settle_cancelled(job, queue, execution)
            return
        super().handle_job_failure(
            job,
            queue,
            started_job_registry=started_job_registry,
            exc_string=exc_string,
            execution=execution,
        )

    def _ends_cancelled(self, job: ConveyorRqJob) -> bool:
        if job.attempt_end is not None:
            return job.attempt_end is AttemptEnd.CANCELLED
        # The dispatcher did not end the attempt (its work-horse died or was stopped, or RQ's
        # time limit struck): with a cancel request the job is cancelled, not retried.
        try:
            return bool(self.connection.hexists(job.key, CANCEL_REQUESTED_AT))
        except RedisError:
            return False

    def _settle_cancelled(
        self, job: ConveyorRqJob, queue: Queue, execution: Execution | None
    ) -> None:
        """End the job `cancelled`: out of RQ's started registry, into its canceled registry
        for as long as a result is kept, never retried."""
        try:
            with self.connection.pipeline() as pipeline:
                # A work-horse killed as it ended may have settled it already.
                if job.get_status(refresh=True) is not RqStatus.CANCELED:
                    self._write_cancelled(job, queue, pipeline)
                self.cleanup_execution(job, pipeline=pipeline, execution=execution)
                pipeline.execute()
        except RedisError:
            log.exception("could not record the cancellation of job %s", job.id)
            return
        log.info("job %s cancelled", job.id)

    def _write_cancelled(self, job: ConveyorRqJob, queue: Queue, pipeline: Any) -> None:
        job.get_meta(refresh=True)  # the work-horse wrote it last
        if job.cancelled_before_start:
            # It never ran: the attempt RQ started does not count.
            meta = job.conveyor_meta()
            started = meta.get(ATTEMPT)
            meta[ATTEMPT] = max(0, started - 1) if isinstance(started, int) else 0
            meta.pop(PID, None)
            job.meta = meta
            pipeline.hset(job.key, "started_at", "")
        else:
            job.meta = note_cancelled(job)
        ttl = job.get_result_ttl(self.default_result_ttl)
        ended = rq_now()
        job.set_status(RqStatus.CANCELED, pipeline=pipeline)
        pipeline.hset(job.key, "meta", job._serialize_meta())
        pipeline.hset(job.key, "ended_at", utcformat(ended))
        pipeline.zadd(queue.canceled_job_registry.key, {job.id: ended.timestamp() + ttl})
        pipeline.expire(job.key, ttl)

    def request_stop(self, signum: Any, frame: Any) -> None:
        self.stop_asked = True
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    def execute_job(self, job: RqJob, queue: Queue) -> None:
        reason = job.refusal() if isinstance(job, ConveyorRqJob) else "not a Conveyor job class"
        if reason is None:
            assert isinstance(job, ConveyorRqJob)
            job.plan_attempt()
            super().execute_job(job, queue)
            return
        # Dead-lettered here, in the worker: nothing of the job is resolved, no horse forked.
        log.warning("refusing job %s and dead-lettering it: %s", job.id, reason)
        execution = self.prepare_execution(job)
        if len(self.queues) == 1:  # RQ dequeued it through its intermediate list
            self.connection.lrem(queue.intermediate_queue_key, 1, job.id)
        self.handle_job_failure(
            job,
            queue,
            exc_string=f"ForeignJobError: refused to run: {reason}",
            execution=execution,
        )
        self.set_state(WorkerStatus.IDLE)

    def handle_work_horse_killed(self, job: RqJob, retpid: Any, ret_val: Any, rusage: Any) -> None:
        code = ret_val if isinstance(ret_val, int) else None
        signal_name: str | None = None
        exit_code: int | None = None
        if code is not None and os.WIFSIGNALED(code):
            with contextlib.suppress(ValueError):
                signal_name = signal.Signals(os.WTERMSIG(code)).name
        elif code is not None and os.WIFEXITED(code):
            exit_code = os.WEXITSTATUS(code)
        error = worker_lost(
            f"the work-horse running this attempt died ({signal_name or f'exit {exit_code}'})",
            exit_code=exit_code,
            signal=signal_name,
        )
        job.worker_name = job.worker_name or self.name  # the horse set it in its own copy
        _record(job, error)
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)  # type: ignore[no-untyped-call]

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        # RQ's own, with a scheduler process that ends when this worker dies.
        self.scheduler = _ParentBoundScheduler(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
        )
        self.scheduler.acquire_locks()  # type: ignore[no-untyped-call]
        if self.scheduler.acquired_locks:
            if burst:
                try:
                    self.scheduler.register_birth()
                    self.scheduler.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]
                finally:
                    self.scheduler.release_locks()  # type: ignore[no-untyped-call]
                    self.scheduler.register_death()
            else:
                self.scheduler.start()  # type: ignore[no-untyped-call]


class ConveyorWorker(_ConveyorWorkerBase, rq.Worker):
    """The forking worker: each attempt runs in a work-horse process of its own."""

    def work(self, *args: Any, **kwargs: Any) -> bool:
        _ready_to_fork(self.connection)
        return bool(super().work(*args, **kwargs))

    def get_heartbeat_ttl(self, job: RqJob, working_time: float = 0.0) -> int:
        return self.config.heartbeat + self.config.grace

    def maintain_heartbeats(self, job: RqJob, execution: Any) -> None:
        super().maintain_heartbeats(job, execution)
        self._stop_if_cancel_overdue(job, execution)
        # A busy worker sweeps too, so one long job cannot delay finding abandoned ones.
        if self.should_run_maintenance_tasks:
            try:
                self.run_maintenance_tasks()  # type: ignore[no-untyped-call]
            except Exception:
                log.exception("maintenance failed; trying again at the next heartbeat")

    def _stop_if_cancel_overdue(self, job: RqJob, execution: Any) -> None:
        """Kill the work-horse of a job whose handler has not stopped within `cancel_grace`
        of its cancel request (RQ's stop: the job is settled as it ends)."""
        try:
            raw = self.connection.hget(job.key, CANCEL_REQUESTED_AT)
            asked = datetime.fromisoformat(raw.decode()) if isinstance(raw, bytes) else None
        except (RedisError, ValueError):
            return
        if asked is None or (datetime.now(UTC) - asked).total_seconds() < self.cancel_grace:
            return
        log.warning(
            "job %s did not stop within %g s of its cancel request: stopping its work-horse",
            job.id,
            self.cancel_grace,
        )
        self.request_stop_execution(execution.id)

    def main_work_horse(self, job: RqJob, queue: Queue) -> None:
        follow_parent(signal.SIGKILL)
        if os.getppid() != self.pid:  # the worker died before we could follow it
            os._exit(1)
        super().main_work_horse(job, queue)


class ConveyorSimpleWorker(_ConveyorWorkerBase, rq.SimpleWorker):
    """Runs attempts in the worker process itself (no fork): for tests and debugging."""

    def get_heartbeat_ttl(self, job: RqJob, working_time: float = 0.0) -> int:
        # Nothing heartbeats while the job runs in this process: the entry must outlive the
        # job's own time limit.
        return math.ceil(job.timeout or Queue.DEFAULT_TIMEOUT) + self.config.grace


def record_failure(job: Any, kind: type[BaseException], *_: Any) -> bool:
    """An RQ exception handler: failures our dispatcher could not record itself."""
    if issubclass(kind, JobTimeoutException) and isinstance(job, ConveyorRqJob):
        error = JobError(
            message="the attempt ran past its hard time limit and was stopped by RQ",
            type="TimeoutError",
            kind=ErrorKind.TIMED_OUT,
        )
        _record(job, error)
    return record_abandoned(job, kind)


def _record(job: RqJob, error: JobError) -> None:
    if not isinstance(job, ConveyorRqJob):
        return
    with contextlib.suppress(Exception):  # bookkeeping only: never block RQ's failure path
        job.get_meta(refresh=True)  # the work-horse wrote it last
        job.meta = note_failure(job, error)
        job.save_meta()  # type: ignore[no-untyped-call]


def build_worker(
    client: redis.Redis,
    queues: tuple[str, ...],
    *,
    prefix: str,
    config: RqWorkerConfig,
    result_ttl: float,
    cancel_grace: float = 5.0,
    worker_class: type[_ConveyorWorkerBase] | None = None,
) -> _ConveyorWorkerBase:
    """An RQ worker for our queues; the caller configures `rq_tasks` first."""
    if worker_class is None:
        worker_class = ConveyorWorker if config.kind is WorkerKind.FORK else ConveyorSimpleWorker
    worker = worker_class(
        [rq_queue_name(prefix, queue) for queue in queues],
        connection=client,
        serializer=SERIALIZER,
        job_class=DispatchJob,
        queue_class=ConveyorRqQueue,
        worker_ttl=config.worker_ttl,
        maintenance_interval=config.maintenance,
        job_monitoring_interval=config.heartbeat,
        exception_handlers=[record_failure],
        log_job_description=False,
        default_result_ttl=max(1, math.ceil(result_ttl)),
    )
    worker.config = config
    worker.cancel_grace = cancel_grace
    return worker


def run_rq_worker(settings: Settings, *, queues: tuple[str, ...]) -> int:
    """Run one RQ worker (one job at a time) until SIGTERM/SIGINT; answers the exit code.

    Run more `conveyor worker` processes for more throughput.
    """
    config = RqWorkerConfig.from_env()
    url = settings.require_redis_url()
    container = build_container(settings)
    # The handler's grace after our timeout must end well before RQ's hard limit.
    cancel_grace = min(settings.kill_grace_seconds, HARD_TIMEOUT_GRACE - 5)
    rq_tasks.configure(container.registry(), cancel_grace=cancel_grace)
    client = create_rq_redis(url, connect_timeout=settings.redis_timeout, socket_timeout=None)
    if _unsafe(client, container):
        return EXIT_CONFIG

    def new_worker() -> _ConveyorWorkerBase:
        return build_worker(
            client,
            queues,
            prefix=settings.key_prefix,
            config=config,
            result_ttl=settings.result_ttl_seconds,
            cancel_grace=settings.cancel_grace_seconds,
        )

    log.info(
        "rq worker starting",
        extra={
            "redis_url": redact_url(url),
            "queues": list(queues),
            "worker_class": config.kind.value,
            "abandoned_job_bound_seconds": config.abandoned_bound,
            "rq_version": RQ_VERSION,
        },
    )
    return _work_until_stopped(new_worker, settings.log_level)


def _work_until_stopped(new_worker: Callable[[], _ConveyorWorkerBase], logging_level: str) -> int:
    """RQ's worker quits when Redis goes away (a restart, a failover); start a new one (a new
    name: the old one may not have recorded its death), with a backoff, until a signal asks
    it to stop. A job it was running when it quit is left `started` and is retried by the
    abandoned-job sweep, like a killed worker's."""
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    delay = 1.0
    while True:
        started = time.monotonic()
        worker = new_worker()
        try:
            worker.work(with_scheduler=True, logging_level=logging_level)
        except RedisError as exc:  # while starting or recording its own end
            log.warning("the RQ worker could not reach Redis: %s", exc)
        if worker.stop_asked or stopping:
            return 0
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stop)
        if time.monotonic() - started > 60:
            delay = 1.0  # it had been working: not a crash loop
        log.warning("the RQ worker stopped on an error; starting it again in %.0f s", delay)
        deadline = time.monotonic() + delay
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        if stopping:
            return 0
        delay = min(delay * 2, 30.0)


def _unsafe(client: redis.Redis, container: Any) -> bool:
    queue = RqJobQueue(client, container.registry())
    return not asyncio.run(backend_is_safe(queue, log))


def _ready_to_fork(connection: redis.Redis) -> None:
    """Do once, in the worker, what every work-horse would otherwise do on its own: run an
    event loop once (its lazy set-up), make the loop the horses run on, and rehearse an
    attempt; then move every object to the GC's permanent generation so a horse's
    collections do not touch, and so copy, the pages it shares with the worker."""
    asyncio.run(asyncio.sleep(0))
    rq_tasks.prepare_horse_loop()
    rq_tasks.rehearse(connection)
    gc.collect()
    gc.freeze()
