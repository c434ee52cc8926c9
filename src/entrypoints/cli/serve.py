"""`conveyor api`, `worker` and `dev`: the commands that run the service."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from entrypoints.cli.arguments import positive_int
from entrypoints.container import Container, build_container
from entrypoints.logs import redact_url
from entrypoints.setting_values import parse_weighted_queues
from entrypoints.settings import QueueBackend, Settings, SettingsError, parse_flag
from entrypoints.startup import backend_is_safe
from entrypoints.tracing import check_tracing

if TYPE_CHECKING:
    from entrypoints.cli.arguments import Commands

log = logging.getLogger("conveyor")

DEV_DATA_DIR = Path(".conveyor") / "redis"
TOPOLOGIES = ("single", "sentinel", "cluster")
_CHILD_STOP_GRACE = 30.0


def add_commands(commands: Commands) -> None:
    api = commands.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host", default=None, help="bind address (default CONVEYOR_API_HOST)")
    api.add_argument("--port", type=int, default=None, help="port (default CONVEYOR_API_PORT)")
    api.set_defaults(run=run_api)

    worker = commands.add_parser("worker", help="run a supervisor and its worker processes")
    worker.add_argument(
        "--processes",
        type=positive_int,
        default=None,
        help="worker processes to supervise (default CONVEYOR_WORKER_PROCESSES)",
    )
    worker.add_argument(
        "--concurrency",
        type=positive_int,
        default=None,
        help="jobs run at once (default CONVEYOR_WORKER_CONCURRENCY)",
    )
    worker.add_argument(
        "--queues",
        type=parse_weighted_queues,
        default=None,
        help="comma-separated queues: `a,b` in strict order, `a:3,b:1` in random order by"
        " weight for each claim (default CONVEYOR_WORKER_QUEUES)",
    )
    worker.add_argument(
        "--metrics-port",
        type=positive_int,
        default=None,
        help="serve Prometheus metrics on this port, on CONVEYOR_API_HOST (default"
        " CONVEYOR_METRICS_PORT; unset: not served)",
    )
    worker.set_defaults(run=run_worker)

    scheduler = commands.add_parser(
        "scheduler",
        help="run only the scheduler (the API and `conveyor worker` run it too; with"
        " QUEUE_BACKEND=rq the workers do not)",
    )
    scheduler.set_defaults(run=run_scheduler)

    dev = commands.add_parser(
        "dev",
        help="the whole service in one terminal: local Redis (if REDIS_URL is unset), "
        "the API and one worker; Ctrl-C stops all of them",
    )
    dev.add_argument("--port", type=int, default=None, help="API port (default 8000)")
    dev.add_argument("--host", default=None, help="API bind address (default 127.0.0.1)")
    dev.add_argument(
        "--topology",
        choices=TOPOLOGIES,
        default="single",
        help="the local Redis to start when REDIS_URL is unset: one server (default), a"
        " primary with 2 replicas watched by 3 Sentinels (REDIS_URL=redis+sentinel://...),"
        " or a cluster of 3 primaries (REDIS_URL=redis+cluster://..., empty at each start)",
    )
    dev.set_defaults(run=run_dev)


def _warn_of_faults(settings: Settings) -> None:
    if settings.dummy_faults:
        log.warning(
            "CONVEYOR_DUMMY_FAULTS=1: any client can crash or swamp worker processes with "
            "dummy jobs (crash, memory, hang, cpu); for development and tests only"
        )


def run_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    # Here: `conveyor worker` loads this module too, and loads the scheduler only once its
    # first children are forked (none of them runs it).
    from entrypoints.scheduling import check_schedules

    _warn_of_faults(settings)
    check_tracing(settings)
    if settings.queue_backend in (QueueBackend.REDIS, QueueBackend.RQ):
        settings.require_redis_url()  # fail here, with a clear message, not inside uvicorn
        _check_cluster_mode(settings)  # the same
    container = build_container(settings)
    check_schedules(container)  # the same: a bad CONVEYOR_SCHEDULES
    if not asyncio.run(_backend_is_safe(container)):
        return 2  # the reason is logged; inside uvicorn its traceback would follow
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to whatever
    # handler was there before it; with these, a clean stop exits 0 instead of dying by it.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    uvicorn.run(
        "entrypoints.api.app:create_served_app",
        factory=True,
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        log_level=settings.log_level.lower(),
        # uvicorn's own lines go through the process's logging (structured, redacted): its
        # start-up lines always, a line per request with CONVEYOR_ACCESS_LOG=1.
        log_config=None,
        access_log=settings.access_log,
        server_header=False,
    )
    return 0


async def _backend_is_safe(container: Container) -> bool:
    """The API's own start-up check (`backend_is_safe`), made before uvicorn starts so that a
    refusal is one line; its warnings are left to the start-up inside uvicorn, which says
    them once."""
    connection = container.backend().connection
    try:
        return await backend_is_safe(connection, log, warnings=False)
    finally:
        await connection.close()


def _check_cluster_mode(settings: Settings) -> None:
    """A cluster URL naming a server not in cluster mode, or Sentinels that know no primary
    by the URL's service name, stop start-up with one line (the API's own start-up check
    would say it inside uvicorn, followed by its traceback)."""
    from adapters.redis_cluster import NOT_A_CLUSTER, is_cluster_url, not_in_cluster_mode
    from adapters.redis_sentinel import is_sentinel_url

    url = settings.require_redis_url()
    if is_cluster_url(url) and asyncio.run(
        not_in_cluster_mode(url, connect_timeout=settings.redis_timeout)
    ):
        raise SettingsError(NOT_A_CLUSTER)
    if is_sentinel_url(url):
        mistaken = asyncio.run(_sentinel_service_unknown(url, settings.redis_timeout))
        if mistaken is not None:
            raise SettingsError(mistaken)


async def _sentinel_service_unknown(url: str, redis_timeout: float) -> str | None:
    """`adapters.redis_sentinel.unknown_service` for a Sentinel URL, asked before uvicorn
    starts (the same check in the API's start-up would be followed by its traceback)."""
    from redis.exceptions import RedisError

    from adapters.redis_client import create_redis
    from adapters.redis_sentinel import unknown_service

    client = create_redis(url, connect_timeout=redis_timeout, socket_timeout=redis_timeout)
    try:
        await client.ping()
    except RedisError as exc:
        return await unknown_service(client, exc)
    finally:
        await client.aclose()
    return None


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    from entrypoints.worker.main import run_worker

    _warn_of_faults(settings)
    check_tracing(settings)
    queues, weights = args.queues or (settings.worker_queues, settings.worker_queue_weights)
    return run_worker(
        settings,
        processes=args.processes or settings.worker_processes,
        concurrency=args.concurrency or settings.worker_concurrency,
        queues=queues,
        weights=weights,
        metrics_port=args.metrics_port or settings.metrics_port,
    )


def run_scheduler(args: argparse.Namespace, settings: Settings) -> int:
    from entrypoints.scheduling import run_scheduler_process

    return run_scheduler_process(settings)


def run_dev(args: argparse.Namespace, settings: Settings) -> int:
    if settings.redis_url:
        if args.topology != "single":
            print(
                f"conveyor dev: --topology {args.topology} starts a local Redis; it cannot"
                " be used with REDIS_URL set",
                file=sys.stderr,
            )
            return 2
        return _run_children(args, settings.redis_url)
    with local_redis_for_dev(args.topology, DEV_DATA_DIR) as redis_url:
        return _run_children(args, redis_url)


@contextlib.contextmanager
def local_redis_for_dev(topology: str, base_dir: Path) -> Iterator[str]:
    """Start the chosen local topology under ``base_dir``, yield its URL, stop it at the end.

    One data dir per server identity, since data files are not portable between servers and
    versions. A cluster gets a fresh dir per run, removed after: its nodes' ports change
    between runs, so an earlier cluster could not be rejoined.
    """
    from entrypoints.local_redis import LocalRedis, find_server_binary, server_identity
    from entrypoints.local_topologies import LocalCluster, LocalSentinelSet

    binary = find_server_binary()
    identity = server_identity(binary)
    if topology == "single":
        data_dir = base_dir / identity
        with LocalRedis(data_dir=data_dir.resolve(), binary=binary) as server:
            print(f"conveyor dev: local Redis at {server.url} (data in {data_dir})", flush=True)
            yield server.url
    elif topology == "sentinel":
        data_dir = base_dir / f"{identity}-sentinel"
        with LocalSentinelSet(data_dir.resolve(), binary=binary) as sentinels:
            print(
                f"conveyor dev: local primary {sentinels.primary_port}, replicas "
                f"{list(sentinels.replica_ports)}, Sentinels at {sentinels.url} (data in "
                f"{data_dir})",
                flush=True,
            )
            yield sentinels.url
    elif topology == "cluster":
        base_dir.mkdir(parents=True, exist_ok=True)
        with (
            tempfile.TemporaryDirectory(prefix=f"{identity}-cluster-", dir=base_dir) as run_dir,
            LocalCluster(Path(run_dir).resolve(), binary=binary) as cluster,
        ):
            print(
                f"conveyor dev: local cluster at {cluster.url} (data in {run_dir}, removed"
                " when dev stops)",
                flush=True,
            )
            yield cluster.url
    else:
        raise ValueError(f"topology must be one of {TOPOLOGIES}, got {topology!r}")


def _run_children(args: argparse.Namespace, redis_url: str) -> int:
    # A development deployment offers `dummy`'s fault modes, unless told otherwise.
    env = {"CONVEYOR_DUMMY_FAULTS": "1", **os.environ, "REDIS_URL": redis_url}
    base = [sys.executable, "-m", "entrypoints"]
    api_cmd = [*base, "api"]
    if args.port:
        api_cmd += ["--port", str(args.port)]
    if args.host:
        api_cmd += ["--host", args.host]
    children = [
        subprocess.Popen(api_cmd, env=env),
        subprocess.Popen([*base, "worker"], env=env),
    ]
    try:
        faults = "on" if parse_flag(env["CONVEYOR_DUMMY_FAULTS"] or "0") else "off"
    except ValueError:
        faults = "?"  # the children refuse the value with its name
    print(
        f"conveyor dev: API and worker started against {redact_url(redis_url)} (dummy's fault"
        f" modes {faults}: CONVEYOR_DUMMY_FAULTS); Ctrl-C stops everything",
        flush=True,
    )
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            # A terminal's Ctrl-C already reached the children (same process group).
            if signum != signal.SIGINT and child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.2)
    if not stopping:  # one of them died on its own: take the other down with it
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _CHILD_STOP_GRACE
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return 0 if stopping else 1
