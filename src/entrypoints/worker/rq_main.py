"""`conveyor worker` with QUEUE_BACKEND=rq: RQ's own worker (`adapters.rq`), wired here.

The settings and the environment give the worker its timings, the container its job types;
the worker's children follow it in death (`entrypoints.lifetime`), and a worker that RQ ends
on a Redis error is started again until a signal asks the process to stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
from redis.exceptions import RedisError
from rq.version import VERSION as RQ_VERSION

from adapters.rq import (
    HARD_TIMEOUT_GRACE,
    ConveyorBaseWorker,
    RqWorkerConfig,
    WorkerKind,
    build_worker,
    create_rq_redis,
    rq_backend,
)
from entrypoints.container import build_container
from entrypoints.lifetime import follow_parent
from entrypoints.logs import redact_url
from entrypoints.settings import Settings, SettingsError
from entrypoints.startup import backend_is_safe
from entrypoints.worker.supervisor import EXIT_CONFIG

log = logging.getLogger("conveyor.worker.rq")


def worker_config(environ: Mapping[str, str] | None = None) -> RqWorkerConfig:
    """The worker's timings from the environment (whole seconds, each at least 1):
    CONVEYOR_RQ_WORKER_CLASS (fork or simple), CONVEYOR_RQ_HEARTBEAT_SECONDS,
    CONVEYOR_RQ_HEARTBEAT_GRACE_SECONDS, CONVEYOR_RQ_MAINTENANCE_SECONDS and
    CONVEYOR_RQ_IDLE_WAIT_SECONDS. Raises SettingsError naming a bad one."""
    env = os.environ if environ is None else environ
    defaults = RqWorkerConfig()

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
    return RqWorkerConfig(
        kind=kind,
        heartbeat=seconds("CONVEYOR_RQ_HEARTBEAT_SECONDS", defaults.heartbeat),
        grace=seconds("CONVEYOR_RQ_HEARTBEAT_GRACE_SECONDS", defaults.grace),
        maintenance=seconds("CONVEYOR_RQ_MAINTENANCE_SECONDS", defaults.maintenance),
        idle_wait=seconds("CONVEYOR_RQ_IDLE_WAIT_SECONDS", defaults.idle_wait),
    )


def run_rq_worker(settings: Settings, *, queues: tuple[str, ...]) -> int:
    """Run one RQ worker (one job at a time) until SIGTERM/SIGINT; answers the exit code.

    Run more `conveyor worker` processes for more throughput.
    """
    config = worker_config()
    url = settings.require_redis_url()
    registry = build_container(settings).registry()
    client = create_rq_redis(url, connect_timeout=settings.redis_timeout, socket_timeout=None)
    if not _safe(client, settings):
        return EXIT_CONFIG

    def new_worker() -> ConveyorBaseWorker:
        return build_worker(
            client,
            queues,
            registry=registry,
            prefix=settings.key_prefix,
            config=config,
            result_ttl=settings.result_ttl_seconds,
            # The handler's grace after our timeout must end well before RQ's hard limit.
            timeout_grace=min(settings.kill_grace_seconds, HARD_TIMEOUT_GRACE - 5),
            cancel_grace=settings.cancel_grace_seconds,
            random=random.random,
            follow_parent=follow_parent,
            max_result_bytes=settings.max_result_bytes,
            expose_tracebacks=settings.expose_tracebacks,
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


def _work_until_stopped(new_worker: Callable[[], ConveyorBaseWorker], logging_level: str) -> int:
    """RQ's worker quits when Redis goes away (a restart, a failover); start a new one (a new
    name: the old one may not have recorded its death), with a backoff, until a signal asks
    it to stop. A job it was running when it quit is left `started` and is settled by the
    abandoned-job sweep, like a killed worker's; the scheduler locks it could not release are
    released once Redis answers again."""
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    delay = 1.0
    stopped: list[ConveyorBaseWorker] = []  # workers RQ stopped on an error, locks maybe held
    while True:
        for earlier in list(stopped):
            try:
                earlier.release_scheduler_locks()
            except RedisError:
                continue  # Redis is still away: the new worker fails too, and we try again
            stopped.remove(earlier)
        started = time.monotonic()
        worker = new_worker()
        try:
            worker.work(with_scheduler=True, logging_level=logging_level)
        except RedisError as exc:  # while starting or recording its own end
            log.warning("the RQ worker could not reach Redis: %s", exc)
        if worker.stop_asked or stopping:
            return 0
        stopped.append(worker)
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


def _safe(client: redis.Redis, settings: Settings) -> bool:
    """The backend check every long-running process makes (its client stays open: the
    worker uses it)."""
    connection = rq_backend(client, prefix=settings.key_prefix).connection
    return asyncio.run(backend_is_safe(connection, log))
