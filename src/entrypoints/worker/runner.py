"""The worker loop: claim batches, run up to C jobs at once, keep their leases alive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import attrs

from domain.errors import QueueUnavailableError
from domain.jobs import Lease
from domain.ports import JobQueue
from domain.services import JobProcessor, Outcome, ProcessResult, describe
from entrypoints.worker.context import WorkerJobContext

log = logging.getLogger("conveyor.worker")


@attrs.frozen(kw_only=True)
class WorkerConfig:
    worker_id: str
    queues: tuple[str, ...]
    concurrency: int = attrs.field(validator=attrs.validators.ge(1))
    batch: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    lease_seconds: float = 30.0
    # How long one claim call waits for work; also bounds how late a stop request is noticed.
    claim_wait: float = 1.0
    backoff_first: float = 0.1
    backoff_cap: float = 5.0


class Worker:
    def __init__(self, queue: JobQueue, processor: JobProcessor, config: WorkerConfig) -> None:
        self._queue = queue
        self._processor = processor
        self._config = config
        self._running: dict[str, tuple[Lease, asyncio.Task[None]]] = {}
        self._executor = ThreadPoolExecutor(
            max_workers=config.concurrency, thread_name_prefix="conveyor-job"
        )
        self.completed = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set, then finish the jobs in flight and return."""
        cfg = self._config
        log.info(
            "worker started",
            extra={
                "worker_id": cfg.worker_id,
                "queues": ",".join(cfg.queues),
                "concurrency": cfg.concurrency,
            },
        )
        renewer = asyncio.create_task(self._renew_forever())
        try:
            await self._claim_until(stop)
            if self._running:
                log.info("draining", extra={"in_flight": len(self._running)})
                await asyncio.wait([task for _, task in self._running.values()])
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("worker stopped", extra={"worker_id": cfg.worker_id, "completed": self.completed})

    async def abort(self) -> None:
        """Stop every job now; their leases lapse and other workers take them over."""
        tasks = [task for _, task in self._running.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _claim_until(self, stop: asyncio.Event) -> None:
        cfg = self._config
        backoff = cfg.backoff_first
        outage_since: float | None = None
        while not stop.is_set():
            free = cfg.concurrency - len(self._running)
            if free <= 0:
                await self._wait_for_slot(stop)
                continue
            try:
                leases = await self._queue.claim(
                    cfg.queues,
                    worker_id=cfg.worker_id,
                    limit=min(free, cfg.batch),
                    lease_seconds=cfg.lease_seconds,
                    wait_seconds=cfg.claim_wait,
                )
            except QueueUnavailableError as exc:
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning("queue unavailable, retrying", extra={"reason": exc.reason})
                await _wait(stop, backoff)
                backoff = min(backoff * 2, cfg.backoff_cap)
                continue
            if outage_since is not None:
                log.info(
                    "queue reachable again",
                    extra={"outage_s": round(time.monotonic() - outage_since, 2)},
                )
                outage_since = None
                backoff = cfg.backoff_first
            for lease in leases:
                self._start(lease)

    async def _wait_for_slot(self, stop: asyncio.Event) -> None:
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait(
                [stopper, *(task for _, task in self._running.values())],
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stopper.cancel()

    def _start(self, lease: Lease) -> None:
        log.info("job claimed", extra=describe(lease.job))
        task = asyncio.create_task(self._execute(lease))
        self._running[lease.job_id] = (lease, task)
        task.add_done_callback(lambda _: self._running.pop(lease.job_id, None))

    async def _execute(self, lease: Lease) -> None:
        context = WorkerJobContext(lease, self._queue, self._executor)
        started = time.monotonic()
        try:
            result = await self._processor.process(lease, context)
        except asyncio.CancelledError:
            log.warning("job stopped: lease lost", extra=describe(lease.job))
            raise
        except Exception:
            # The processor records handler failures itself; reaching here is a bug in the
            # machinery. The lease will lapse and the job runs again elsewhere.
            log.exception("job processing crashed", extra=describe(lease.job))
            return
        self.completed += 1
        _log_outcome(lease, result, time.monotonic() - started)

    async def _renew_forever(self) -> None:
        interval = self._config.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            leases = [lease for lease, _ in self._running.values()]
            if not leases:
                continue
            try:
                held = await self._queue.renew(leases, self._config.lease_seconds)
            except QueueUnavailableError as exc:
                log.warning("lease renewal failed", extra={"reason": exc.reason})
                continue
            self._stop_lost(leases, held)

    def _stop_lost(self, leases: Sequence[Lease], held: set[str]) -> None:
        for lease in leases:
            entry = self._running.get(lease.job_id)
            if lease.job_id not in held and entry is not None and entry[0] is lease:
                entry[1].cancel()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def _log_outcome(lease: Lease, result: ProcessResult, elapsed: float) -> None:
    fields = {**describe(lease.job), "elapsed_ms": round(elapsed * 1000, 1)}
    if result.error is not None:
        fields |= {"error_kind": str(result.error.kind), "error_type": result.error.type}
    match result.outcome:
        case Outcome.SUCCEEDED:
            log.info("job succeeded", extra=fields)
        case Outcome.RETRYING:
            retry_in = round(result.retry_in or 0.0, 3)
            log.warning("job failed, will retry", extra=fields | {"retry_in_s": retry_in})
        case Outcome.DEAD:
            log.error("job dead", extra=fields)
        case Outcome.LEASE_LOST:
            log.warning("job result discarded: lease lost", extra=fields)
