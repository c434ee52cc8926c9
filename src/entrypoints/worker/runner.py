"""The worker loop: claim batches, run up to C jobs at once, keep their leases alive.

One `Worker` runs in each worker process, on the backend's `LeaseQueue`. It stops claiming
when asked to stop, gives the jobs in flight a grace period, and hands whatever is still
running back to the queue without using an attempt. It asks to be retired (replaced by a
fresh process) when a job's handler would not stop after its timeout or its cancel request,
or when it has run its share of jobs or memory.

Cancelling an active job is cooperative first: the worker asks the queue which of its jobs
have a cancel request, and shows the request to the handler (`JobContext.cancel_requested`).
A handler still running `cancel_grace` seconds later is cancelled and its attempt recorded
`cancelled`. While it runs, the worker says it is alive (`QueueMonitor.heartbeat`) so the
backend can tell whether anyone serves a queue; a backend without a monitor is not told.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from domain.errors import QueueUnavailableError
from domain.jobs import AttemptOutcome, Lease
from domain.ports import ClaimRequest, Clock, LeaseQueue, QueueMonitor, WorkerLoad
from domain.processing import JobProcessor, describe
from entrypoints.worker.board import Board
from entrypoints.worker.config import WorkerConfig, claim_order
from entrypoints.worker.context import WorkerJobContext
from entrypoints.worker.endings import LEASE_LOST, cut_short, hand_back, log_result, said
from entrypoints.worker.isolation import isolate, killed_a_worker
from entrypoints.worker.observers import AttemptEnd, AttemptObserver, Observers
from entrypoints.worker.presence import Presence
from entrypoints.worker.running import Running, log_claimed
from entrypoints.worker.tasks import cancel_all, either, rss_bytes, wait_or_stop

log = logging.getLogger("conveyor.worker")


RetireRequest = Callable[[str], None]


class Worker:
    def __init__(
        self,
        leases: LeaseQueue,
        processor: JobProcessor,
        config: WorkerConfig,
        *,
        monitor: QueueMonitor | None = None,
        observers: Sequence[AttemptObserver] = (),
        board: Board | None = None,
        on_retire: RetireRequest | None = None,
        clock: Clock | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._board = board
        self._clock = clock
        self._draw = draw
        self._leases = leases
        self._presence = None if monitor is None else Presence(monitor, config, self._load)
        self._processor = processor
        self._config = config
        self._observers = Observers(observers)
        self._on_retire = on_retire
        self._running: dict[str, Running] = {}
        self._executor = ThreadPoolExecutor(
            max_workers=config.concurrency, thread_name_prefix="conveyor-job"
        )
        self._stop = asyncio.Event()
        # Set when a running job ends (or a claim loop may claim again): what they wait for.
        self._freed = asyncio.Event()
        self._retiring: str | None = None
        self._baseline_rss: int | None = None
        # Whether the claim loop is claiming and its last claim came back empty: it tried
        # every queue, and its waiting claims run their maintenance (what `recover` does
        # for lapsed leases, due and expired jobs) as each of those falls due.
        self._claims_maintain = False
        self._asked = 0  # slots the claims on their way may fill
        self._busy = False  # the last claim came back full: the queues have more
        self._isolating = False  # jobs that killed a worker wait for the others to end
        self.completed = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set (or the worker retires), drain, and return."""
        cfg = self._config
        started = {"worker_id": cfg.worker_id, "queues": ",".join(cfg.queues)}
        log.info("worker started", extra={**started, "concurrency": cfg.concurrency})
        self._baseline_rss = rss_bytes()
        background = [
            asyncio.create_task(self._renew_forever()),
            asyncio.create_task(self._recover_forever()),
            asyncio.create_task(self._watch_cancels_forever()),
            asyncio.create_task(self._relay(stop)),
        ]
        if self._presence is not None:
            background.append(asyncio.create_task(self._presence.beat_forever()))
        try:
            ahead = asyncio.create_task(self._claim_until(ahead=True))
            try:
                await self._claim_until()
                await ahead  # it ends too once asked to stop, its jobs started
            finally:
                await cancel_all([ahead])
            await self._drain()
        finally:
            await cancel_all(background)
            if self._presence is not None:
                await self._presence.forget()
            self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("worker stopped", extra={"worker_id": cfg.worker_id, "completed": self.completed})

    async def abort(self) -> None:
        """Stop every job now and hand them back to the queue."""
        self._stop.set()
        await self._release(list(self._running.values()))

    async def _relay(self, stop: asyncio.Event) -> None:
        """A stop request, or retiring, ends a waiting claim at once."""
        await either(stop, self._stop)
        self._stop.set()
        with contextlib.suppress(QueueUnavailableError):
            await self._leases.stop_waiting(self._config.worker_id, self._config.queues)

    def _retire(self, reason: str) -> None:
        if self._retiring is not None:
            return
        self._retiring = reason
        log.warning("retiring this worker process", extra={"reason": reason})
        if self._on_retire is not None:
            self._on_retire(reason)
        self._stop.set()

    async def _claim_until(self, ahead: bool = False) -> None:
        """Claim as slots free, until asked to stop. Two of these run: the first waits for
        work when there is none; the second (`ahead`) claims only while the queues are busy
        (the last claim came back full) and never waits, so that a second claim is on its
        way while Redis answers the first or the process runs its jobs. A claim's limit is
        taken from the free slots while it is out: the jobs held never exceed concurrency."""
        cfg = self._config
        backoff = cfg.backoff_first
        outage_since: float | None = None
        while not self._stop.is_set():
            free = cfg.concurrency - len(self._running) - self._asked
            held_back = self._isolating or (ahead and not (self._busy and free >= cfg.claim_size))
            if free <= 0 or held_back:
                if not ahead:
                    self._claims_maintain = False
                await self._wait_for_slot()
                continue
            request = ClaimRequest(
                queues=claim_order(cfg.queues, cfg.queue_weights, self._draw),
                worker_id=cfg.worker_id,
                limit=min(free, cfg.claim_size),
                lease_seconds=cfg.lease_seconds,
                wait_seconds=0.0 if ahead else cfg.claim_wait,
            )
            self._asked += request.limit
            if not ahead:
                self._claims_maintain = True  # the claim does, and so does its wait
            try:
                leases = await self._leases.claim(request)
            except QueueUnavailableError as exc:
                self._busy = False
                if ahead:
                    continue  # the first claim loop reports outages and backs off
                self._claims_maintain = False
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning("queue unavailable, retrying", extra={"reason": exc.reason})
                await wait_or_stop(self._stop, backoff)
                backoff = min(backoff * 2, cfg.backoff_cap)
                continue
            finally:
                self._asked -= request.limit
            if outage_since is not None:
                log.info(
                    "queue reachable again",
                    extra={"outage_s": round(time.monotonic() - outage_since, 2)},
                )
                outage_since = None
                backoff = cfg.backoff_first
            self._busy = len(leases) == request.limit
            if self._busy:
                self._freed.set()  # the other loop may claim too
            if not ahead:
                self._claims_maintain = not leases
            await self._start_all(leases)

    async def _start_all(self, leases: Sequence[Lease]) -> None:
        suspects = [lease for lease in leases if killed_a_worker(lease)]
        others = [lease for lease in leases if lease not in suspects]
        log_claimed(others)  # before any of their handlers runs
        for lease in others:
            self._start(lease)
        if not suspects:
            return
        # They start once the others have sent their outcomes. No claim is sent meanwhile;
        # one already on its way may bring jobs, which are waited for too.
        self._isolating = True
        try:
            waited: set[asyncio.Task[None]] = set()
            while fresh := [e.task for e in self._running.values() if e.task not in waited]:
                waited.update(fresh)
                await isolate(fresh)
            for lease in suspects:
                log_claimed([lease])
                self._start(lease)
        finally:
            self._isolating = False
            self._freed.set()

    async def _wait_for_slot(self) -> None:
        # One event for every job's end, not a wait on every running task: that cost a
        # callback added to and taken off each of them per freed slot.
        self._freed.clear()
        await either(self._freed, self._stop)

    async def _drain(self) -> None:
        if not self._running:
            return
        grace = self._config.drain_grace
        log.info("draining", extra={"in_flight": len(self._running), "grace_s": grace})
        await asyncio.wait([r.task for r in self._running.values()], timeout=grace)
        await self._release(list(self._running.values()))

    async def _release(self, running: Sequence[Running]) -> None:
        """Cancel these jobs' handlers and give the jobs back, their attempts not counted.

        A job whose cancellation was requested is recorded cancelled instead: handing it
        back would only run it again.
        """
        for entry in running:
            if entry.ending is not AttemptOutcome.CANCELLED:
                ending = AttemptOutcome.CANCELLED if entry.cancel_seen else AttemptOutcome.RELEASED
                entry.stopped, entry.ending = True, ending
        # Cancel again any task that has not yet seen its cancellation (see `tasks.cancel_all`), but
        # never one already handing its job back.
        while pending := [e for e in running if not e.task.done()]:
            for entry in pending:
                if not entry.seen_stop:
                    entry.task.cancel()
            await asyncio.wait([e.task for e in pending], timeout=0.1)

    def _start(self, lease: Lease) -> None:  # its `job claimed` line is written already
        self._observers.started(lease)
        context = WorkerJobContext(lease, self._leases, self._executor, self._board, self._clock)
        task = asyncio.create_task(self._execute(lease, context))
        entry = Running(lease, task, context)
        self._running[lease.job_id] = entry
        task.add_done_callback(lambda _: self._finished(entry))

    def _finished(self, entry: Running) -> None:
        if entry.cancel_timer is not None:
            entry.cancel_timer.cancel()
        if self._running.get(entry.lease.job_id) is entry:
            del self._running[entry.lease.job_id]
        self._freed.set()

    async def _execute(self, lease: Lease, context: WorkerJobContext) -> None:
        started = time.monotonic()
        try:
            with self._observers.running(lease):
                result = await self._processor.process(lease, context)
        except asyncio.CancelledError:
            await self._stopped(lease, context)
            return
        except Exception:
            # The processor records handler failures itself; reaching here is a bug in the
            # machinery. The lease will lapse and the job runs again elsewhere.
            log.exception("job processing crashed", extra=describe(lease.job))
            return
        self.completed += 1
        elapsed = time.monotonic() - started
        if self._observers:  # most workers have none: then nothing is built for them
            kind = result.error.kind if result.error else None
            short = result.unreplicated is not None
            end = AttemptEnd(said(result.status), kind, elapsed, context.handler_ended, short)
            self._observers.ended(lease, end)
        log_result(lease, result, elapsed)
        if result.abandoned or context.blocking_calls_running:
            # Its handler still runs (a thread cannot be interrupted): only replacing this
            # process stops it.
            self._retire(f"job {lease.job_id} did not stop after its timeout")
        elif self._config.recycle_after_jobs and self.completed >= self._config.recycle_after_jobs:
            self._retire(f"ran {self.completed} jobs")

    async def _stopped(self, lease: Lease, context: WorkerJobContext) -> None:
        entry = self._running.get(lease.job_id)
        if entry is not None:
            entry.seen_stop = True
        ending = entry.ending if entry is not None and entry.stopped else None
        if ending is AttemptOutcome.CANCELLED:
            outcome = await cut_short(self._processor, lease, context, self._config.lease_seconds)
            self.completed += 1
            if context.blocking_calls_running:
                # A thread cannot be interrupted: only replacing this process stops it.
                self._retire(f"job {lease.job_id} did not stop after its cancel request")
        elif ending is AttemptOutcome.RELEASED:
            outcome = await hand_back(self._leases, lease)
        else:
            log.warning("job stopped: lease lost", extra=describe(lease.job))
            outcome = LEASE_LOST
        self._observers.ended(lease, AttemptEnd(outcome))

    async def _watch_cancels_forever(self) -> None:
        cfg = self._config
        while True:
            await asyncio.sleep(cfg.cancel_poll)
            unseen = [
                entry
                for entry in self._running.values()
                if not entry.cancel_seen and not entry.stopped and not entry.task.done()
            ]
            if not unseen:
                continue
            try:
                requested = await self._leases.cancel_requested([e.lease for e in unseen])
            except QueueUnavailableError:
                continue  # the claim loop reports outages
            for entry in unseen:
                if entry.lease.job_id in requested and not entry.task.done():
                    self._ask_to_stop(entry)

    def _ask_to_stop(self, entry: Running) -> None:
        grace = self._config.cancel_grace
        log.info(
            "job cancel requested: asking its handler to stop",
            extra={**describe(entry.lease.job), "grace_s": grace},
        )
        entry.cancel_seen = True
        entry.context.request_cancel()
        loop = asyncio.get_running_loop()
        entry.cancel_timer = loop.call_later(grace, self._stop_cancelled, entry)

    def _stop_cancelled(self, entry: Running) -> None:
        if entry.task.done() or entry.stopped:
            return
        log.warning(
            "job handler ignored its cancel request; stopping it",
            extra=describe(entry.lease.job),
        )
        entry.stop(AttemptOutcome.CANCELLED)

    def _load(self) -> WorkerLoad:
        return WorkerLoad(in_flight=len(self._running), done=self.completed)

    async def _renew_forever(self) -> None:
        interval = self._config.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            self._check_memory()
            leases = [r.lease for r in self._running.values()]
            if not leases:
                continue
            try:
                held = await self._leases.renew(leases, self._config.lease_seconds)
            except QueueUnavailableError as exc:
                log.warning("lease renewal failed", extra={"reason": exc.reason})
                continue
            for lease in leases:
                entry = self._running.get(lease.job_id)
                if entry is None or entry.lease is not lease:
                    continue
                if lease.job_id in held:
                    self._observers.renewed(lease)
                elif not entry.stopped and entry.context.handler_ended is None:
                    # Lost. (A done handler is settling: its settlement may have ended it.)
                    entry.stop(None)

    async def _recover_forever(self) -> None:
        cfg = self._config
        tidied = time.monotonic()
        while True:
            await asyncio.sleep(cfg.recover_interval)
            now = time.monotonic()
            if self._claims_maintain and now - tidied < cfg.tidy_interval:
                # This worker's claims keep maintaining its queues (each waiting claim also
                # wakes at the next lease expiry or due job): recovering too would only
                # repeat them.
                continue
            tidied = now
            try:
                moved = await self._leases.recover(cfg.queues)
            except QueueUnavailableError:
                continue  # the claim loop reports outages
            if moved:
                log.info("recovered jobs", extra={"moved": moved})
                self._observers.recovered(moved)

    def _check_memory(self) -> None:
        limit = self._config.recycle_rss_mb
        rss = rss_bytes()
        if limit and rss is not None and self._baseline_rss is not None:
            grown = (rss - self._baseline_rss) / 2**20
            if grown > limit:
                self._retire(f"memory grew by {grown:.0f} MiB")
