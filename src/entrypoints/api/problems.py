"""The one place errors become responses: RFC 9457 `application/problem+json`.

Domain errors, the API's own client errors (`ProblemError`) and Litestar's `HTTPException`s
(no route, wrong method, body too large, bad parameters) all pass through `problem_response`.
Anything else is a bug: it is logged and answered with a 500 that reveals nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, Final

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from domain.errors import (
    AdmissionRefusedError,
    DomainError,
    FieldError,
    IdempotencyConflictError,
    InvalidJobError,
    InvalidScheduleError,
    InvalidTransitionError,
    JobNotFoundError,
    NotReplicatedError,
    PartialSubmissionError,
    QueueUnavailableError,
    ScheduleNotFoundError,
    TooManyQueuesError,
    UniqueKeyHeldError,
    UnknownJobTypeError,
    UnsupportedOperationError,
)
from entrypoints.api.metrics import metrics_of
from entrypoints.api.schemas import FieldErrorView, Problem

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
# Problem types are identifiers, not links: nothing is served at them.
_TYPE_PREFIX: Final = "urn:conveyor:problem:"
# A client can make the API list one error per unknown field; keep the answer bounded.
MAX_LISTED_ERRORS: Final = 100
# Longest piece of client input echoed back in a message.
_ECHO_LIMIT: Final = 80

logger = logging.getLogger("conveyor.api")


def problem_type(slug: str) -> str:
    return f"{_TYPE_PREFIX}{slug}"


class ProblemError(Exception):
    """A client error the API detects itself (media type, JSON syntax, query parameters)."""

    def __init__(
        self,
        status: HTTPStatus,
        slug: str,
        detail: str,
        *,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.errors = tuple(errors)
        self.headers = dict(headers or {})


def clip(text: str, limit: int = _ECHO_LIMIT) -> str:
    """`text` cut to `limit` characters, so echoing client input cannot blow up a response."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def problem_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """The exception handler registered for `Exception` on the app: every error ends here."""
    problem, headers = _to_problem(request, exc)
    return Response(
        problem,
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def _to_problem(request: Request[Any, Any, Any], exc: Exception) -> tuple[Problem, dict[str, str]]:
    instance = request.url.path
    match exc:
        case ProblemError():
            return _problem(exc.status, exc.slug, exc.detail, instance, exc.errors), exc.headers
        case UnknownJobTypeError():
            detail = f"unknown job type {clip(exc.name)!r}; known types: {', '.join(exc.known)}"
            problem = _problem(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                "unknown-job-type",
                detail,
                instance,
                [FieldError("type", f"expected one of: {', '.join(exc.known)}")],
            )
            return msgspec.structs.replace(problem, known_types=list(exc.known)), {}
        case InvalidJobError():
            return _problem(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                "invalid-job",
                summarize(exc.errors),
                instance,
                exc.errors,
            ), {}
        case InvalidScheduleError():
            return _problem(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                "invalid-schedule",
                summarize(exc.errors),
                instance,
                exc.errors,
            ), {}
        case ScheduleNotFoundError():
            detail = f"no schedule named {clip(exc.name)!r}"
            return _problem(HTTPStatus.NOT_FOUND, "schedule-not-found", detail, instance), {}
        case JobNotFoundError():
            detail = f"no job with id {clip(exc.job_id)!r}"
            return _problem(HTTPStatus.NOT_FOUND, "job-not-found", detail, instance), {}
        case UniqueKeyHeldError():
            return _problem(HTTPStatus.CONFLICT, "unique-key-held", str(exc), instance), {}
        case InvalidTransitionError():
            return _problem(HTTPStatus.CONFLICT, "invalid-transition", str(exc), instance), {}
        case IdempotencyConflictError():
            where = "" if exc.index is None else f" (jobs[{exc.index}])"
            detail = (
                f"the idempotency key {clip(exc.key)!r}{where} was already used for a different "
                "submission; send the same body again, or use a new key"
            )
            path = "Idempotency-Key" if exc.index is None else f"jobs[{exc.index}].idempotency_key"
            return _problem(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                "idempotency-conflict",
                detail,
                instance,
                [FieldError(path, "already used for a different submission")],
            ), {}
        case TooManyQueuesError():
            detail = (
                f"queue {exc.queue!r} would be one more than the {exc.limit} queues kept"
                " (CONVEYOR_MAX_QUEUES); use an existing queue, or retry once unused ones"
                " (no job, not paused, no live worker) have been forgotten"
            )
            problem = _problem(HTTPStatus.TOO_MANY_REQUESTS, "too-many-queues", detail, instance)
            return problem, retry_after(exc.retry_after)
        case AdmissionRefusedError():
            where = "the job store" if exc.queue is None else f"queue {exc.queue!r}"
            detail = f"{where} is over its admission limit ({exc.reason}); retry later"
            problem = _problem(HTTPStatus.TOO_MANY_REQUESTS, "over-limit", detail, instance)
            return problem, retry_after(exc.retry_after)
        case UnsupportedOperationError():
            detail = (
                f"this backend cannot {exc.operation.replace('_', ' ')}: it lacks the "
                f"`{exc.capability}` capability ({exc.reason})"
            )
            problem = _problem(
                HTTPStatus.NOT_IMPLEMENTED, "unsupported-by-backend", detail, instance
            )
            return msgspec.structs.replace(problem, capability=exc.capability), {}
        case PartialSubmissionError():
            # Each job says whether it was stored: a retry of the same batch with idempotency
            # keys answers the stored ones and stores the rest.
            outcomes = [
                FieldError(f"jobs[{i}]", f"stored as {job_id}")
                if job_id is not None
                else FieldError(f"jobs[{i}]", f"not stored: {_why_not_stored(error)}")
                for i, (job_id, error) in enumerate(zip(exc.stored, exc.errors, strict=True))
            ]
            logger.warning("a batch was stored only in part: %s", exc)
            stored = sum(job_id is not None for job_id in exc.stored)
            detail = (
                f"{stored} of {len(exc.stored)} jobs were stored, queue by queue; `errors` says"
                " what happened to each; resend the others (or the whole batch with"
                " idempotency keys) later"
            )
            problem = _problem(
                HTTPStatus.SERVICE_UNAVAILABLE, "partially-stored", detail, instance, outcomes
            )
            return problem, retry_after(exc.retry_after)
        case NotReplicatedError():
            logger.warning(
                "write not confirmed by replicas: %d of %d within %g s",
                exc.acknowledged,
                exc.required,
                exc.timeout,
            )
            detail = (
                f"the job store took the submission, but only {exc.acknowledged} of the"
                f" {exc.required} replicas required confirmed it within {exc.timeout:g} s:"
                " the job may have been stored but is not yet confirmed durable (a failover"
                " now could lose it). Retrying the same body with the same Idempotency-Key"
                " (for a batch, the same idempotency_key per job) is safe while the key is"
                " remembered: it answers the job already stored once the replicas confirm"
                " it, or stores it if it was lost. Without a key, a retry may store a second"
                " job"
            )
            problem = _problem(HTTPStatus.SERVICE_UNAVAILABLE, "not-replicated", detail, instance)
            return problem, retry_after(exc.retry_after)
        case QueueUnavailableError():
            logger.warning("queue backend unavailable: %s", exc.reason)
            if (metrics := metrics_of(request.app.state)) is not None:
                metrics.redis_error()
            detail = "the job store cannot be reached right now; retry later"
            problem = _problem(
                HTTPStatus.SERVICE_UNAVAILABLE, "queue-unavailable", detail, instance
            )
            return problem, retry_after(exc.retry_after)
        case ValidationException():
            errors = _parameter_errors(exc.extra)
            detail = "invalid request parameters"
            return _problem(
                HTTPStatus.BAD_REQUEST, "invalid-parameter", detail, instance, errors
            ), _headers(exc)
        case HTTPException() if exc.status_code < 500:
            return _from_http_exception(request, exc, instance), _headers(exc)
        case _:
            logger.error(
                "unhandled %s on %s %s",
                type(exc).__name__,
                request.method,
                instance,
                exc_info=exc,
            )
            detail = "the server failed to handle this request; it has been logged"
            return _problem(HTTPStatus.INTERNAL_SERVER_ERROR, None, detail, instance), {}


def _why_not_stored(error: DomainError | None) -> str:
    """An item's reason as a client may read it: an outage's own words (hosts, ports) stay
    in the log."""
    if isinstance(error, QueueUnavailableError):
        return "the job store cannot be reached right now"
    return str(error)


def summarize(errors: Sequence[FieldError], shown: int = 3) -> str:
    """`2 invalid fields: payload.to: expected ...; max_attempts: expected ...`."""
    count = len(errors)
    parts = [f"{clip(e.path) or '(root)'}: {e.message}" for e in errors[:shown]]
    summary = f"{count} invalid field{'s' if count != 1 else ''}: " + "; ".join(parts)
    if count > shown:
        listed = min(count, MAX_LISTED_ERRORS)
        summary += f"; and {count - shown} more (`errors` lists {listed})"
    return summary


def _problem(
    status: HTTPStatus,
    slug: str | None,
    detail: str,
    instance: str,
    errors: Sequence[FieldError] = (),
) -> Problem:
    listed = [
        FieldErrorView(path=clip(e.path, 200), message=e.message)
        for e in errors[:MAX_LISTED_ERRORS]
    ]
    return Problem(
        type="about:blank" if slug is None else problem_type(slug),
        title=status.phrase,
        status=int(status),
        detail=detail,
        instance=instance,
        errors=listed if listed else msgspec.UNSET,
    )


def _from_http_exception(
    request: Request[Any, Any, Any], exc: HTTPException, instance: str
) -> Problem:
    status = HTTPStatus(exc.status_code)
    detail = exc.detail if exc.detail and exc.detail != status.phrase else ""
    match status:
        case HTTPStatus.NOT_FOUND:
            return _problem(status, None, f"nothing at {clip(instance)}", instance)
        case HTTPStatus.METHOD_NOT_ALLOWED:
            allowed = next((v for k, v in _headers(exc).items() if k.lower() == "allow"), "")
            detail = f"{request.method} is not allowed here"
            if allowed:
                detail += f"; allowed: {allowed}"
            return _problem(status, None, detail, instance)
        case HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            limit = _body_limit(request)
            detail = "the request body is too large"
            if limit is not None:
                detail += f": the limit is {limit} bytes"
            return _problem(status, "request-too-large", detail, instance)
    return _problem(status, None, detail or status.description, instance)


def _body_limit(request: Request[Any, Any, Any]) -> int | None:
    try:
        return request.route_handler.resolve_request_max_body_size()
    except Exception:  # no route matched, or no limit resolved: the message does without
        return None


def _headers(exc: HTTPException) -> dict[str, str]:
    return dict(exc.headers or {})


def _parameter_errors(extra: object) -> list[FieldError]:
    """Litestar's parameter validation messages (`extra`) as field errors."""
    items: list[Any] = extra if isinstance(extra, list) else [extra] if extra else []
    errors = []
    for item in items:
        if isinstance(item, Mapping):
            errors.append(FieldError(str(item.get("key", "")), str(item.get("message", ""))))
    return errors
