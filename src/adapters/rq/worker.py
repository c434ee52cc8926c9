"""RQ's own worker, made safe and prompt for Conveyor's jobs.

What it adds to a stock `rq worker -S json --with-scheduler`:

- It runs only Conveyor's dispatcher. A job in Redis that names any other function, carries a
  pickle (or anything but JSON), names callbacks, or is otherwise not one of ours is refused before
  anything in it is resolved, and dead-lettered (RQ's failed registry) without a retry. The
  serializer only ever JSON-decodes.
- Every attempt is settled by the one rule of `domain.settlement` (see `settling`), wherever it
  ends: in the dispatcher, in a work-horse that died, under RQ's hard time limit, or found
  abandoned by the sweep. Retries wait for the time the settlement gives them.
- Abandoned jobs are found in seconds, not RQ's ten-odd minutes: an execution's heartbeat entry
  lives `heartbeat + grace` seconds (RQ: up to 90), the registries are swept every `maintenance`
  seconds (RQ: 600), an idle worker wakes every second to do it (and to look for a stop: a signal
  never interrupts a pop), and a busy one does it between heartbeats. A job whose worker and
  work-horse were SIGKILLed is retried (or dead-lettered, if out of attempts) by any live worker of
  its queue within `abandoned_bound` seconds of the kill (20 s by default), then runs after its
  retry backoff.
- A killed work-horse (OOM killer, SIGKILL, segfault) is seen at once by its parent: the job gets
  our WORKER_LOST error and is retried or dead-lettered; never left `started`.
- The work-horse and the scheduler process die with the worker: the caller's `follow_parent` hook
  runs in each (on Linux, PR_SET_PDEATHSIG), so a SIGKILLed worker leaves no orphan running its job
  or holding the scheduler lock.
- Cancellation (see `RqJobControl.cancel`). As an attempt starts, in the same transaction that
  marks it started, the worker reads the job's cancel marks: a job cancelled after a worker took it
  off its queue runs nothing. A handler that stops on a cancel request ends the job `cancelled`;
  one that has not stopped `cancel_grace` seconds after the request is killed with its work-horse
  (checked at each heartbeat), and the job ends `cancelled` too.

The forking `ConveyorWorker` is the default (each job in its own process); `ConveyorSimpleWorker`
runs jobs in the worker process instead (no fork; a crash takes the worker with it, and a job is
only known abandoned once its timeout has passed).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
import rq
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import StopRequested
from rq.job import Job as RqJob
from rq.job import JobStatus as RqStatus
from rq.queue import Queue
from rq.scheduler import RQScheduler
from rq.utils import now as rq_now
from rq.worker import WorkerStatus
from rq.worker.base import BaseWorker

from adapters.rq import dispatcher, loop
from adapters.rq.codec import (
    ATTEMPT,
    CANCEL_REQUESTED_AT,
    CANCELLED_AT,
    PID,
    PROGRESS,
    SERIALIZER,
    UndecodableJobError,
    rq_queue_name,
)
from adapters.rq.config import RqWorkerConfig, WorkerKind
from adapters.rq.jobs import ConveyorRqJob, ForeignJobError
from adapters.rq.maintenance import ConveyorRqQueue
from adapters.rq.settling import SettleUnsettled, horse_death, lost, read_attempt, settle
from domain.job_types import JobTypeRegistry
from domain.jobs import JobStatus
from domain.retry import Random
from domain.settlement import Ending

log = logging.getLogger("conveyor.worker.rq")

# Makes the calling process get the signal when its parent dies (exits if it already has).
FollowParent = Callable[[int], None]


class DispatchJob(ConveyorRqJob):
    """A job as the worker sees it: it resolves to the dispatcher and nothing else."""

    @property
    def func(self) -> Any:
        reason = self.refusal()
        if reason is not None:
            raise ForeignJobError(f"refused to run job {self.id}: {reason}")
        return dispatcher.execute

    def prepare_for_execution(self, worker_name: str, pipeline: Pipeline) -> None:
        """RQ marks the job started; in the same round trip, our meta starts the attempt."""
        super().prepare_for_execution(worker_name, pipeline)
        meta = self.conveyor_meta()
        meta[ATTEMPT] = self.next_attempt()
        meta.pop(PROGRESS, None)
        meta[PID] = os.getpid()
        self.meta = meta
        pipeline.hset(self.key, "meta", SERIALIZER.dumps(meta))


class _ParentBoundScheduler(RQScheduler):
    """RQ's scheduler process, ended (releasing its locks) when its worker dies."""

    follow_parent: FollowParent | None = None

    def work(self) -> None:
        if self.follow_parent is not None:
            self.follow_parent(signal.SIGTERM)
        super().work()  # type: ignore[no-untyped-call]  # rq leaves it unannotated


class ConveyorBaseWorker(BaseWorker):
    """What Conveyor's two RQ worker classes add to RQ's (see the module's docstring)."""

    config: RqWorkerConfig = RqWorkerConfig()
    stop_asked = False  # SIGTERM/SIGINT arrived (RQ's own flag misses a stop while idle)
    # Seconds a handler has to stop after its job's cancellation was asked for.
    cancel_grace: float = 5.0
    # Run in the work-horse and the scheduler process as each starts.
    follow_parent: FollowParent | None = None
    # Settles what the dispatcher could not (RQ's exception handler; its registry and random
    # settle a work-horse's death too).
    settler: SettleUnsettled | None = None
    # The job whose work-horse this worker killed after its cancel request's grace.
    _killed_for_cancel: str | None = None

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
        message = f"Processing {job.func_name} from {job.origin} since {time.time()}"
        self.procline(message)  # type: ignore[no-untyped-call]  # rq leaves it unannotated

    def handle_exception(self, job: RqJob, *exc_info: Any) -> None:
        settlement = job.settlement if isinstance(job, ConveyorRqJob) else None
        if settlement is not None and settlement.status is JobStatus.CANCELLED:
            log.info("job %s: its attempt stopped on the job's cancellation", job.id)
            return  # not an error: nothing to report
        super().handle_exception(job, *exc_info)

    def handle_warm_shutdown_request(self) -> None:  # RQ's, on SIGTERM/SIGINT, idle or busy
        self.stop_asked = True
        self.log.info("Worker %s [PID %d]: warm shut down requested", self.name, self.pid)

    def _shutdown(self) -> None:
        # RQ's raises StopRequested in the signal handler of an idle worker: raised between the
        # pop that moved a job to RQ's intermediate list and its start, it stranded the job
        # there (RQ fails it a minute later). The stop is taken between 1 s pops instead; one
        # still idle 3 s later is retrying an unreachable Redis, and is stopped by the alarm.
        if self.get_state() == WorkerStatus.BUSY:
            super()._shutdown()  # type: ignore[no-untyped-call]  # rq leaves it unannotated
        else:
            signal.signal(signal.SIGALRM, self._stop_if_idle)
            signal.alarm(3)
        self._stop_requested = True

    def _stop_if_idle(self, signum: int, frame: Any) -> None:
        if self.get_state() != WorkerStatus.BUSY:
            raise StopRequested

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[RqJob, Queue] | None:
        if timeout is None or max_idle_time is not None:  # burst, or an idle limit: RQ's
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        got = None
        while got is None and not self._stop_requested:
            got = super().dequeue_job_and_maintain_ttl(1, max_idle_time=1)
        if got is None:  # stopped: the fallback alarm would end a slow exit by SIGALRM (-14)
            signal.alarm(0)
        return got

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
        """Settle the attempt whose work-horse died (RQ then writes the settlement)."""
        log.warning("work-horse killed for job %s: retpid=%s, ret_val=%s", job.id, retpid, ret_val)
        killed_for_cancel, self._killed_for_cancel = self._killed_for_cancel == job.id, None
        if not isinstance(job, ConveyorRqJob) or self.settler is None:
            return
        try:
            stored = read_attempt(job)
        except UndecodableJobError:
            return  # not ours: RQ dead-letters it
        # A RedisError goes up: the job stays started, and the sweep settles it once its
        # heartbeat has lapsed (RQ's failure path would dead-letter it unsettled).
        if stored.status is not RqStatus.STARTED or stored.worker_name != self.name:
            job.settled_elsewhere = True  # the horse wrote its settlement before it died
            return
        job.worker_name = stored.worker_name  # the horse set it in its own copy
        if killed_for_cancel:
            ending = Ending.cancelled()
        else:
            error = horse_death(ret_val)
            ending = lost(stored.job, error, self.settler.registry, self.settler.random)
        now = datetime.now(UTC)
        settle(job, stored.job, ending, cancel_requested=stored.cancel_requested, now=now)

    def release_scheduler_locks(self) -> None:
        """Let go of the locks this worker's scheduler holds. A worker that stopped because
        Redis went away could not release them as it stopped; released once Redis is back,
        the next worker's scheduler takes them at once instead of after their 61 s expiry
        (delayed retries and scheduled jobs wait for it). Raises RedisError while Redis is
        still away."""
        if self.scheduler is not None:
            self.scheduler.release_locks()  # type: ignore[no-untyped-call]  # unannotated

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        # RQ's own, with a scheduler process that ends when this worker dies.
        scheduler = _ParentBoundScheduler(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
        )
        scheduler.follow_parent = self.follow_parent
        self.scheduler = scheduler
        # rq leaves the scheduler's methods below unannotated.
        scheduler.acquire_locks()  # type: ignore[no-untyped-call]
        if scheduler.acquired_locks:
            if burst:
                try:
                    scheduler.register_birth()
                    scheduler.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]
                finally:
                    scheduler.release_locks()  # type: ignore[no-untyped-call]
                    scheduler.register_death()
            else:
                scheduler.start()  # type: ignore[no-untyped-call]


class ConveyorWorker(ConveyorBaseWorker, rq.Worker):
    """The forking worker: each attempt runs in a work-horse process of its own."""

    def work(self, *args: Any, **kwargs: Any) -> bool:
        _ready_to_fork(self.connection)
        return bool(super().work(*args, **kwargs))

    def get_heartbeat_ttl(self, job: RqJob, working_time: float = 0.0) -> int:
        return self.config.heartbeat + self.config.grace

    def maintain_heartbeats(self, job: RqJob, execution: Any) -> None:
        super().maintain_heartbeats(job, execution)
        self._stop_if_cancel_overdue(job)
        # A busy worker sweeps too, so one long job cannot delay finding abandoned ones.
        if self.should_run_maintenance_tasks:
            try:
                self.run_maintenance_tasks()  # type: ignore[no-untyped-call]  # unannotated
            except Exception:
                log.exception("maintenance failed; trying again at the next heartbeat")

    def _stop_if_cancel_overdue(self, job: RqJob) -> None:
        """Kill the work-horse of a job whose handler has not stopped within `cancel_grace`
        of its cancel request; the job is settled `cancelled` as the horse's death is seen."""
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
        self._killed_for_cancel = job.id
        self.kill_horse()

    def main_work_horse(self, job: RqJob, queue: Queue) -> None:
        if self.follow_parent is not None:
            self.follow_parent(signal.SIGKILL)
            if os.getppid() != self.pid:  # the worker died before we could follow it
                os._exit(1)
        super().main_work_horse(job, queue)


class ConveyorSimpleWorker(ConveyorBaseWorker, rq.SimpleWorker):
    """Runs attempts in the worker process itself (no fork): for tests and debugging."""

    def get_heartbeat_ttl(self, job: RqJob, working_time: float = 0.0) -> int:
        # Nothing heartbeats while the job runs in this process: the entry must outlive the
        # job's own time limit.
        return math.ceil(job.timeout or Queue.DEFAULT_TIMEOUT) + self.config.grace


def build_worker(
    client: redis.Redis,
    queues: tuple[str, ...],
    *,
    registry: JobTypeRegistry,
    prefix: str,
    config: RqWorkerConfig,
    result_ttl: float,
    timeout_grace: float = 2.0,
    cancel_grace: float = 5.0,
    random: Random,
    follow_parent: FollowParent | None = None,
    worker_class: type[ConveyorBaseWorker] | None = None,
    max_result_bytes: int | None = None,
    expose_tracebacks: bool = False,
) -> ConveyorBaseWorker:
    """An RQ worker for our queues, running `registry`'s job types.

    `timeout_grace`: how long a timed-out handler gets to stop once cancelled (keep it well
    under `store.HARD_TIMEOUT_GRACE`); `cancel_grace`: how long a handler gets to stop after
    its job's cancellation was asked for; `random` draws retry delays; `follow_parent` runs in
    the work-horse and the scheduler process as each starts; a result longer than
    `max_result_bytes` as JSON fails its attempt (ResultTooLargeError, not retried);
    `expose_tracebacks` keeps a failed handler's traceback on the job.
    """
    dispatcher.configure(
        registry,
        random=random,
        timeout_grace=timeout_grace,
        max_result_bytes=max_result_bytes,
        expose_tracebacks=expose_tracebacks,
    )
    if worker_class is None:
        worker_class = ConveyorWorker if config.kind is WorkerKind.FORK else ConveyorSimpleWorker
    settler = SettleUnsettled(registry, random)
    worker = worker_class(
        [rq_queue_name(prefix, queue) for queue in queues],
        connection=client,
        serializer=SERIALIZER,
        job_class=DispatchJob,
        queue_class=ConveyorRqQueue,
        worker_ttl=config.worker_ttl,
        maintenance_interval=config.maintenance,
        job_monitoring_interval=config.heartbeat,
        exception_handlers=[settler],
        log_job_description=False,
        default_result_ttl=max(1, math.ceil(result_ttl)),
    )
    worker.config = config
    worker.cancel_grace = cancel_grace
    worker.follow_parent = follow_parent
    worker.settler = settler
    return worker


def _ready_to_fork(connection: redis.Redis) -> None:
    """Do once, in the worker, what every work-horse would otherwise do on its own: run an
    event loop once (its lazy set-up), make the loop the horses run on, and rehearse an
    attempt; then move every object to the GC's permanent generation so a horse's
    collections do not touch, and so copy, the pages it shares with the worker."""
    asyncio.run(asyncio.sleep(0))
    loop.prepare_horse_loop()
    dispatcher.rehearse(connection)
    gc.collect()
    gc.freeze()
