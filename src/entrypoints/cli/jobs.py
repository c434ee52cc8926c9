"""`conveyor status` and `conveyor jobs`: read, list, cancel and retry jobs."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from domain.job_service import JobService
from domain.jobs import JobStatus
from domain.ports import JobQuery
from entrypoints.cli import arguments
from entrypoints.cli.service import age, console, print_json, table, with_job, with_service
from entrypoints.settings import Settings

if TYPE_CHECKING:
    from entrypoints.cli.arguments import Commands


def add_commands(commands: Commands) -> None:
    status = commands.add_parser("status", help="print a job's current state")
    status.add_argument("job_id")
    status.set_defaults(run=run_status)

    jobs = commands.add_parser("jobs", help="list, show, cancel and retry jobs")
    job_commands = jobs.add_subparsers(required=True, metavar="ACTION")
    listing = job_commands.add_parser("list", help="jobs newest first, as a table")
    listing.add_argument("--status", choices=[s.value for s in JobStatus], default=None)
    listing.add_argument("--type", type=arguments.name, default=None, dest="job_type")
    listing.add_argument("--queue", type=arguments.name, default=None)
    listing.add_argument("--limit", type=arguments.page_size, default=50, help="1-500 (default 50)")
    listing.add_argument("--cursor", default=None, help="the next page's cursor, as printed")
    listing.set_defaults(run=run_list)
    for action, run, text in (
        ("show", run_show, "print a job with its waiting reason and timeline"),
        ("cancel", run_cancel, "cancel a waiting job, or ask a running one to stop"),
        ("retry", run_retry, "send a dead or cancelled job back to its queue"),
    ):
        command = job_commands.add_parser(action, help=text)
        command.add_argument("job_id")
        command.set_defaults(run=run)


def run_status(args: argparse.Namespace, settings: Settings) -> int:
    return with_job(args, settings, lambda s: s.get(args.job_id))


def run_show(args: argparse.Namespace, settings: Settings) -> int:
    from entrypoints.api.schemas import JobView

    async def show(service: JobService) -> int:
        details = await service.details(args.job_id)
        print_json(JobView.from_details(details, tracebacks=settings.expose_tracebacks))
        return 0

    return with_service(args, settings, show)


def run_cancel(args: argparse.Namespace, settings: Settings) -> int:
    return with_job(args, settings, lambda s: s.cancel(args.job_id))


def run_retry(args: argparse.Namespace, settings: Settings) -> int:
    return with_job(args, settings, lambda s: s.retry(args.job_id))


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    query = JobQuery(
        status=None if args.status is None else JobStatus(args.status),
        type=args.job_type,
        queue=args.queue,
        limit=args.limit,
        cursor=args.cursor,
    )

    async def listing(service: JobService) -> int:
        page = await service.list(query)
        jobs = table("ID", "TYPE", "STATUS", "QUEUE", "PRIORITY", "ATTEMPTS", "PROGRESS", "AGE")
        now = datetime.now(UTC)
        for job in page.jobs:
            jobs.add_row(
                job.id,
                job.type,
                job.status.value,
                job.queue,
                str(job.priority),
                f"{job.attempts}/{job.max_attempts}",
                "" if job.progress is None else f"{job.progress}%",
                age((now - job.created_at).total_seconds()),
            )
        console().print(jobs)
        if page.next_cursor:
            print(f"more: --cursor {page.next_cursor}", file=sys.stderr)
        return 0

    return with_service(args, settings, listing)
