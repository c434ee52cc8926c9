"""The `conveyor` command: run the API, a worker or the whole service; submit and inspect jobs."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import msgspec

from domain.errors import DomainError, InvalidJobError
from domain.jobs import Job
from domain.services import JobService, Submission
from entrypoints.container import build_container
from entrypoints.logs import configure_logging, redact_url
from entrypoints.settings import Backend, Settings, SettingsError, parse_queues

DEV_DATA_DIR = Path(".conveyor") / "redis"
_CHILD_STOP_GRACE = 30.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        code: int = args.run(args, settings)
    except SettingsError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return 2
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    api = commands.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host", default=None, help="bind address (default CONVEYOR_API_HOST)")
    api.add_argument("--port", type=int, default=None, help="port (default CONVEYOR_API_PORT)")
    api.set_defaults(run=_run_api)

    worker = commands.add_parser("worker", help="run a supervisor and its worker processes")
    worker.add_argument(
        "--processes",
        type=_positive_int,
        default=None,
        help="worker processes to supervise (default CONVEYOR_WORKER_PROCESSES)",
    )
    worker.add_argument(
        "--concurrency",
        type=_positive_int,
        default=None,
        help="jobs run at once (default CONVEYOR_WORKER_CONCURRENCY)",
    )
    worker.add_argument(
        "--queues",
        type=parse_queues,
        default=None,
        help="comma-separated queues, in priority order (default CONVEYOR_WORKER_QUEUES)",
    )
    worker.set_defaults(run=_run_worker)

    # Started by `conveyor worker` for each of its processes; not for people.
    child = commands.add_parser("worker-child")
    child.add_argument("--worker-id", required=True)
    child.add_argument("--control-fd", type=int, required=True)
    child.add_argument("--concurrency", type=_positive_int, required=True)
    child.add_argument("--queues", type=parse_queues, required=True)
    child.add_argument("--board", type=Path, default=None)
    child.set_defaults(run=_run_worker_child)

    dev = commands.add_parser(
        "dev",
        help="the whole service in one terminal: local Redis (if REDIS_URL is unset), "
        "the API and one worker; Ctrl-C stops all of them",
    )
    dev.add_argument("--port", type=int, default=None, help="API port (default 8000)")
    dev.add_argument("--host", default=None, help="API bind address (default 127.0.0.1)")
    dev.set_defaults(run=_run_dev)

    submit = commands.add_parser("submit", help="submit a job and print it")
    submit.add_argument("type", help="job type, e.g. email, report, dummy")
    submit.add_argument("payload", help='payload as JSON, e.g. \'{"mode": "succeed"}\'')
    submit.add_argument("--max-attempts", type=int, default=None)
    submit.add_argument("--timeout", type=float, default=None)
    submit.set_defaults(run=_run_submit)

    status = commands.add_parser("status", help="print a job's current state")
    status.add_argument("job_id")
    status.set_defaults(run=_run_status)
    return parser


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _run_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    if settings.queue_backend in (Backend.REDIS, Backend.RQ):
        settings.require_redis_url()  # fail here, with a clear message, not inside uvicorn
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to whatever
    # handler was there before it; with these, a clean stop exits 0 instead of dying by it.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    uvicorn.run(
        "entrypoints.api.app:create_app",
        factory=True,
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        server_header=False,
    )
    return 0


def _run_worker(args: argparse.Namespace, settings: Settings) -> int:
    from entrypoints.worker.main import run_worker

    return run_worker(
        settings,
        processes=args.processes or settings.worker_processes,
        concurrency=args.concurrency or settings.worker_concurrency,
        queues=args.queues or settings.worker_queues,
    )


def _run_worker_child(args: argparse.Namespace, settings: Settings) -> int:
    from entrypoints.worker.main import run_child

    return run_child(
        settings,
        worker_id=args.worker_id,
        control_fd=args.control_fd,
        concurrency=args.concurrency,
        queues=args.queues,
        board=args.board,
    )


def _run_dev(args: argparse.Namespace, settings: Settings) -> int:
    from entrypoints.local_redis import LocalRedis, find_server_binary, server_identity

    if settings.redis_url:
        return _run_children(args, settings.redis_url)
    binary = find_server_binary()
    data_dir = DEV_DATA_DIR / server_identity(binary)
    with LocalRedis(data_dir=data_dir.resolve(), binary=binary) as server:
        print(f"conveyor dev: local Redis at {server.url} (data in {data_dir})", flush=True)
        return _run_children(args, server.url)


def _run_children(args: argparse.Namespace, redis_url: str) -> int:
    env = {**os.environ, "REDIS_URL": redis_url}
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
    print(
        f"conveyor dev: API and worker started against {redact_url(redis_url)}; "
        "Ctrl-C stops everything",
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


def _run_submit(args: argparse.Namespace, settings: Settings) -> int:
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        print(f"conveyor: payload is not valid JSON: {exc}", file=sys.stderr)
        return 2
    submission = Submission(
        type=args.type, payload=payload, max_attempts=args.max_attempts, timeout=args.timeout
    )
    return asyncio.run(_with_service(settings, lambda s: s.submit(submission)))


def _run_status(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_with_service(settings, lambda s: s.get(args.job_id)))


async def _with_service(settings: Settings, action: Callable[[JobService], Awaitable[Job]]) -> int:
    from entrypoints.api.schemas import JobView

    container = build_container(settings)
    try:
        job = await action(container.job_service())
    except InvalidJobError as exc:
        for error in exc.errors:
            print(f"conveyor: {error.path}: {error.message}", file=sys.stderr)
        return 2
    except DomainError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return 1
    finally:
        await container.job_queue().close()
    print(msgspec.json.format(msgspec.json.encode(JobView.from_domain(job))).decode())
    return 0
