"""The HTTP endpoints for queues: their figures, and pausing and resuming them."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Final

from litestar import Controller, get, post
from litestar.di import NamedDependency

from domain.job_service import JobService
from domain.jobs import NAME_PATTERN, is_name
from entrypoints.api.catalog import QueueList, QueueView
from entrypoints.api.guards import refuse_a_body
from entrypoints.api.openapi import (
    BAD_PARAMETER,
    BODYLESS_ERRORS,
    UNAVAILABLE,
    ConveyorOperation,
    path_parameter,
    problem,
    unsupported,
)
from entrypoints.api.problems import ProblemError, clip
from entrypoints.settings import Settings

QueueName = Annotated[
    str, path_parameter("The queue's name: 1-64 of a-z, 0-9, '_' or '-'.", NAME_PATTERN)
]
_NO_QUEUE: Final = problem("Not a queue name (1-64 of a-z, 0-9, '_' or '-', from a letter).")
_NO_STATS: Final = unsupported("report on its queues")


def _checked(name: str) -> str:
    # Any well-formed name is a queue (one never used has no jobs); any other names nothing.
    if not is_name(name):
        raise ProblemError(
            HTTPStatus.NOT_FOUND,
            "queue-not-found",
            f"no queue is named {clip(name)!r}: names are 1-64 of a-z, 0-9, '_' or '-'",
        )
    return name


class QueuesController(Controller):
    path = "/queues"
    tags = ["queues"]

    @get(
        "/",
        operation_id="listQueues",
        summary="List queues",
        description="Every queue the job store knows of: jobs by status, the age of the "
        "oldest queued job, whether it is paused, how many live workers serve it, and its "
        "rates: jobs submitted and claimed per second lately, and claimed per second while it "
        "had jobs waiting (`drain_rate`, what a queued job's estimated start divides by); "
        "and the rate and concurrency limits per job type (`limits`).",
        operation_class=ConveyorOperation,
        responses={501: _NO_STATS, 503: UNAVAILABLE},
    )
    async def list_queues(
        self, jobs: NamedDependency[JobService], settings: NamedDependency[Settings]
    ) -> QueueList:
        return QueueList.from_domain(await jobs.queues(), settings.flow_limits)

    @get(
        "/{name:str}",
        operation_id="getQueue",
        summary="Get a queue",
        description="One queue's figures. Any well-formed name is a queue: one never used has "
        "no jobs.",
        operation_class=ConveyorOperation,
        responses={400: BAD_PARAMETER, 404: _NO_QUEUE, 501: _NO_STATS, 503: UNAVAILABLE},
    )
    async def get_queue(self, name: QueueName, jobs: NamedDependency[JobService]) -> QueueView:
        (stats,) = await jobs.queues([_checked(name)])
        return QueueView.from_domain(stats)

    @post(
        "/{name:str}/pause",
        operation_id="pauseQueue",
        summary="Pause a queue",
        description="Workers stop claiming its jobs (running ones finish); it still accepts "
        "new jobs. Pausing a paused queue changes nothing.",
        status_code=HTTPStatus.OK,
        operation_class=ConveyorOperation,
        guards=[refuse_a_body],
        responses={
            **BODYLESS_ERRORS,
            400: BAD_PARAMETER,
            404: _NO_QUEUE,
            429: problem(
                "The queue would be one more than the most kept (`CONVEYOR_MAX_QUEUES`): "
                "nothing changed; see `Retry-After`."
            ),
            501: unsupported("pause queues"),
            503: UNAVAILABLE,
        },
    )
    async def pause_queue(self, name: QueueName, jobs: NamedDependency[JobService]) -> QueueView:
        return QueueView.from_domain(await jobs.pause(_checked(name)))

    @post(
        "/{name:str}/resume",
        operation_id="resumeQueue",
        summary="Resume a queue",
        description="Workers claim its jobs again. Resuming a running queue changes nothing.",
        status_code=HTTPStatus.OK,
        operation_class=ConveyorOperation,
        guards=[refuse_a_body],
        responses={
            **BODYLESS_ERRORS,
            400: BAD_PARAMETER,
            404: _NO_QUEUE,
            501: unsupported("pause queues"),
            503: UNAVAILABLE,
        },
    )
    async def resume_queue(self, name: QueueName, jobs: NamedDependency[JobService]) -> QueueView:
        return QueueView.from_domain(await jobs.resume(_checked(name)))
