"""Running schedules in a long-lived process: the schedules of the settings declared at
start-up, and the scheduler's loop (`domain.scheduling.Scheduler`), which every API process
and every `conveyor worker` supervisor runs: the store gives each tick to one of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Final

from domain.errors import DomainError, InvalidScheduleError, QueueUnavailableError
from domain.scheduling import CHANGE_CHECK, FIRING_LEASE, PassReport, Scheduler
from entrypoints.container import Container, build_container
from entrypoints.settings import QueueBackend, Settings, SettingsError
from entrypoints.startup import backend_is_safe

log = logging.getLogger("conveyor.scheduler")

# After a failed pass (Redis away), the next one waits this long.
_RETRY: Final = 1.0
# Idempotency keys kept less long than this leave no time to take a stale firing over.
_SHORTEST_SAFE_TTL: Final = 4 * FIRING_LEASE
# Schedules checked at start-up: CONVEYOR_SCHEDULES.
_VARIABLE: Final = "CONVEYOR_SCHEDULES"


def check_schedules(container: Container) -> None:
    """Raise SettingsError naming CONVEYOR_SCHEDULES, and every bad field by its path
    (`[0].cron`), unless each schedule it declares is valid for these job types."""
    requests = container.settings().schedules
    if not requests:
        return
    service = container.schedule_service()
    problems: list[str] = []
    for index, request in enumerate(requests):
        try:
            service.validate(request)
        except InvalidScheduleError as invalid:
            problems += [f"[{index}].{e.path}: {e.message}" for e in invalid.errors]
    if problems:
        raise SettingsError(f"{_VARIABLE} is not valid: {'; '.join(problems)}")


async def declare_schedules(container: Container) -> bool:
    """Create (or update) the schedules of the settings; the same definition again keeps
    its ticks. False, logged, when the store cannot be reached now."""
    requests = container.settings().schedules
    if not requests:
        return True
    service = container.schedule_service()
    try:
        for request in requests:
            _, outcome = await service.put(request)
            log.info("schedule declared", extra={"schedule": request.name, "outcome": outcome})
    except QueueUnavailableError as exc:
        log.warning("could not declare the schedules of %s yet: %s", _VARIABLE, exc.reason)
        return False
    return True


async def schedule(container: Container, stop: asyncio.Event) -> None:
    """Declare the schedules of the settings (again and again while the store is away),
    then run the scheduler until `stop` is set."""
    ttl = container.settings().idempotency_ttl_seconds
    if ttl < _SHORTEST_SAFE_TTL:
        log.warning(
            "CONVEYOR_IDEMPOTENCY_TTL_SECONDS=%g: a schedule's tick whose scheduler dies"
            " before it says the job is stored is dropped, not submitted again (keys kept"
            " under %g s cannot tell a second submit from the first)",
            ttl,
            _SHORTEST_SAFE_TTL,
        )
    while not await declare_schedules(container):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _RETRY)
        if stop.is_set():
            return
    await run_scheduler(container.scheduler(), stop)


async def run_scheduler(scheduler: Scheduler, stop: asyncio.Event) -> None:
    """Fire due ticks until `stop` is set, sleeping until the next tick is due, or a
    firing's lease lapses, or a schedule is put, deleted, paused or resumed (asked every
    `CHANGE_CHECK` seconds: one read), whichever comes first."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            report = await scheduler.run_pass()
            _log(report)
            sleep = report.sleep
        except QueueUnavailableError as exc:
            log.warning("scheduler pass failed: %s", exc.reason)
            sleep = _RETRY
        except (DomainError, OSError) as exc:
            log.error("scheduler pass failed: %s", exc, exc_info=exc)
            sleep = _RETRY
        if sleep <= 0:
            await asyncio.sleep(0)
            continue
        until = loop.time() + sleep
        while (left := until - loop.time()) > 0 and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(left, CHANGE_CHECK))
            if until - loop.time() > CHANGE_CHECK and await _changed(scheduler):
                break


async def _changed(scheduler: Scheduler) -> bool:
    """Whether to pass now: a schedule changed, or the store cannot tell (the pass reports
    the outage)."""
    try:
        return await scheduler.changed()
    except (QueueUnavailableError, DomainError, OSError):
        return True


def _log(report: PassReport) -> None:
    for outcome in report.outcomes:
        extra = {"schedule": outcome.name, "tick": outcome.tick.isoformat()}
        if outcome.error is not None:
            level = logging.ERROR if outcome.dropped else logging.WARNING
            verb = "dropped" if outcome.dropped else "not submitted yet (retried)"
            log.log(level, "schedule tick %s: %s", verb, outcome.error, extra=extra)
        elif outcome.job_id is None and outcome.missed:
            log.warning("schedule misfired: missed ticks skipped", extra=extra)
        elif outcome.job_id is not None:
            message = "schedule misfired: one catch-up job" if outcome.missed else "schedule tick"
            log.info(message, extra={**extra, "job_id": outcome.job_id, "new": outcome.created})


async def close_schedules(container: Container) -> None:
    """Close the schedule store's own Redis client: with QUEUE_BACKEND=rq, the backend's
    connection closes RQ's client, not the one schedules use."""
    if container.settings().queue_backend is QueueBackend.RQ:
        await container.redis_client().aclose()


def run_scheduler_process(settings: Settings) -> int:
    """`conveyor scheduler`: the scheduler alone, until SIGTERM or SIGINT (for a deployment
    whose API and workers do not run it, e.g. RQ's workers, which never do)."""
    container = build_container(settings)
    check_schedules(container)
    return asyncio.run(_schedule_until_signalled(container))


async def _schedule_until_signalled(container: Container) -> int:
    backend = container.backend()
    if not backend.shared_across_processes:
        log.error("QUEUE_BACKEND=%s lives inside one process: nothing to schedule", backend.name)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        if not await backend_is_safe(backend.connection, log):
            return 2
        log.info("scheduler running")
        await schedule(container, stop)
        return 0
    finally:
        await close_schedules(container)
        await backend.connection.close()
