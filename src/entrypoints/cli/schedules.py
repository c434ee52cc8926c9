"""`conveyor schedules`: list, add, remove, pause and resume schedules."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from domain.schedules import MisfirePolicy, ScheduleRequest
from entrypoints.cli import arguments
from entrypoints.cli.service import console, print_json, run_on, table
from entrypoints.settings import Settings

if TYPE_CHECKING:
    from domain.ports.schedules import StoredSchedule
    from domain.scheduling import ScheduleService
    from entrypoints.cli.arguments import Commands


def add_commands(commands: Commands) -> None:
    schedules = commands.add_parser("schedules", help="list, add, remove, pause and resume")
    actions = schedules.add_subparsers(required=True, metavar="ACTION")
    actions.add_parser("list", help="every schedule, as a table").set_defaults(run=run_list)

    add = actions.add_parser(
        "add", help="create a schedule (or replace the one of its name)", description=_ADD
    )
    add.add_argument("name", type=arguments.name)
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help="a 5-field cron expression: '0 2 * * *'")
    when.add_argument("--every", type=float, help="a fixed interval, in seconds")
    add.add_argument("--timezone", help="the cron expression's IANA time zone (default UTC)")
    add.add_argument("--type", required=True, dest="job_type", help="the job type")
    add.add_argument("--payload", type=_json, required=True, help="the job's payload, JSON")
    add.add_argument("--options", type=_json, default=None, help="the job's options, JSON")
    add.add_argument("--misfire", choices=[p.value for p in MisfirePolicy], default=None)
    add.add_argument("--misfire-grace", type=float, default=None, help="seconds (default 60)")
    add.add_argument("--paused", action="store_true", help="create it paused")
    add.set_defaults(run=run_add)

    for action, run, text in (
        ("show", run_show, "print one schedule"),
        ("remove", run_remove, "remove a schedule (its jobs stay)"),
        ("pause", run_pause, "stop a schedule's ticks"),
        ("resume", run_resume, "let a paused schedule tick again"),
    ):
        command = actions.add_parser(action, help=text)
        command.add_argument("name", type=arguments.name)
        command.set_defaults(run=run)


_ADD = (
    "Each tick submits one job (type, payload, options) with the idempotency key "
    "schedule:<name>:<tick time>. The whole schedule is checked now, the job included."
)


def _json(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    async def listing(service: ScheduleService) -> int:
        rows = table("NAME", "WHEN", "TYPE", "MISFIRE", "PAUSED", "NEXT TICK", "LAST JOB")
        for stored in await service.list():
            schedule = stored.schedule
            when = (
                f"{schedule.cron} ({schedule.timezone})"
                if schedule.cron is not None
                else f"every {schedule.every:g}s"
            )
            rows.add_row(
                schedule.name,
                when,
                schedule.type,
                schedule.misfire.value,
                "yes" if stored.paused else "no",
                "" if stored.next_tick is None else stored.next_tick.isoformat(),
                stored.last_job_id or "",
            )
        console().print(rows)
        return 0

    return _with_schedules(args, settings, listing)


def run_add(args: argparse.Namespace, settings: Settings) -> int:
    request = ScheduleRequest(
        name=args.name,
        type=args.job_type,
        payload=args.payload,
        options=args.options,
        cron=args.cron,
        timezone=args.timezone,
        every=args.every,
        misfire=args.misfire,
        misfire_grace=args.misfire_grace,
        paused=True if args.paused else None,
    )

    async def add(service: ScheduleService) -> StoredSchedule:
        stored, _ = await service.put(request)
        return stored

    return _printing(args, settings, add)


def run_show(args: argparse.Namespace, settings: Settings) -> int:
    return _printing(args, settings, lambda s: s.get(args.name))


def run_pause(args: argparse.Namespace, settings: Settings) -> int:
    return _printing(args, settings, lambda s: s.pause(args.name))


def run_resume(args: argparse.Namespace, settings: Settings) -> int:
    return _printing(args, settings, lambda s: s.resume(args.name))


def run_remove(args: argparse.Namespace, settings: Settings) -> int:
    async def remove(service: ScheduleService) -> int:
        await service.delete(args.name)
        print(f"removed schedule {args.name}")
        return 0

    return _with_schedules(args, settings, remove)


def _printing(
    args: argparse.Namespace,
    settings: Settings,
    action: Callable[[ScheduleService], Awaitable[StoredSchedule]],
) -> int:
    from entrypoints.api.catalog import ScheduleView

    async def run(service: ScheduleService) -> int:
        print_json(ScheduleView.from_domain(await action(service)))
        return 0

    return _with_schedules(args, settings, run)


def _with_schedules(
    args: argparse.Namespace,
    settings: Settings,
    action: Callable[[ScheduleService], Awaitable[int]],
) -> int:
    """Run `action` on the schedule service (see `service.run_on`)."""
    return run_on(args, settings, lambda container: container.schedule_service(), action)
