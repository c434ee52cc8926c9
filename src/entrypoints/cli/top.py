"""`conveyor top`: a live view of the queues and the workers, redrawn every second until
Ctrl-C (`--once`: one frame, for scripts), like `rq info --interval 1`.

Each frame is two reads of the backend: every queue's figures (one script per queue, in one
pipeline on Redis) and the live workers (two commands on Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from domain.errors import QueueUnavailableError
from domain.job_service import JobService
from domain.jobs import JobStatus
from domain.ports import QueueStats, WorkerInfo
from entrypoints.cli.service import age, console, table, with_service
from entrypoints.settings import QueueBackend, Settings

if TYPE_CHECKING:
    from rich.console import RenderableType

    from entrypoints.cli.arguments import Commands

# The statuses a column each, in the order a job goes through them; finished ones are kept
# only for their retention, so they count what finished lately.
_SHOWN = (
    JobStatus.QUEUED,
    JobStatus.SCHEDULED,
    JobStatus.FAILED,
    JobStatus.ACTIVE,
    JobStatus.SUCCEEDED,
    JobStatus.DEAD,
)
_ON_RQ = (
    "On RQ: no rates, so no estimated start for a queued job (RQ's own worker takes jobs off "
    "its lists: nothing of Conveyor's sees each claim); workers are RQ's, in flight 0 or 1."
)


def add_commands(commands: Commands) -> None:
    top = commands.add_parser("top", help="a live view of the queues and workers (Ctrl-C to stop)")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument(
        "--interval", type=_interval, default=1.0, help="seconds between frames (default 1)"
    )
    top.set_defaults(run=run_top)


def _interval(raw: str) -> float:
    value = float(raw)
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be 0.1 to 3600 seconds")
    return value


def run_top(args: argparse.Namespace, settings: Settings) -> int:
    on_rq = settings.queue_backend is QueueBackend.RQ

    async def once(service: JobService) -> int:
        console().print(await frame(service, on_rq=on_rq))
        return 0

    async def live(service: JobService) -> int:
        from rich.live import Live

        # Ctrl-C (or SIGTERM) ends the loop between frames, so the last one stays drawn and the
        # connection is closed, whatever the loop was awaiting.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        with Live(await frame(service, on_rq=on_rq), console=console(), auto_refresh=False) as view:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.interval)
                if not stop.is_set():
                    view.update(await frame(service, on_rq=on_rq), refresh=True)
        return 0

    if args.once:
        return with_service(args, settings, once)
    with contextlib.suppress(KeyboardInterrupt):
        with_service(args, settings, live)
    return 0


async def frame(service: JobService, *, on_rq: bool = False) -> RenderableType:
    """One frame: a title line, the queues, the workers; what the backend cannot say, said."""
    from rich.console import Group
    from rich.text import Text

    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    try:
        stats = await service.queues()
        workers = await service.workers()
    except QueueUnavailableError as exc:
        return Group(Text(f"conveyor top  {now}"), Text(f"unavailable: {exc}", style="red"))
    waiting = sum(q.counts.get(JobStatus.QUEUED, 0) for q in stats)
    running = sum(q.counts.get(JobStatus.ACTIVE, 0) for q in stats)
    title = (
        f"conveyor top  {now}  {len(stats)} queues, {waiting} queued, {running} active, "
        f"{len(workers)} workers"
    )
    parts: list[RenderableType] = [Text(title, style="bold"), queue_table(stats)]
    parts.append(worker_table(workers))
    parts.append(
        Text(
            "jobs/s: IN submitted, OUT claimed (last ~10 s); DRAIN claimed while jobs waited "
            "(~30 s of such time): a queued job's estimated start",
            style="dim",
        )
    )
    if on_rq:
        parts.append(Text(_ON_RQ, style="yellow"))
    return Group(*parts)


def queue_table(stats: Sequence[QueueStats]) -> RenderableType:
    queues = table(
        "QUEUE",
        *(status.value.upper() for status in _SHOWN),
        "IN/S",
        "OUT/S",
        "DRAIN/S",
        "OLDEST",
        "WORKERS",
        "PAUSED",
    )
    queues.title = "queues"
    for q in stats:
        queues.add_row(
            q.name,
            *(str(q.counts.get(status, 0)) for status in _SHOWN),
            _rate(q.rate_in),
            _rate(q.rate_out),
            _rate(q.drain_rate),
            "" if q.oldest_queued_age is None else age(q.oldest_queued_age),
            "?" if q.workers is None else str(q.workers),
            "PAUSED" if q.paused else "",
        )
    return queues


def worker_table(workers: Sequence[WorkerInfo]) -> RenderableType:
    shown = table("WORKER", "HOST", "PID", "QUEUES", "IN FLIGHT", "DONE")
    shown.title = "workers"
    for worker in workers:
        shown.add_row(
            worker.id,
            worker.host or "?",
            "?" if worker.pid is None else str(worker.pid),
            ",".join(worker.queues),
            "?" if worker.in_flight is None else str(worker.in_flight),
            "?" if worker.done is None else str(worker.done),
        )
    return shown


def _rate(rate: float | None) -> str:
    if rate is None:
        return "-"
    if rate < 0.005:
        return "0"
    return f"{rate:.2f}" if rate < 100 else f"{rate:.0f}"
