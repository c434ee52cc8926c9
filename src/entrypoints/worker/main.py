"""`conveyor worker`: the supervisor, and what it shares with the children it starts
(`entrypoints.worker.child`): the roles they run on, and how a signal stops them."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import attrs

from domain.ports import Connection, LeaseQueue, QueueMonitor
from entrypoints.collector import settle_collector
from entrypoints.container import Container, build_container
from entrypoints.logs import redact_url
from entrypoints.settings import QueueBackend, Settings
from entrypoints.worker.metrics_env import metrics_off
from entrypoints.worker.supervisor import (
    EXIT_CONFIG,
    PoolConfig,
    Supervisor,
)

log = logging.getLogger("conveyor.worker")

# One claim waits this long at most; a stop request ends the wait (`stop_waiting`).
CLAIM_WAIT = 4.0


@attrs.frozen
class NativeRoles:
    """What the native worker runs on: the roles of the backend it uses."""

    container: Container
    connection: Connection
    leases: LeaseQueue
    monitor: QueueMonitor | None


def native_roles(container: Container) -> NativeRoles | None:
    """The roles the native worker needs from the container's backend, or None (with the
    reason logged) when it cannot run on that backend."""
    backend = container.backend()
    if not backend.shared_across_processes:
        log.error(
            "QUEUE_BACKEND=%s lives inside one process and cannot feed a separate worker; "
            "use QUEUE_BACKEND=redis",
            backend.name,
        )
        return None
    if backend.leases is None:
        log.error(
            "QUEUE_BACKEND=%s hands out no leases, so the native worker cannot claim from it; "
            "use QUEUE_BACKEND=redis",
            backend.name,
        )
        return None
    return NativeRoles(container, backend.connection, backend.leases, backend.monitor)


def wire(settings: Settings) -> NativeRoles | None:
    # Above the blocking claim's wait, so a quiet queue is not mistaken for a dead Redis.
    roles = native_roles(build_container(settings, redis_socket_timeout=CLAIM_WAIT + 5.0))
    if roles is not None and settings.redis_url:
        log.info("connecting", extra={"redis_url": redact_url(settings.redis_url)})
    return roles


def run_worker(
    settings: Settings,
    *,
    processes: int,
    concurrency: int,
    queues: tuple[str, ...],
    weights: tuple[int, ...] | None = None,
    metrics_port: int | None = None,
) -> int:
    """Run the supervisor and its children until SIGTERM or SIGINT; answers the exit code.

    With `weights` (one per queue), each claim tries the queues in a random order drawn by
    weight; without, in the order given. With `metrics_port`, serves the pool's metrics.
    """
    if settings.queue_backend is QueueBackend.RQ:  # RQ's own worker runs the jobs
        from entrypoints.worker.rq_main import run_rq_worker

        if metrics_port is not None:
            log.warning("QUEUE_BACKEND=rq: RQ's worker serves no metrics; the port is not used")
        return run_rq_worker(settings, queues=queues)
    server = None
    if metrics_port is None:
        metrics_off()
    else:
        from entrypoints.worker.metrics import MetricsPortError, MetricsServer

        try:
            # Before any child exists: each learns from the environment where to write.
            server = MetricsServer(settings.api_host, metrics_port)
        except MetricsPortError as exc:
            log.error("%s", exc)
            return EXIT_CONFIG
    try:
        return _supervise(settings, processes, concurrency, queues, weights, server is not None)
    finally:
        if server is not None:
            server.close()


def _supervise(
    settings: Settings,
    processes: int,
    concurrency: int,
    queues: tuple[str, ...],
    weights: tuple[int, ...] | None,
    metrics: bool,
) -> int:
    wired = wire(settings)
    if wired is None:
        return EXIT_CONFIG
    counted = None
    if metrics:
        from entrypoints.worker.metrics import WorkerMetrics

        counted = WorkerMetrics()
    config = PoolConfig(
        processes=processes,
        concurrency=concurrency,
        queues=queues,
        queue_weights=weights,
        drain_grace=settings.drain_grace_seconds,
        kill_grace=settings.kill_grace_seconds,
        watchdog=settings.watchdog,
    )
    supervisor = Supervisor(
        wired.connection,
        wired.leases,
        wired.container.job_processor(),
        config,
        monitor=wired.monitor,
        observers=[counted] if counted is not None else [],
        pool_observer=counted,
    )
    # Now, while this process holds no connection, loop or other thread: the children load
    # what only they run while this one goes on to check the backend (they wait for it).
    supervisor.fork_first()
    container = wired.container
    # Only the supervisor runs the scheduler: no child loads it (the first ones are forked
    # before this, the others by the fork server).
    from entrypoints.scheduling import check_schedules, schedule

    check_schedules(container)  # a bad CONVEYOR_SCHEDULES stops start-up (SettingsError)
    settle_collector()  # what start-up built lives as long as the supervisor

    async def supervise_and_schedule(stop: asyncio.Event) -> int:
        # The supervisor (one per `conveyor worker`, not its children) runs the scheduler:
        # the store gives each tick to one process, however many run it. It starts once the
        # children are asked for: its first round trips and imports would otherwise come
        # between a new worker and its first job.
        if not container.settings().scheduler:
            return await supervisor.run(stop)
        scheduling: asyncio.Task[None] | None = None

        def start_scheduling() -> None:
            nonlocal scheduling
            scheduling = asyncio.create_task(schedule(container, stop))

        try:
            return await supervisor.run(stop, started=start_scheduling)
        finally:
            stop.set()
            if scheduling is not None:
                await scheduling

    return asyncio.run(until_signalled(supervise_and_schedule, wired.connection))


async def until_signalled(
    main: Callable[[asyncio.Event], Awaitable[int]],
    connection: Connection,
    on_second: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0
    pending: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        name = signal.Signals(signum).name
        if signals == 1:
            log.info(
                "stop requested: finishing jobs in flight (signal again to hand them back)",
                extra={"signal": name},
            )
            stop.set()
        elif on_second is not None:
            log.warning("second stop request: handing jobs in flight back to the queue")
            pending.append(loop.create_task(on_second()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        code = await main(stop)
        return code
    finally:
        await connection.close()
