"""Running a command's action on the job service, and printing what it answers."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from domain.errors import DomainError, InvalidJobError, InvalidScheduleError
from domain.job_service import JobService
from domain.jobs import Job
from domain.ports import QueueStats
from entrypoints.settings import Settings

# What only a command's output needs (rich, msgspec and the API's views) is imported by the
# command that prints: `conveyor worker` loads the command line too, before its first job.
if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from entrypoints.container import Container

S = TypeVar("S")  # the service a command runs on


def with_job(
    args: argparse.Namespace, settings: Settings, action: Callable[[JobService], Awaitable[Job]]
) -> int:
    """Run `action` and print the job it answers."""

    from entrypoints.api.schemas import JobView

    async def run(service: JobService) -> int:
        job = await action(service)
        print_json(JobView.from_domain(job, tracebacks=settings.expose_tracebacks))
        return 0

    return with_service(args, settings, run)


def with_queue(
    args: argparse.Namespace,
    settings: Settings,
    action: Callable[[JobService], Awaitable[QueueStats]],
) -> int:
    """Run `action` and print the queue it answers."""

    from entrypoints.api.catalog import QueueView

    async def run(service: JobService) -> int:
        print_json(QueueView.from_domain(await action(service)))
        return 0

    return with_service(args, settings, run)


def with_service(
    args: argparse.Namespace, settings: Settings, action: Callable[[JobService], Awaitable[int]]
) -> int:
    """Run `action` on the job service (see `run_on`)."""
    return run_on(args, settings, lambda container: container.job_service(), action)


def run_on(
    args: argparse.Namespace,
    settings: Settings,
    service_of: Callable[[Container], S],
    action: Callable[[S], Awaitable[int]],
) -> int:
    """Run `action` on the service `service_of` takes from the container; a domain error is
    a message and exit code 2 (the request is invalid: each bad field printed) or 1
    (anything else)."""
    return asyncio.run(_serve(args.container, settings, service_of, action))


async def _serve(
    given: Container | None,
    settings: Settings,
    service_of: Callable[[Container], S],
    action: Callable[[S], Awaitable[int]],
) -> int:
    # Here, not at the top: `conveyor worker` imports this module too, before it builds
    # a container of its own.
    from entrypoints.container import build_container

    container = build_container(settings) if given is None else given
    try:
        return await action(service_of(container))
    except (InvalidJobError, InvalidScheduleError) as exc:
        for error in exc.errors:
            print(f"conveyor: {error.path}: {error.message}", file=sys.stderr)
        return 2
    except DomainError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return 1
    finally:
        if given is None:  # a container passed in is its owner's to close
            await container.backend().connection.close()


def print_json(view: Any) -> None:
    import msgspec

    print(msgspec.json.format(msgspec.json.encode(view)).decode())


def console(*, stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Wide enough for a job id and every column when the output is not a terminal.
    return Console(file=stream, width=None if stream.isatty() else 160)


def table(*columns: str) -> Table:
    from rich.table import Table

    return Table(*columns)


def age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
