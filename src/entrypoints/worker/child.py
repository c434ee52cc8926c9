"""One worker process under a supervisor: what `conveyor worker` forks (see `spawning`).

Only a child runs jobs, so only a child loads what runs them (the claim loop, its jobs'
contexts, uvloop): the supervisor, which needs none of it, imports less before it asks for
its first child.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import uvloop

from entrypoints.collector import settle_collector
from entrypoints.lifetime import follow_parent
from entrypoints.settings import Settings
from entrypoints.worker.audit import AuditLog
from entrypoints.worker.board import Board
from entrypoints.worker.config import WorkerConfig, heartbeat_interval
from entrypoints.worker.main import CLAIM_WAIT, until_signalled, wire
from entrypoints.worker.metrics_env import shared_directory
from entrypoints.worker.observers import AttemptObserver
from entrypoints.worker.runner import Worker
from entrypoints.worker.spawning import waited_to_go
from entrypoints.worker.supervisor import EXIT_CONFIG
from entrypoints.worker.tracing import traced

log = logging.getLogger("conveyor.worker")


def run_child(
    settings: Settings,
    *,
    worker_id: str,
    control_fd: int,
    concurrency: int,
    queues: tuple[str, ...],
    weights: tuple[int, ...] | None = None,
    board: Path | None = None,
    go_fd: int | None = None,
) -> int:
    """One worker process under a supervisor. Ends the process itself (see the end). With
    `go_fd` (a child the supervisor forked before checking the backend), it waits there for
    the supervisor's word before its first claim, and ends if it is refused."""
    follow_parent(signal.SIGTERM)
    wired = wire(settings)
    if wired is None:
        os._exit(EXIT_CONFIG)
    # Never block on a full pipe (a frozen supervisor): a lost heartbeat only makes it wait.
    os.set_blocking(control_fd, False)
    control = os.fdopen(control_fd, "wb", buffering=0)

    def retire(reason: str) -> None:
        # If the supervisor is gone the write fails; we are about to stop anyway.
        with contextlib.suppress(OSError):
            control.write(f"retire {reason}\n".encode())

    audit = AuditLog(settings.audit_log, worker_id) if settings.audit_log else None
    observers: list[AttemptObserver] = [audit] if audit is not None else []
    if (metrics_dir := shared_directory()) is not None:
        from entrypoints.worker.metrics import WorkerMetrics, use_directory

        use_directory(metrics_dir)
        observers.append(WorkerMetrics())
    if (tracer := traced(wired.container.tracing())) is not None:
        observers.append(tracer)
    config = WorkerConfig(
        worker_id=worker_id,
        queues=queues,
        queue_weights=weights,
        concurrency=concurrency,
        batch=settings.claim_batch,
        lease_seconds=settings.lease_seconds,
        claim_wait=CLAIM_WAIT,
        recover_interval=settings.recover_interval_seconds,
        drain_grace=settings.drain_grace_seconds,
        recycle_after_jobs=settings.recycle_after_jobs,
        recycle_rss_mb=settings.recycle_rss_mb,
        cancel_grace=settings.cancel_grace_seconds,
    )
    processor = wired.container.job_processor(cancel_grace=settings.kill_grace_seconds)
    worker = Worker(
        wired.leases,
        processor,
        config,
        monitor=wired.monitor,
        observers=observers,
        board=Board(board, threads=concurrency) if board is not None else None,
        on_retire=retire,
        clock=wired.container.clock(),
    )

    async def work(stop: asyncio.Event) -> int:
        # From the event loop: a handler that blocks the loop silences it, and the
        # supervisor's watchdog replaces this process (see `Supervisor`).
        beating = asyncio.create_task(_say_alive(control, heartbeat_interval(settings.watchdog)))
        try:
            await worker.run(stop)
        finally:
            beating.cancel()
        return 0

    if go_fd is not None and not waited_to_go(go_fd):
        os._exit(0)  # the supervisor refused the backend (it says why), or is gone
    settle_collector()  # what was built so far lives as long as the process
    code = uvloop.run(until_signalled(work, wired.connection, on_second=worker.abort))
    if audit is not None:
        audit.close()
    wired.container.tracing().close()  # os._exit skips exit handlers: send the last spans now
    logging.shutdown()
    sys.stdout.flush()
    # A handler stuck in a thread would keep the interpreter alive at exit; its job is
    # settled already, so end the process regardless.
    os._exit(code)


async def _say_alive(control: Any, interval: float) -> None:
    """Tell the supervisor this process is alive, and learn whether it still is: a write to
    the pipe it no longer reads fails, and this process then stops as if asked to. (Children
    are forked by the fork server, so the kernel's parent-death signal follows that server,
    which may outlive a supervisor killed with SIGKILL.)"""
    while True:
        try:
            control.write(b"alive\n")
        except BrokenPipeError:
            log.warning("the supervisor is gone: stopping")
            os.kill(os.getpid(), signal.SIGTERM)
            return
        except OSError:
            pass  # a full pipe (a frozen supervisor): the next beat may get through
        await asyncio.sleep(interval)
