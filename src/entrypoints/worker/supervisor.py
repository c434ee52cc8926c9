"""`conveyor worker`: a supervisor process and its N worker children.

The supervisor runs no jobs. It starts the children, replaces one the moment it dies, and
settles the jobs a dead child held: each attempt is recorded as `worker_lost` with the exit
code or signal, and retried or dead-lettered by its job type's policy. So a job that kills
its process reaches `dead` after exactly its max attempts while the other children keep
serving. A child that asks to retire (a handler that would not stop, or recycling) gets its
replacement at once and is killed if it has not finished within its grace period.

A watchdog replaces a child that stops answering: each child's event loop says it is alive
over its control pipe every `heartbeat_interval`, and one silent for `PoolConfig.watchdog`
seconds (by default the lease: its leases have lapsed by then, so killing it loses nothing)
is killed and replaced like a child that died. Its executing job is charged, as after a crash:
a handler that blocks the event loop would otherwise hold a process forever.

On SIGTERM or SIGINT the supervisor asks every child to drain and waits for them; a child
still running after its grace is killed and its jobs handed back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from domain.errors import NotReplicatedError, QueueUnavailableError
from domain.jobs import ErrorKind, JobError, JobStatus
from domain.ports import Connection, LeaseQueue, QueueMonitor
from domain.processing import JobProcessor, describe
from domain.settlement import Ending
from entrypoints.startup import backend_is_safe
from entrypoints.worker.board import executing
from entrypoints.worker.config import queues_argument
from entrypoints.worker.endings import RELEASED, describe_exit, said, warn_unreplicated
from entrypoints.worker.observers import AttemptEnd, AttemptObserver, Observers, PoolObserver
from entrypoints.worker.spawning import (
    ChildSpec,
    ForkedChild,
    ForkServer,
    HeldChildren,
    can_fork_directly,
)

log = logging.getLogger("conveyor.supervisor")

EXIT_CONFIG = 2  # a child that exits with this cannot work with this configuration
_RESTART_WINDOW = 10.0
_RESTARTS_BEFORE_BACKOFF = 20


@attrs.frozen(kw_only=True)
class PoolConfig:
    processes: int
    concurrency: int
    queues: tuple[str, ...]
    drain_grace: float
    kill_grace: float
    queue_weights: tuple[int, ...] | None = None  # one per queue; None: strict order
    # Seconds a child may go without saying it is alive before it is replaced; 0: never.
    watchdog: float = 0.0


# A child that has not said it is alive yet is starting (imports, connections): it gets at
# least this long before the watchdog counts it as stuck.
_STARTUP_GRACE = 20.0


@attrs.define
class _Child:
    slot: int
    worker_id: str
    proc: ForkedChild
    started: float
    retiring: bool = False
    stopping: bool = False
    # When it last said it was alive (None: not yet); why the watchdog killed it, if it did.
    last_beat: float | None = None
    unresponsive: str | None = None


class Supervisor:
    def __init__(
        self,
        connection: Connection,
        leases: LeaseQueue,
        processor: JobProcessor,
        config: PoolConfig,
        *,
        monitor: QueueMonitor | None = None,
        observers: Sequence[AttemptObserver] = (),
        pool_observer: PoolObserver | None = None,
    ) -> None:
        self._connection = connection
        # Told how the attempts of a child that died ended, which the child cannot say.
        self._observers = Observers(observers)
        self._pool = pool_observer or PoolObserver()
        self._leases = leases
        self._monitor = monitor
        self._processor = processor
        self._config = config
        # Names this pool in the job records clients read (`worker`): random, so they learn
        # nothing about the machine; the start-up log line ties it to the host and pid.
        self._id = secrets.token_hex(4)
        self._generation = 0
        self._children: dict[int, _Child] = {}  # by pid
        self._watchers: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._exit_code = 0
        self._deaths: list[float] = []
        self._done = asyncio.Event()
        self._boards = Path(tempfile.mkdtemp(prefix="conveyor-boards-"))
        self._forks = ForkServer()
        # The first children, forked from this process before `run` (`fork_first`), by slot.
        self._held: HeldChildren | None = None
        self._first: dict[int, tuple[str, ForkedChild, int]] = {}

    def _board_path(self, worker_id: str) -> Path:
        return self._boards / (worker_id.rsplit("/", 1)[-1] + ".board")

    async def run(self, stop: asyncio.Event, started: Callable[[], None] | None = None) -> int:
        """Run the pool until `stop` is set; `started` is called once its first children
        are asked for (not if the backend is refused before)."""
        cfg = self._config
        log.info(
            "supervisor started",
            extra={
                "pool": self._id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "processes": cfg.processes,
                "concurrency": cfg.concurrency,
                "queues": queues_argument(cfg.queues, cfg.queue_weights),
            },
        )
        if not await backend_is_safe(self._connection, log):
            if self._held is not None:
                self._held.refuse()
            return EXIT_CONFIG
        for slot in range(cfg.processes):
            if slot in self._first:  # its start counts from now, as its wait ends
                worker_id, proc, fd = self._first.pop(slot)
                self._adopt(_Child(slot, worker_id, proc, time.monotonic()), fd)
            else:
                await self._spawn(slot)
        if self._held is not None:
            self._held.go()
        if started is not None:
            started()
        stopper = asyncio.create_task(stop.wait())
        done = asyncio.create_task(self._done.wait())
        watchdog = asyncio.create_task(self._watchdog()) if cfg.watchdog > 0 else None
        await asyncio.wait([stopper, done], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        done.cancel()
        if watchdog is not None:
            watchdog.cancel()
        await self._stop_all()
        log.info("supervisor stopped", extra={"exit_code": self._exit_code})
        return self._exit_code

    def fork_first(self) -> None:
        """Fork the first children from this process before `run` (see `spawning`); each
        waits for `run` to find the backend safe before its first claim. With another thread
        running (the metrics server's), `run` asks the fork server for them instead."""
        if not can_fork_directly():
            return
        self._held = HeldChildren()
        for slot, spec in ((slot, self._spec(slot)) for slot in range(self._config.processes)):
            proc, read_fd = self._held.fork(spec)
            self._first[slot] = (spec.worker_id, proc, read_fd)

    def _spec(self, slot: int) -> ChildSpec:
        self._generation += 1
        worker_id = f"{self._id}/{slot}.{self._generation}"
        cfg = self._config
        return ChildSpec(
            worker_id=worker_id,
            concurrency=cfg.concurrency,
            queues=cfg.queues,
            weights=cfg.queue_weights,
            board=str(self._board_path(worker_id)),
        )

    async def _spawn(self, slot: int) -> None:
        spec = self._spec(slot)
        read_fd, write_fd = os.pipe()
        try:
            # From the fork server, started for the first (see `spawning`). Each child runs in
            # its own session, and dies with its parent (it sets PR_SET_PDEATHSIG itself).
            proc = self._forks.spawn(spec, write_fd)
        finally:
            os.close(write_fd)
        self._adopt(_Child(slot, spec.worker_id, proc, time.monotonic()), read_fd)

    def _adopt(self, child: _Child, read_fd: int) -> None:
        proc, slot, worker_id = child.proc, child.slot, child.worker_id
        self._children[proc.pid] = child
        log.info("child started", extra={"pid": proc.pid, "worker_id": worker_id, "slot": slot})
        watcher = asyncio.create_task(self._watch(child, read_fd))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, child: _Child, read_fd: int) -> None:
        listener = asyncio.create_task(self._listen(child, read_fd))
        code = await child.proc.wait()
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        self._children.pop(child.proc.pid, None)
        cause, exit_code, signal_name = describe_exit(code)
        if child.unresponsive is not None:
            cause = f"{child.unresponsive}; {cause}"
        expected = child.stopping or (child.retiring and code == 0)
        if expected:
            log.info("child exited", extra={"pid": child.proc.pid, "cause": cause})
        else:
            log.error(
                "child died",
                extra={"pid": child.proc.pid, "cause": cause, "worker_id": child.worker_id},
            )
        if code == EXIT_CONFIG and not child.stopping:
            log.error("a worker cannot start with this configuration; stopping")
            self._exit_code = EXIT_CONFIG
            self._done.set()
            return
        culprits = set() if expected else executing(self._board_path(child.worker_id))
        if not expected and not child.retiring and not self._stopping:
            replaced = "killed" if signal_name else "exited"
            self._pool.child_replaced("unresponsive" if child.unresponsive else replaced)
            await self._respawn(child.slot, explained=bool(culprits))
        await self._settle(
            child,
            expected=expected,
            culprits=culprits,
            error=JobError(
                message=f"the worker process running it {cause}",
                type="WorkerLost",
                kind=ErrorKind.WORKER_LOST,
                exit_code=exit_code,
                signal=signal_name,
            ),
        )

    async def _respawn(self, slot: int, *, explained: bool) -> None:
        """Replace a dead child. A death a job explains (its board names the job whose code
        was running) is replaced at once, however many there are: each costs that job an
        attempt, so a burst of crashing jobs runs out, and the work queued behind it must not
        wait. Deaths nothing explains (a child that cannot start, a broken deployment) slow
        down past a few in a row instead of spinning."""
        now = time.monotonic()
        if not explained:
            self._deaths = [t for t in self._deaths if now - t < _RESTART_WINDOW] + [now]
            if len(self._deaths) > _RESTARTS_BEFORE_BACKOFF:
                await asyncio.sleep(1.0)
        await self._spawn(slot)

    async def _listen(self, child: _Child, read_fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        try:
            while line := await reader.readline():
                child.last_beat = time.monotonic()  # any line is a sign of life
                if line.startswith(b"retire") and not child.retiring and not self._stopping:
                    await self._retire(
                        child, line[len(b"retire") :].strip().decode(errors="replace")
                    )
        finally:
            transport.close()

    async def _watchdog(self) -> None:
        """Kill every child silent for longer than the watchdog allows; `_watch` replaces it
        and settles its jobs as for any child that died."""
        limit = self._config.watchdog
        while True:
            await asyncio.sleep(min(1.0, limit / 5))
            now = time.monotonic()
            for child in list(self._children.values()):
                if child.retiring or child.stopping or child.unresponsive is not None:
                    continue  # a retiring or stopping child has its own deadline
                since = child.started if child.last_beat is None else child.last_beat
                allowed = limit if child.last_beat is not None else max(limit, _STARTUP_GRACE)
                if now - since <= allowed:
                    continue
                child.unresponsive = f"stopped answering for {now - since:.1f} s"
                log.error(
                    "child stopped answering; killing it",
                    extra={
                        "pid": child.proc.pid,
                        "worker_id": child.worker_id,
                        "silent_s": round(now - since, 1),
                    },
                )
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()

    async def _retire(self, child: _Child, reason: str) -> None:
        child.retiring = True
        log.warning("replacing a retiring child", extra={"pid": child.proc.pid, "reason": reason})
        self._pool.child_replaced("retired")
        await self._spawn(child.slot)
        deadline = self._config.drain_grace + self._config.kill_grace
        task = asyncio.create_task(self._kill_after(child, deadline))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _kill_after(self, child: _Child, seconds: float) -> None:
        try:
            await asyncio.wait_for(child.proc.wait(), timeout=seconds)
        except TimeoutError:
            log.warning("child did not exit in time; killing it", extra={"pid": child.proc.pid})
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()

    async def _settle(
        self,
        child: _Child,
        *,
        expected: bool,
        error: JobError,
        culprits: set[str] | None = None,
    ) -> None:
        """Record what became of the jobs a child held when it ended.

        After a crash, the jobs whose code was executing at that moment (the board says
        which) are charged an attempt; the others were only waiting and go back to the
        queue uncharged. When the board names none of them (the process was killed from
        outside), every job it held is charged.
        """
        board = self._board_path(child.worker_id)
        if culprits is None:
            culprits = set() if expected else executing(board)
        while True:
            try:
                leases = await self._leases.held_by(child.worker_id, self._config.queues)
                held = {lease.job_id for lease in leases}
                charged = (held & culprits) or held
                for lease in leases:
                    if expected or lease.job_id not in charged:
                        try:
                            status = await self._leases.settle(lease, Ending.released())
                        except NotReplicatedError as exc:
                            warn_unreplicated(lease, exc)  # it stands on the primary
                            status = exc.settled
                        word = RELEASED if status is JobStatus.QUEUED else said(status)
                        self._observers.ended(lease, AttemptEnd(word))
                        continue
                    result = await self._processor.record_lost(lease, error)
                    if result.unreplicated is not None:
                        warn_unreplicated(lease, result.unreplicated)
                    self._observers.ended(
                        lease,
                        AttemptEnd(
                            said(result.status),
                            error.kind,
                            unreplicated=result.unreplicated is not None,
                        ),
                    )
                    log.warning(
                        "job lost with its worker",
                        extra={**describe(lease.job), "outcome": said(result.status)},
                    )
                break
            except QueueUnavailableError:
                if self._stopping:
                    break  # their leases lapse; another worker reclaims them
                await asyncio.sleep(1.0)
        board.unlink(missing_ok=True)
        # A child that died could not say it stopped; one that exited has said so already.
        if not expected and self._monitor is not None:
            with contextlib.suppress(QueueUnavailableError):
                await self._monitor.forget_worker(child.worker_id)

    async def _stop_all(self) -> None:
        self._stopping = True
        children = list(self._children.values())
        for child in children:
            child.stopping = True
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
        deadline = self._config.drain_grace + 2.0
        waits = [asyncio.create_task(self._kill_after(c, deadline)) for c in children]
        if waits:
            await asyncio.wait(waits)
        if self._watchers:
            await asyncio.wait(list(self._watchers), timeout=5.0)
        shutil.rmtree(self._boards, ignore_errors=True)
