"""The `conveyor` command: run the API, a worker or the whole service; submit, inspect and
manage jobs and queues."""

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
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec

from domain.errors import DomainError, InvalidJobError, QueueUnavailableError
from domain.jobs import PRIORITY_MAX, PRIORITY_MIN, Job, JobStatus, is_name
from domain.ports import JobQuery, QueueStats
from domain.services import JobService, Submission
from entrypoints.api.schemas import JobView, QueueView
from entrypoints.container import Container, build_container
from entrypoints.logs import configure_logging, redact_url
from entrypoints.settings import Backend, Settings, SettingsError, parse_weighted_queues

if TYPE_CHECKING:  # rich is imported by the commands that draw, not by every process
    from rich.console import Console
    from rich.table import Table

DEV_DATA_DIR = Path(".conveyor") / "redis"
_CHILD_STOP_GRACE = 30.0
# How often `submit --wait` looks at the job again.
FOLLOW_INTERVAL: Final = 0.25


def main(argv: Sequence[str] | None = None, *, container: Container | None = None) -> int:
    """Run one command. With `container`, the job and queue commands use it (and its
    settings) instead of building one from the environment."""
    parser = _parser()
    args = parser.parse_args(argv)
    args.container = container
    if container is not None:
        settings: Settings = container.settings()
    else:
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
        type=parse_weighted_queues,
        default=None,
        help="comma-separated queues: `a,b` in strict order, `a:3,b:1` in random order by"
        " weight for each claim (default CONVEYOR_WORKER_QUEUES)",
    )
    worker.set_defaults(run=_run_worker)

    # Started by `conveyor worker` for each of its processes; not for people.
    child = commands.add_parser("worker-child")
    child.add_argument("--worker-id", required=True)
    child.add_argument("--control-fd", type=int, required=True)
    child.add_argument("--concurrency", type=_positive_int, required=True)
    child.add_argument("--queues", type=parse_weighted_queues, required=True)
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

    submit = commands.add_parser(
        "submit",
        help="submit a job and print it",
        description="Submit a job and print it. With --wait, follow it until it ends and exit "
        "0 if it succeeded, 1 otherwise.",
    )
    submit.add_argument("type", help="job type, e.g. email, report, dummy")
    submit.add_argument("payload", help='payload as JSON, e.g. \'{"mode": "succeed"}\'')
    submit.add_argument("--max-attempts", type=int, default=None)
    submit.add_argument("--timeout", type=float, default=None)
    submit.add_argument("--queue", type=_name, default=None, help="default: the type's queue")
    submit.add_argument(
        "--priority",
        type=int,
        default=None,
        help=f"{PRIORITY_MIN} to {PRIORITY_MAX}, higher runs first (default: the type's)",
    )
    when = submit.add_mutually_exclusive_group()
    when.add_argument("--delay", type=float, default=None, help="seconds before it may run")
    when.add_argument("--run-at", default=None, help="RFC 3339 time before which it does not run")
    submit.add_argument(
        "--deadline",
        type=_deadline,
        default=None,
        help="RFC 3339 time, or seconds from now, after which it expires unless finished",
    )
    submit.add_argument(
        "--idempotency-key", default=None, help="a repeat with this key answers the first job"
    )
    submit.add_argument(
        "--wait", action="store_true", help="follow the job, with a progress bar, until it ends"
    )
    submit.set_defaults(run=_run_submit)

    status = commands.add_parser("status", help="print a job's current state")
    status.add_argument("job_id")
    status.set_defaults(run=_run_status)

    jobs = commands.add_parser("jobs", help="list, show, cancel and retry jobs")
    job_commands = jobs.add_subparsers(required=True, metavar="ACTION")
    listing = job_commands.add_parser("list", help="jobs newest first, as a table")
    listing.add_argument("--status", choices=[s.value for s in JobStatus], default=None)
    listing.add_argument("--type", type=_name, default=None, dest="job_type")
    listing.add_argument("--queue", type=_name, default=None)
    listing.add_argument("--limit", type=_page_size, default=50, help="1-500 (default 50)")
    listing.add_argument("--cursor", default=None, help="the next page's cursor, as printed")
    listing.set_defaults(run=_run_jobs_list)
    for action, run, text in (
        ("show", _run_jobs_show, "print a job with its waiting reason and timeline"),
        ("cancel", _run_jobs_cancel, "cancel a waiting job, or ask a running one to stop"),
        ("retry", _run_jobs_retry, "send a dead or cancelled job back to its queue"),
    ):
        command = job_commands.add_parser(action, help=text)
        command.add_argument("job_id")
        command.set_defaults(run=run)

    queues = commands.add_parser("queues", help="list, pause and resume queues")
    queue_commands = queues.add_subparsers(required=True, metavar="ACTION")
    queue_commands.add_parser("list", help="every queue's figures, as a table").set_defaults(
        run=_run_queues_list
    )
    for action, run, text in (
        ("pause", _run_queues_pause, "stop workers claiming from a queue"),
        ("resume", _run_queues_resume, "let workers claim from a paused queue again"),
    ):
        command = queue_commands.add_parser(action, help=text)
        command.add_argument("name", type=_name)
        command.set_defaults(run=run)
    return parser


def _name(raw: str) -> str:
    if not is_name(raw):
        raise argparse.ArgumentTypeError("expected 1-64 of a-z, 0-9, '_' or '-', from a letter")
    return raw


def _page_size(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 500:
        raise argparse.ArgumentTypeError("must be 1 to 500")
    return value


def _deadline(raw: str) -> str | float:
    try:
        return float(raw)
    except ValueError:
        return raw  # an RFC 3339 time, or nonsense the domain names


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

    queues, weights = args.queues or (settings.worker_queues, settings.worker_queue_weights)
    return run_worker(
        settings,
        processes=args.processes or settings.worker_processes,
        concurrency=args.concurrency or settings.worker_concurrency,
        queues=queues,
        weights=weights,
    )


def _run_worker_child(args: argparse.Namespace, settings: Settings) -> int:
    from entrypoints.worker.main import run_child

    queues, weights = args.queues
    return run_child(
        settings,
        worker_id=args.worker_id,
        control_fd=args.control_fd,
        concurrency=args.concurrency,
        queues=queues,
        weights=weights,
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
        type=args.type,
        payload=payload,
        max_attempts=args.max_attempts,
        timeout=args.timeout,
        queue=args.queue,
        priority=args.priority,
        delay=args.delay,
        run_at=args.run_at,
        deadline=args.deadline,
    )

    async def submit(service: JobService) -> int:
        accepted = await service.submit(submission, idempotency_key=args.idempotency_key)
        if not accepted.created:
            note = f"the idempotency key was used before: this is job {accepted.job.id}"
            print(f"conveyor: {note}", file=sys.stderr)
        if not args.wait:
            _print_json(JobView.from_domain(accepted.job))
            return 0
        job = await follow(service, accepted.job.id, _console(stderr=True))
        _print_json(JobView.from_domain(job))
        return 0 if job.status is JobStatus.SUCCEEDED else 1

    return _with_service(args, settings, submit)


async def follow(
    service: JobService, job_id: str, console: Console, interval: float = FOLLOW_INTERVAL
) -> Job:
    """Show the job's status and progress on `console` until it ends; answers the job then."""
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(job_id, total=100)
        while True:
            try:
                job = await service.get(job_id)
            except QueueUnavailableError:
                # The job goes on without us; so does following it once the store answers.
                bar.update(task, description=f"{job_id[:8]} (job store unreachable, retrying)")
                await asyncio.sleep(interval)
                continue
            bar.update(
                task,
                completed=job.progress or 0,
                description=f"{job.type} {job.id[:8]} {job.status.value} "
                f"(attempt {job.attempts}/{job.max_attempts})",
            )
            if job.status.is_terminal:
                if job.status is JobStatus.SUCCEEDED:
                    bar.update(task, completed=100)
                return job
            await asyncio.sleep(interval)


def _run_status(args: argparse.Namespace, settings: Settings) -> int:
    return _with_job(args, settings, lambda s: s.get(args.job_id))


def _run_jobs_show(args: argparse.Namespace, settings: Settings) -> int:
    async def show(service: JobService) -> int:
        _print_json(JobView.from_details(await service.details(args.job_id)))
        return 0

    return _with_service(args, settings, show)


def _run_jobs_cancel(args: argparse.Namespace, settings: Settings) -> int:
    return _with_job(args, settings, lambda s: s.cancel(args.job_id))


def _run_jobs_retry(args: argparse.Namespace, settings: Settings) -> int:
    return _with_job(args, settings, lambda s: s.retry(args.job_id))


def _run_jobs_list(args: argparse.Namespace, settings: Settings) -> int:
    query = JobQuery(
        status=None if args.status is None else JobStatus(args.status),
        type=args.job_type,
        queue=args.queue,
        limit=args.limit,
        cursor=args.cursor,
    )

    async def listing(service: JobService) -> int:
        page = await service.list(query)
        table = _table("ID", "TYPE", "STATUS", "QUEUE", "PRIORITY", "ATTEMPTS", "PROGRESS", "AGE")
        now = datetime.now(UTC)
        for job in page.jobs:
            table.add_row(
                job.id,
                job.type,
                job.status.value,
                job.queue,
                str(job.priority),
                f"{job.attempts}/{job.max_attempts}",
                "" if job.progress is None else f"{job.progress}%",
                _age((now - job.created_at).total_seconds()),
            )
        _console().print(table)
        if page.next_cursor:
            print(f"more: --cursor {page.next_cursor}", file=sys.stderr)
        return 0

    return _with_service(args, settings, listing)


def _run_queues_list(args: argparse.Namespace, settings: Settings) -> int:
    async def listing(service: JobService) -> int:
        stats = await service.queues()
        statuses = (status.value.upper() for status in JobStatus)
        table = _table("QUEUE", "PAUSED", "WORKERS", "OLDEST QUEUED", *statuses)
        for queue in stats:
            table.add_row(
                queue.name,
                "yes" if queue.paused else "no",
                "?" if queue.workers is None else str(queue.workers),
                "" if queue.oldest_queued_age is None else _age(queue.oldest_queued_age),
                *(str(queue.counts.get(status, 0)) for status in JobStatus),
            )
        _console().print(table)
        return 0

    return _with_service(args, settings, listing)


def _run_queues_pause(args: argparse.Namespace, settings: Settings) -> int:
    return _with_queue(args, settings, lambda s: s.pause(args.name))


def _run_queues_resume(args: argparse.Namespace, settings: Settings) -> int:
    return _with_queue(args, settings, lambda s: s.resume(args.name))


def _with_job(
    args: argparse.Namespace, settings: Settings, action: Callable[[JobService], Awaitable[Job]]
) -> int:
    async def run(service: JobService) -> int:
        _print_json(JobView.from_domain(await action(service)))
        return 0

    return _with_service(args, settings, run)


def _with_queue(
    args: argparse.Namespace,
    settings: Settings,
    action: Callable[[JobService], Awaitable[QueueStats]],
) -> int:
    async def run(service: JobService) -> int:
        _print_json(QueueView.from_domain(await action(service)))
        return 0

    return _with_service(args, settings, run)


def _with_service(
    args: argparse.Namespace, settings: Settings, action: Callable[[JobService], Awaitable[int]]
) -> int:
    """Run `action` on the job service; a domain error is a message and exit code 2 (the
    request is invalid) or 1 (anything else)."""
    return asyncio.run(_serve(args.container, settings, action))


async def _serve(
    given: Container | None, settings: Settings, action: Callable[[JobService], Awaitable[int]]
) -> int:
    container = build_container(settings) if given is None else given
    try:
        return await action(container.job_service())
    except InvalidJobError as exc:
        for error in exc.errors:
            print(f"conveyor: {error.path}: {error.message}", file=sys.stderr)
        return 2
    except DomainError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return 1
    finally:
        if given is None:  # a container passed in is its owner's to close
            await container.job_queue().close()


def _print_json(view: Any) -> None:
    print(msgspec.json.format(msgspec.json.encode(view)).decode())


def _console(*, stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Wide enough for a job id and every column when the output is not a terminal.
    return Console(file=stream, width=None if stream.isatty() else 160)


def _table(*columns: str) -> Table:
    from rich.table import Table

    return Table(*columns)


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
