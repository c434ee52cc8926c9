"""The HTTP endpoints for jobs, job types and health: thin adapters from HTTP to the domain's
use cases and back. (`POST /jobs/batch` is in `batch.py`, queues in `queues.py`.)"""

from __future__ import annotations

import math
import re
from http import HTTPStatus
from typing import Annotated, Any, Final

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIType

from domain.errors import (
    FieldError,
    IdempotencyConflictError,
    JobNotFoundError,
    QueueUnavailableError,
)
from domain.job_service import Accepted, JobService
from domain.job_types import JobTypeRegistry
from domain.jobs import NAME_PATTERN, JobStatus, is_job_id, is_name
from domain.ports import Connection, JobQuery
from entrypoints.api.body import (
    decode_json,
    idempotency_key_from,
    require_json,
    submission_from,
)
from entrypoints.api.catalog import JobTypeList, JobTypeView
from entrypoints.api.deps import job_service_of, tracebacks_shown, tracing_of
from entrypoints.api.guards import refuse_a_body
from entrypoints.api.metrics import metrics_of
from entrypoints.api.openapi import (
    BAD_PARAMETER,
    BODYLESS_ERRORS,
    IDEMPOTENCY_KEY_PATTERN,
    JOB_ID_PATTERN,
    NO_JOB,
    SUBMIT_ERRORS,
    UNAVAILABLE,
    ConveyorOperation,
    LocatedOperation,
    SubmitJobOperation,
    header_parameter,
    path_parameter,
    problem,
    query_parameter,
    unsupported,
)
from entrypoints.api.problems import ProblemError, logger, summarize
from entrypoints.api.schemas import (
    HealthView,
    JobPageView,
    JobView,
    SubmittedJobView,
    job_location,
)
from entrypoints.settings import Settings

MAX_PAGE: Final = 500
DEFAULT_PAGE: Final = 50
# Cursors are printable ASCII, as every backend makes them.
_CURSOR: Final = re.compile(r"[!-~]{1,256}")
CURSOR_PATTERN: Final = f"^{_CURSOR.pattern}$"
_DIGITS: Final = re.compile(r"[0-9]{1,4}")
# A JSON number that is not negative: how `?wait=` gives its seconds.
_SECONDS: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")

JobId = Annotated[str, path_parameter("The job's id: 32 lowercase hex digits.", JOB_ID_PATTERN)]


def _accepted_headers(accepted: Accepted) -> dict[str, str]:
    headers = {"Location": job_location(accepted.job)}
    if accepted.unique:
        headers["Unique-Replayed"] = "true"
    elif not accepted.created:
        headers["Idempotent-Replayed"] = "true"
    return headers


class JobsController(Controller):
    path = "/jobs"
    tags = ["jobs"]

    @post(
        "/",
        operation_id="submitJob",
        summary="Submit a job",
        description="Validate a job and store it, queued (or scheduled, with `delay` or "
        "`run_at`). Answers at once: a worker runs it later. Poll `Location` for its status. "
        "With an `Idempotency-Key`, a repeat of the same body answers the first job "
        "(`Idempotent-Replayed: true`) and stores nothing; another body under the key is a 422. "
        "With a `unique_key` (or `unique_for`), while a job of the queue under that key has not "
        "finished, the answer is that job (`Unique-Replayed: true`, `replayed: true`) and "
        "nothing is stored; the key is free again once that job finishes, however it ends.",
        status_code=HTTPStatus.ACCEPTED,
        operation_class=SubmitJobOperation,
        responses={
            **SUBMIT_ERRORS,
            422: problem(
                "The JSON is not a valid submission (unknown type, invalid payload or option; "
                "every bad field is listed in `errors`), the `Idempotency-Key` is malformed, or "
                "it was used before for another body (`idempotency-conflict`)."
            ),
        },
    )
    async def submit_job(
        self,
        request: Request[Any, Any, Any],
        idempotency_key: Annotated[
            str | None,
            header_parameter(
                "Idempotency-Key",
                "Makes retries of this request safe: 1-200 printable ASCII characters, no "
                "spaces. Keys are remembered for a day (`CONVEYOR_IDEMPOTENCY_TTL_SECONDS`).",
                pattern=IDEMPOTENCY_KEY_PATTERN,
            ),
        ] = None,
    ) -> Response[SubmittedJobView]:
        jobs = job_service_of(request)
        with tracing_of(request).submission(request.headers, "/jobs") as trace_context:
            require_json(request)
            submission = submission_from(decode_json(await request.body()))
            key = idempotency_key_from(idempotency_key)
            try:
                accepted = await jobs.submit(
                    submission, idempotency_key=key, trace_context=trace_context
                )
            except IdempotencyConflictError as conflict:
                # One job, so no batch index: the conflict is the header's.
                raise IdempotencyConflictError(conflict.key) from None
        if (metrics := metrics_of(request.app.state)) is not None:
            metrics.submitted([accepted])
        return Response(
            SubmittedJobView.from_accepted(accepted, tracebacks=tracebacks_shown(request)),
            status_code=HTTPStatus.ACCEPTED,
            headers=_accepted_headers(accepted),
        )

    @get(
        "/{job_id:str}",
        operation_id="getJob",
        summary="Get a job",
        description="The job's status, attempts, progress, result and last error; why it waits "
        "(`waiting_reason`) and what happened to it so far (`timeline`). With `wait`, the answer "
        "comes once the job has finished, or after that many seconds.",
        operation_class=ConveyorOperation,
        responses={
            400: BAD_PARAMETER,
            404: NO_JOB,
            422: problem("`wait` is not a number of seconds."),
            503: UNAVAILABLE,
        },
    )
    async def get_job(
        self,
        job_id: JobId,
        jobs: NamedDependency[JobService],
        settings: NamedDependency[Settings],
        wait: Annotated[
            str | None,
            query_parameter(
                "Seconds to wait for the job to finish before answering (long polling); "
                "more than the server's limit (`CONVEYOR_WAIT_MAX_SECONDS`, 30 by default) "
                "waits that limit.",
                type=OpenAPIType.NUMBER,
                minimum=0,
            ),
        ] = None,
    ) -> JobView:
        seconds = wait_seconds(wait, settings.wait_max_seconds)
        if not is_job_id(job_id):
            raise JobNotFoundError(job_id)
        details = await jobs.details(job_id, wait=seconds)
        return JobView.from_details(details, tracebacks=settings.expose_tracebacks)

    @post(
        "/{job_id:str}/cancel",
        operation_id="cancelJob",
        summary="Cancel a job",
        description="A waiting job (scheduled, queued, or failed and due for a retry) is "
        "cancelled at once and never runs: 200. An active job is asked to stop: 202, with "
        "`cancel_requested_at` set; its worker stops it cooperatively (the job ends "
        "`cancelled`), or it finishes first.",
        status_code=HTTPStatus.OK,
        operation_class=ConveyorOperation,
        guards=[refuse_a_body],
        responses={
            **BODYLESS_ERRORS,
            400: BAD_PARAMETER,
            202: ResponseSpec(
                JobView,
                description="The job is running: its worker was asked to stop it.",
                generate_examples=False,
            ),
            404: NO_JOB,
            409: problem("The job has already finished."),
            501: unsupported("cancel jobs (or cancel running ones)"),
            503: UNAVAILABLE,
        },
    )
    async def cancel_job(
        self, request: Request[Any, Any, Any], job_id: JobId, jobs: NamedDependency[JobService]
    ) -> Response[JobView]:
        if not is_job_id(job_id):
            raise JobNotFoundError(job_id)
        job = await jobs.cancel(job_id)
        done = job.status is JobStatus.CANCELLED
        return Response(
            JobView.from_domain(job, tracebacks=tracebacks_shown(request)),
            status_code=HTTPStatus.OK if done else HTTPStatus.ACCEPTED,
        )

    @post(
        "/{job_id:str}/retry",
        operation_id="retryJob",
        summary="Retry a dead or cancelled job",
        description="Send the job back to its queue with fresh attempts. Its history stays.",
        status_code=HTTPStatus.ACCEPTED,
        operation_class=LocatedOperation,
        guards=[refuse_a_body],
        responses={
            **BODYLESS_ERRORS,
            400: BAD_PARAMETER,
            404: NO_JOB,
            409: problem("The job is neither dead nor cancelled."),
            503: UNAVAILABLE,
        },
    )
    async def retry_job(
        self, request: Request[Any, Any, Any], job_id: JobId, jobs: NamedDependency[JobService]
    ) -> Response[JobView]:
        if not is_job_id(job_id):
            raise JobNotFoundError(job_id)
        job = await jobs.retry(job_id)
        return Response(
            JobView.from_domain(job, tracebacks=tracebacks_shown(request)),
            status_code=HTTPStatus.ACCEPTED,
            headers={"Location": job_location(job)},
        )

    @get(
        "/",
        operation_id="listJobs",
        summary="List jobs",
        description="Jobs newest first, optionally filtered; follow `next_cursor` for more.",
        operation_class=ConveyorOperation,
        responses={
            400: BAD_PARAMETER,
            422: problem("A filter, `limit` or `cursor` is invalid."),
            503: UNAVAILABLE,
        },
    )
    async def list_jobs(
        self,
        jobs: NamedDependency[JobService],
        request: Request[Any, Any, Any],
        status: Annotated[
            str | None,
            query_parameter("Only jobs in this status.", enum=[s.value for s in JobStatus]),
        ] = None,
        job_type: Annotated[
            str | None,
            query_parameter("Only jobs of this type.", name="type", pattern=NAME_PATTERN),
        ] = None,
        queue: Annotated[
            str | None, query_parameter("Only jobs in this queue.", pattern=NAME_PATTERN)
        ] = None,
        limit: Annotated[
            str | None,
            query_parameter(
                f"Jobs per page (default {DEFAULT_PAGE}).",
                type=OpenAPIType.INTEGER,
                minimum=1,
                maximum=MAX_PAGE,
            ),
        ] = None,
        cursor: Annotated[
            str | None,
            query_parameter("`next_cursor` from the previous page.", pattern=CURSOR_PATTERN),
        ] = None,
    ) -> JobPageView:
        query = job_query(status, job_type, queue, limit, cursor)
        page = await jobs.list(query)
        return JobPageView.from_domain(page, tracebacks=tracebacks_shown(request))


def wait_seconds(raw: str | None, limit: float) -> float:
    """`?wait=` as seconds, at most `limit`; raises a 422 problem unless it is a number >= 0."""
    if raw is None:
        return 0.0
    if not _SECONDS.fullmatch(raw):
        error = FieldError("wait", "expected a number of seconds, 0 or more")
        raise ProblemError(
            HTTPStatus.UNPROCESSABLE_ENTITY, "invalid-query", summarize([error]), errors=[error]
        )
    seconds = float(raw)
    return min(seconds, limit) if math.isfinite(seconds) else limit


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
    if cursor is not None and not _CURSOR.fullmatch(cursor):
        errors.append(FieldError("cursor", "expected the `next_cursor` of a previous page"))
    if errors:
        raise ProblemError(
            HTTPStatus.UNPROCESSABLE_ENTITY, "invalid-query", summarize(errors), errors=errors
        )
    return JobQuery(status=parsed_status, type=job_type, queue=queue, limit=page, cursor=cursor)


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
    async def list_job_types(
        self, job_types: NamedDependency[JobTypeRegistry], settings: NamedDependency[Settings]
    ) -> JobTypeList:
        limits = settings.flow_limits
        return JobTypeList(
            job_types=[JobTypeView.from_domain(t, limits.get(t.name)) for t in job_types.values()]
        )


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
    async def ready(self, connection: NamedDependency[Connection]) -> HealthView:
        try:
            await connection.ping()
        except QueueUnavailableError:
            raise
        except Exception as exc:
            # Not ready, whatever the reason; the log says which.
            logger.warning("readiness check failed: %s", type(exc).__name__, exc_info=exc)
            raise QueueUnavailableError(type(exc).__name__) from exc
        return HealthView(status="ready")
