"""`conveyor submit`: submit a job, and follow it with a progress bar until it ends."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Final

from domain.errors import QueueUnavailableError
from domain.job_service import JobService
from domain.jobs import PRIORITY_MAX, PRIORITY_MIN, Job, JobStatus
from domain.submission import Submission
from entrypoints.cli import arguments
from entrypoints.cli.service import console, print_json, with_service
from entrypoints.settings import Settings

if TYPE_CHECKING:
    from rich.console import Console

    from entrypoints.cli.arguments import Commands

# How often `submit --wait` looks at the job again.
FOLLOW_INTERVAL: Final = 0.25


def add_commands(commands: Commands) -> None:
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
    submit.add_argument(
        "--queue", type=arguments.name, default=None, help="default: the type's queue"
    )
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
        type=arguments.deadline,
        default=None,
        help="RFC 3339 time, or seconds from now, after which it expires unless finished",
    )
    submit.add_argument(
        "--idempotency-key", default=None, help="a repeat with this key answers the first job"
    )
    unique = submit.add_mutually_exclusive_group()
    unique.add_argument(
        "--unique-key",
        default=None,
        help="while a job of the queue under this key has not finished, answer it instead",
    )
    unique.add_argument(
        "--unique-for",
        type=_field_names,
        default=None,
        metavar="FIELD,...",
        help="as --unique-key, the key made of the type and these payload fields' values",
    )
    submit.add_argument(
        "--wait", action="store_true", help="follow the job, with a progress bar, until it ends"
    )
    submit.set_defaults(run=run_submit)


def run_submit(args: argparse.Namespace, settings: Settings) -> int:
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
        unique_key=args.unique_key,
        unique_for=args.unique_for,
    )

    from entrypoints.api.schemas import JobView

    async def submit(service: JobService) -> int:
        accepted = await service.submit(submission, idempotency_key=args.idempotency_key)
        if accepted.unique:
            note = f"job {accepted.job.id} holds the unique key and has not finished: that is it"
            print(f"conveyor: {note}", file=sys.stderr)
        elif not accepted.created:
            note = f"the idempotency key was used before: this is job {accepted.job.id}"
            print(f"conveyor: {note}", file=sys.stderr)
        if not args.wait:
            print_json(JobView.from_domain(accepted.job, tracebacks=settings.expose_tracebacks))
            return 0
        job = await follow(service, accepted.job.id, console(stderr=True))
        print_json(JobView.from_domain(job, tracebacks=settings.expose_tracebacks))
        return 0 if job.status is JobStatus.SUCCEEDED else 1

    return with_service(args, settings, submit)


def _field_names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",")]


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
