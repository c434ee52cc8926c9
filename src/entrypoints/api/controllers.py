"""The HTTP endpoints: thin adapters from HTTP to the domain's use cases and back."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Annotated, Any, Final

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIType
from litestar.params import PathParameter, QueryParameter

from domain.errors import FieldError, JobNotFoundError, QueueUnavailableError
from domain.job_types import JobTypeRegistry
from domain.jobs import NAME_PATTERN, JobStatus, is_job_id, is_name
from domain.ports import JobQuery, JobQueue
from domain.services import JobService
from entrypoints.api.body import decode_json, require_json, submission_from
from entrypoints.api.openapi import ConveyorOperation, SubmitJobOperation
from entrypoints.api.problems import PROBLEM_MEDIA_TYPE, ProblemError, logger, summarize
from entrypoints.api.schemas import (
    HealthView,
    JobPageView,
    JobTypeList,
    JobTypeView,
    JobView,
    Problem,
)

MAX_PAGE: Final = 500
DEFAULT_PAGE: Final = 50
_MAX_CURSOR: Final = 256
_DIGITS: Final = re.compile(r"[0-9]{1,4}")


def _problem(description: str) -> ResponseSpec:
    return ResponseSpec(
        Problem, description=description, media_type=PROBLEM_MEDIA_TYPE, generate_examples=False
    )


def _query(description: str, *, name: str | None = None, **schema: Any) -> QueryParameter:
    # The handler validates query values itself (one 422 lists every bad one), so Litestar
    # hands them over as optional strings; the document shows what is accepted instead.
    return QueryParameter(
        name=name,
        description=description,
        schema_extra={"one_of": None, "type": OpenAPIType.STRING, **schema},
    )


UNAVAILABLE: Final = _problem("The job store is unreachable; retry after `Retry-After` seconds.")
BAD_PARAMETER: Final = _problem("A parameter has the wrong shape.")


class JobsController(Controller):
    path = "/jobs"
    tags = ["jobs"]

    @post(
        "/",
        operation_id="submitJob",
        summary="Submit a job",
        description="Validate a job and store it, queued. Answers at once: a worker runs it "
        "later. Poll `Location` for its status.",
        status_code=HTTPStatus.ACCEPTED,
        operation_class=SubmitJobOperation,
        responses={
            400: _problem("The body is not strict JSON (syntax, NaN, depth, repeated keys)."),
            413: _problem("The body is larger than the limit."),
            415: _problem("The body is not `application/json`."),
            422: _problem(
                "The JSON is not a valid submission: unknown type, invalid payload (every "
                "bad field is listed in `errors`), or limits out of range."
            ),
            503: UNAVAILABLE,
        },
    )
    async def submit_job(
        self, request: Request[Any, Any, Any], jobs: NamedDependency[JobService]
    ) -> Response[JobView]:
        require_json(request)
        submission = submission_from(decode_json(await request.body()))
        job = await jobs.submit(submission)
        return Response(
            JobView.from_domain(job),
            status_code=HTTPStatus.ACCEPTED,
            headers={"Location": f"/jobs/{job.id}"},
        )

    @get(
        "/{job_id:str}",
        operation_id="getJob",
        summary="Get a job",
        description="The job's status, attempts, progress, result and last error.",
        operation_class=ConveyorOperation,
        responses={
            400: BAD_PARAMETER,
            404: _problem("No job has this id."),
            503: UNAVAILABLE,
        },
    )
    async def get_job(
        self,
        job_id: Annotated[str, PathParameter(description="The job's id.")],
        jobs: NamedDependency[JobService],
    ) -> JobView:
        if not is_job_id(job_id):
            raise JobNotFoundError(job_id)
        return JobView.from_domain(await jobs.get(job_id))

    @post(
        "/{job_id:str}/retry",
        operation_id="retryJob",
        summary="Retry a dead or cancelled job",
        description="Send the job back to its queue with fresh attempts. Its history stays.",
        status_code=HTTPStatus.ACCEPTED,
        operation_class=ConveyorOperation,
        responses={
            404: _problem("No job has this id."),
            409: _problem("The job is neither dead nor cancelled."),
            503: UNAVAILABLE,
        },
    )
    async def retry_job(
        self,
        job_id: Annotated[str, PathParameter(description="The job's id.")],
        jobs: NamedDependency[JobService],
    ) -> Response[JobView]:
        if not is_job_id(job_id):
            raise JobNotFoundError(job_id)
        job = await jobs.retry(job_id)
        return Response(
            JobView.from_domain(job),
            status_code=HTTPStatus.ACCEPTED,
            headers={"Location": f"/jobs/{job.id}"},
        )

    @get(
        "/",
        operation_id="listJobs",
        summary="List jobs",
        description="Jobs newest first, optionally filtered; follow `next_cursor` for more.",
        operation_class=ConveyorOperation,
        responses={
            400: BAD_PARAMETER,
            422: _problem("A filter, `limit` or `cursor` is invalid."),
            503: UNAVAILABLE,
        },
    )
    async def list_jobs(
        self,
        jobs: NamedDependency[JobService],
        status: Annotated[
            str | None,
            _query("Only jobs in this status.", enum=[s.value for s in JobStatus]),
        ] = None,
        job_type: Annotated[
            str | None, _query("Only jobs of this type.", name="type", pattern=NAME_PATTERN)
        ] = None,
        queue: Annotated[
            str | None, _query("Only jobs in this queue.", pattern=NAME_PATTERN)
        ] = None,
        limit: Annotated[
            str | None,
            _query(
                f"Jobs per page (default {DEFAULT_PAGE}).",
                type=OpenAPIType.INTEGER,
                minimum=1,
                maximum=MAX_PAGE,
            ),
        ] = None,
        cursor: Annotated[
            str | None,
            _query("`next_cursor` from the previous page.", max_length=_MAX_CURSOR),
        ] = None,
    ) -> JobPageView:
        query = job_query(status, job_type, queue, limit, cursor)
        return JobPageView.from_domain(await jobs.list(query))


def job_query(
    status: str | None,
    job_type: str | None,
    queue: str | None,
    limit: str | None,
    cursor: str | None,
) -> JobQuery:
    """The query parameters as a JobQuery; raises a 422 problem listing every bad one."""
    errors: list[FieldError] = []
    parsed_status: JobStatus | None = None
    if status is not None:
        try:
            parsed_status = JobStatus(status)
        except ValueError:
            statuses = ", ".join(s.value for s in JobStatus)
            errors.append(FieldError("status", f"expected one of: {statuses}"))
    for name, value in (("type", job_type), ("queue", queue)):
        # A filter that breaks the naming rule matches nothing and must never reach a key.
        if value is not None and not is_name(value):
            errors.append(FieldError(name, "expected a name of 1-64 a-z, 0-9, '_' or '-'"))
    page = DEFAULT_PAGE
    if limit is not None:
        if _DIGITS.fullmatch(limit) and 1 <= int(limit) <= MAX_PAGE:
            page = int(limit)
        else:
            errors.append(FieldError("limit", f"expected an integer from 1 to {MAX_PAGE}"))
    if cursor is not None and not (len(cursor) <= _MAX_CURSOR and cursor.isprintable()):
        errors.append(FieldError("cursor", "expected the `next_cursor` of a previous page"))
    if errors:
        raise ProblemError(
            HTTPStatus.UNPROCESSABLE_ENTITY, "invalid-query", summarize(errors), errors=errors
        )
    return JobQuery(
        status=parsed_status, type=job_type, queue=queue, limit=page, cursor=cursor or None
    )


class JobTypesController(Controller):
    path = "/job-types"
    tags = ["job-types"]

    @get(
        "/",
        operation_id="listJobTypes",
        summary="List job types",
        description="Every registered job type: defaults, limits and payload JSON Schema.",
        operation_class=ConveyorOperation,
    )
    async def list_job_types(self, job_types: NamedDependency[JobTypeRegistry]) -> JobTypeList:
        return JobTypeList(job_types=[JobTypeView.from_domain(t) for t in job_types.values()])


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get(
        "/live",
        operation_id="checkLiveness",
        summary="Liveness",
        description="The process is up. Checks nothing else.",
        operation_class=ConveyorOperation,
    )
    async def live(self) -> HealthView:
        return HealthView(status="ok")

    @get(
        "/ready",
        operation_id="checkReadiness",
        summary="Readiness",
        description="The job store answers, so submissions can be accepted.",
        operation_class=ConveyorOperation,
        responses={503: UNAVAILABLE},
    )
    async def ready(self, job_queue: NamedDependency[JobQueue]) -> HealthView:
        try:
            await job_queue.ping()
        except QueueUnavailableError:
            raise
        except Exception as exc:
            # Not ready, whatever the reason; the log says which.
            logger.warning("readiness check failed: %s", type(exc).__name__, exc_info=exc)
            raise QueueUnavailableError(type(exc).__name__) from exc
        return HealthView(status="ready")
