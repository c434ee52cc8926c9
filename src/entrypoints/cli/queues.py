"""`conveyor queues`: every queue's figures; pausing and resuming one."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from domain.job_service import JobService
from domain.jobs import JobStatus
from entrypoints.cli import arguments
from entrypoints.cli.service import age, console, table, with_queue, with_service
from entrypoints.settings import Settings

if TYPE_CHECKING:
    from entrypoints.cli.arguments import Commands


def add_commands(commands: Commands) -> None:
    queues = commands.add_parser("queues", help="list, pause and resume queues")
    queue_commands = queues.add_subparsers(required=True, metavar="ACTION")
    queue_commands.add_parser("list", help="every queue's figures, as a table").set_defaults(
        run=run_list
    )
    for action, run, text in (
        ("pause", run_pause, "stop workers claiming from a queue"),
        ("resume", run_resume, "let workers claim from a paused queue again"),
    ):
        command = queue_commands.add_parser(action, help=text)
        command.add_argument("name", type=arguments.name)
        command.set_defaults(run=run)


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    async def listing(service: JobService) -> int:
        stats = await service.queues()
        statuses = (status.value.upper() for status in JobStatus)
        queues = table("QUEUE", "PAUSED", "WORKERS", "OLDEST QUEUED", *statuses)
        for queue in stats:
            queues.add_row(
                queue.name,
                "yes" if queue.paused else "no",
                "?" if queue.workers is None else str(queue.workers),
                "" if queue.oldest_queued_age is None else age(queue.oldest_queued_age),
                *(str(queue.counts.get(status, 0)) for status in JobStatus),
            )
        console().print(queues)
        return 0

    return with_service(args, settings, listing)


def run_pause(args: argparse.Namespace, settings: Settings) -> int:
    return with_queue(args, settings, lambda s: s.pause(args.name))


def run_resume(args: argparse.Namespace, settings: Settings) -> int:
    return with_queue(args, settings, lambda s: s.resume(args.name))
