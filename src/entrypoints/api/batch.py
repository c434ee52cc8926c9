"""`POST /jobs/batch`: many jobs validated together and stored in one step."""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, Final

from litestar import Controller, Request, post
from litestar.di import NamedDependency

from domain.errors import FieldError, InvalidJobError, UnknownJobTypeError
from domain.job_service import JobService
from domain.jobs import is_idempotency_key
from domain.submission import MAX_BATCH
from entrypoints.api.body import BatchItem, batch_from, decode_json, require_json
from entrypoints.api.deps import tracing_of
from entrypoints.api.metrics import metrics_of
from entrypoints.api.openapi import SUBMIT_ERRORS, SubmitBatchOperation, problem
from entrypoints.api.schemas import BatchView

# A batch's body may be this many times larger than one submission's limit.
BATCH_BODY_FACTOR: Final = 4


class BatchController(Controller):
    """`POST /jobs/batch`, on its own so that the app can give it a larger body limit."""

    path = "/jobs/batch"
    tags = ["jobs"]

    @post(
        "/",
        operation_id="submitJobs",
        summary="Submit many jobs at once",
        description="Validate every job, then store them all in one step, or none: a 422 lists "
        "every bad field of every item (`jobs[3].payload.to`). The answer has one entry per "
        "item, in order; `created` is false for an item whose `idempotency_key` named a job "
        "submitted before.",
        status_code=HTTPStatus.ACCEPTED,
        operation_class=SubmitBatchOperation,
        responses={
            **SUBMIT_ERRORS,
            413: problem(
                f"The body is larger than the batch limit ({BATCH_BODY_FACTOR} times a single "
                "submission's)."
            ),
            422: problem(
                f"The JSON is not a valid batch: not 1 to {MAX_BATCH} items, or an item is invalid "
                "(each bad field is listed in `errors`, by `jobs[index]` path), or an item's "
                "`idempotency_key` was used before for another body (`idempotency-conflict`)."
            ),
        },
    )
    async def submit_jobs(
        self, request: Request[Any, Any, Any], jobs: NamedDependency[JobService]
    ) -> BatchView:
        with tracing_of(request).submission(request.headers, "/jobs/batch") as trace_context:
            require_json(request)
            items = batch_from(decode_json(await request.body()))
            submissions = [item.submission for item in items if item.submission is not None]
            if len(submissions) < len(items):
                raise InvalidJobError(_every_item_error(jobs, items))
            keys = [item.idempotency_key for item in items]
            try:
                accepted = await jobs.submit_batch(submissions, keys, trace_context=trace_context)
            except InvalidJobError as invalid:
                raise InvalidJobError(_in_batch(invalid.errors, single=len(items) == 1)) from None
            except UnknownJobTypeError as unknown:  # a batch of one, reported as one job
                raise InvalidJobError([FieldError("jobs[0].type", str(unknown))]) from None
        if (metrics := metrics_of(request.app.state)) is not None:
            metrics.submitted(accepted)
        return BatchView.from_domain(accepted)


def _in_batch(errors: Sequence[FieldError], *, single: bool) -> list[FieldError]:
    """The domain's errors about a batch, by their wire path: `jobs[index].field`. (The
    domain names items `[index].field`, except in a batch of one, which it reports as one
    job: `field`.)"""
    if not single:
        return [FieldError(f"jobs{e.path}", e.message) for e in errors]
    return [FieldError(f"jobs[0].{e.path}" if e.path else "jobs[0]", e.message) for e in errors]


def _every_item_error(jobs: JobService, items: Sequence[BatchItem]) -> list[FieldError]:
    """Every error of a batch some of whose items have a bad envelope: theirs, and what the
    domain finds wrong with the other items, in item order."""
    errors: list[FieldError] = []
    for index, item in enumerate(items):
        errors += item.errors
        if item.submission is None:
            continue
        prefix = f"jobs[{index}]"
        key = item.idempotency_key
        if key is not None and not is_idempotency_key(key):
            errors.append(FieldError(f"{prefix}.idempotency_key", "expected 1-200 printable ASCII"))
        try:
            jobs.validate(item.submission)
        except InvalidJobError as invalid:
            errors += [FieldError(f"{prefix}.{e.path}", e.message) for e in invalid.errors]
        except UnknownJobTypeError as unknown:
            errors.append(FieldError(f"{prefix}.type", str(unknown)))
    return errors
