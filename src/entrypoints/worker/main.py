"""`conveyor worker`: build the container, run the worker loop, stop cleanly on a signal."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import uuid

import uvloop

from domain.ports import JobQueue
from entrypoints.container import build_container
from entrypoints.logs import redact_url
from entrypoints.settings import Backend, Settings
from entrypoints.worker.runner import Worker, WorkerConfig

log = logging.getLogger("conveyor.worker")

_CLAIM_WAIT = 1.0


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def run_worker(settings: Settings, *, concurrency: int, queues: tuple[str, ...]) -> int:
    """Run a worker in this process until SIGTERM or SIGINT. Answers the exit code."""
    if settings.queue_backend is Backend.MEMORY:
        log.error(
            "QUEUE_BACKEND=memory lives inside one process and cannot feed a separate worker; "
            "use QUEUE_BACKEND=redis"
        )
        return 2
    url = settings.require_redis_url()
    log.info("connecting", extra={"redis_url": redact_url(url)})
    container = build_container(settings, redis_socket_timeout=_CLAIM_WAIT + 5.0)
    config = WorkerConfig(
        worker_id=new_worker_id(),
        queues=queues,
        concurrency=concurrency,
        batch=settings.claim_batch,
        lease_seconds=settings.lease_seconds,
        claim_wait=_CLAIM_WAIT,
    )
    worker = Worker(container.job_queue(), container.job_processor(), config)
    uvloop.run(_serve(worker, container.job_queue()))
    return 0


async def _serve(worker: Worker, queue: JobQueue) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0
    aborting: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info(
                "stop requested: finishing jobs in flight (signal again to abandon them)",
                extra={"signal": signal.Signals(signum).name},
            )
            stop.set()
        else:
            log.warning("second stop request: abandoning jobs in flight")
            aborting.append(loop.create_task(worker.abort()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await worker.run(stop)
    finally:
        await queue.close()
