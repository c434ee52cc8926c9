"""The OpenAPI document's parts that Litestar cannot infer.

`POST /jobs` and `POST /jobs/batch` read their raw bodies (so the API decides every error),
which leaves Litestar nothing to document. Their `operation_class`es point the request body
at components built here: `JobSubmission`, a `oneOf` discriminated on `type` with one variant
per registered job type, whose `payload` is that type's `schema.json_schema()` verbatim (the
domain is the one source of truth); and `BatchSubmission`, an array of `BatchItem`s, the same
union whose variants may also carry an `idempotency_key`. `add_submission_schemas` puts those
components into the app's document once Litestar has built it: Litestar fills
`components.schemas` from the types it saw, so schemas passed through
`OpenAPIConfig.components` would be dropped. (Routes added later with `app.register()` make
Litestar rebuild the document; the API never does that.)

The helpers below describe parameters and error answers the same way on every endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, cast

from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Discriminator,
    OpenAPI,
    OpenAPIFormat,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
)
from litestar.params import HeaderParameter, PathParameter, QueryParameter

from domain.job_types import JobType, JobTypeRegistry
from domain.jobs import (
    IDEMPOTENCY_KEY_MAX,
    NAME_PATTERN,
    PRIORITY_MAX,
    PRIORITY_MIN,
    UNIQUE_KEY_MAX,
)
from domain.submission import MAX_BATCH, MAX_SCHEDULE_AHEAD, MAX_UNIQUE_FOR
from entrypoints.api.problems import PROBLEM_MEDIA_TYPE
from entrypoints.api.schemas import Problem

SUBMISSION_SCHEMA: Final = "JobSubmission"
BATCH_ITEM_SCHEMA: Final = "BatchItem"
BATCH_SCHEMA: Final = "BatchSubmission"
JOB_ID_PATTERN: Final = "^[0-9a-f]{32}$"
# Printable ASCII without the space, as `domain.jobs.is_idempotency_key` accepts.
IDEMPOTENCY_KEY_PATTERN: Final = f"^[!-~]{{1,{IDEMPOTENCY_KEY_MAX}}}$"
_RETRY_AFTER: Final = OpenAPIHeader(
    description="Seconds to wait before trying again.",
    schema=Schema(type=OpenAPIType.INTEGER, minimum=1),
    required=True,
)
_LOCATION: Final = OpenAPIHeader(
    description="The job's URL: `/jobs/{id}`.",
    schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.URI_REFERENCE),
    required=True,
)
# RFC 3339 with its offset, as the domain reads it (`2026-01-02T03:04:05Z` is the shortest).
_MOMENT_MIN: Final = 20
_MOMENT_MAX: Final = 40
_REPLAYED: Final = OpenAPIHeader(
    description="Present on the answer to a repeated `Idempotency-Key`: the job is the one the "
    "first request created.",
    schema=Schema(type=OpenAPIType.STRING, enum=["true"]),
    required=False,
)
_UNIQUE_REPLAYED: Final = OpenAPIHeader(
    description="Present when a job of the queue that has not finished holds the submission's "
    "`unique_key`: the job is that one, and nothing was stored.",
    schema=Schema(type=OpenAPIType.STRING, enum=["true"]),
    required=False,
)


def problem(description: str) -> ResponseSpec:
    """An error answer: an RFC 9457 problem."""
    return ResponseSpec(
        Problem, description=description, media_type=PROBLEM_MEDIA_TYPE, generate_examples=False
    )


UNAVAILABLE: Final = problem("The job store is unreachable; retry after `Retry-After` seconds.")
BAD_PARAMETER: Final = problem("A parameter has the wrong shape.")
NO_JOB: Final = problem("No job has this id (or it is not a job id).")
OVER_LIMIT: Final = problem(
    "A queue (or the job store) is over its admission limit (`over-limit`), or a job would "
    "open one more queue than the most kept (`too-many-queues`): nothing was stored; retry "
    "after `Retry-After` seconds."
)


def unsupported(what: str) -> ResponseSpec:
    """A 501: the configured backend lacks a capability (the problem's `capability`)."""
    return problem(f"The configured queue backend cannot {what}; `capability` names what it lacks.")


FOREIGN_ORIGIN: Final = problem(
    "The request comes from a web page (its `Origin` header) whose origin is not in "
    "`CONVEYOR_ALLOWED_ORIGINS`: nothing was done. Clients that are not browsers send no "
    "`Origin`."
)
# What every state-changing endpoint without a body may answer besides its own.
BODYLESS_ERRORS: Final = {
    403: FOREIGN_ORIGIN,
    415: problem("The request has a body that is not JSON: this endpoint takes none."),
}

# What submitting one job or a batch may answer besides 202 and 422.
SUBMIT_ERRORS: Final = {
    400: problem(
        "The body is not strict JSON (syntax, NaN, depth, repeated keys), or a parameter has "
        "the wrong shape."
    ),
    403: FOREIGN_ORIGIN,
    413: problem("The body is larger than the limit."),
    415: problem("The body is not `application/json`."),
    429: OVER_LIMIT,
    501: unsupported(
        "honour an option the submission asks for (idempotency keys, scheduling, deadlines)"
    ),
    503: problem(
        "The job store is unreachable (`queue-unavailable`), or it took the submission but "
        "fewer replicas than `CONVEYOR_MIN_REPLICAS` confirmed it in time (`not-replicated`: "
        "the jobs may be stored; a retry with the same idempotency keys is safe); retry "
        "after `Retry-After` seconds."
    ),
}


def query_parameter(description: str, *, name: str | None = None, **schema: Any) -> QueryParameter:
    """A query parameter the handler validates itself (one 422 lists every bad one): Litestar
    hands it over as an optional string, and the document shows what is accepted instead."""
    return QueryParameter(
        name=name,
        description=description,
        schema_extra={"one_of": None, "type": OpenAPIType.STRING, **schema},
    )


def header_parameter(name: str, description: str, **schema: Any) -> HeaderParameter:
    """An optional header the handler validates itself, documented like `query_parameter`."""
    return HeaderParameter(
        name=name,
        description=description,
        schema_extra={"one_of": None, "type": OpenAPIType.STRING, **schema},
    )


def path_parameter(description: str, pattern: str) -> PathParameter:
    """A path segment: one that does not match `pattern` names nothing (404)."""
    return PathParameter(description=description, schema_extra={"pattern": pattern})


# Any characters but control ones, as `domain.jobs.is_unique_key` accepts (ECMA regex).
UNIQUE_KEY_PATTERN: Final = r"^[^\u0000-\u001f\u007f]+$"


def _optional(kind: OpenAPIType, **schema: Any) -> Schema:
    # An option given as null is left to its default, as if it were not given.
    return Schema(type=[kind, OpenAPIType.NULL], **schema)


def _ref(name: str) -> Reference:
    return Reference(ref=f"#/components/schemas/{name}")


def variant_name(job_type: JobType, union: str = SUBMISSION_SCHEMA) -> str:
    """`email` -> `EmailJobSubmission`, `daily-report` -> `DailyReportJobSubmission`."""
    words = job_type.name.replace("-", "_").split("_")
    return "".join(word[:1].upper() + word[1:] for word in words) + union


@dataclass
class ConveyorOperation(Operation):
    """Every operation: a 429 or 503 answer carries a `Retry-After` header."""

    def __post_init__(self) -> None:
        for status, response in (self.responses or {}).items():
            if status in ("429", "503") and isinstance(response, OpenAPIResponse):
                response.headers = {**(response.headers or {}), "Retry-After": _RETRY_AFTER}


@dataclass
class LocatedOperation(ConveyorOperation):
    """An operation whose 202 names the job's URL in `Location`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        accepted = (self.responses or {}).get("202")
        if isinstance(accepted, OpenAPIResponse):
            accepted.headers = {**(accepted.headers or {}), "Location": _LOCATION}


@dataclass
class SubmitJobOperation(LocatedOperation):
    """`POST /jobs`: the discriminated `JobSubmission` body, and the 202's headers."""

    def __post_init__(self) -> None:
        super().__post_init__()
        accepted = (self.responses or {}).get("202")
        if isinstance(accepted, OpenAPIResponse):
            accepted.headers = {
                **(accepted.headers or {}),
                "Idempotent-Replayed": _REPLAYED,
                "Unique-Replayed": _UNIQUE_REPLAYED,
            }
        self.request_body = RequestBody(
            required=True,
            description="The job to run: its registered `type` and a `payload` that type "
            "accepts (see GET /job-types), optionally its limits, queue, priority, schedule "
            "and deadline, and a `unique_key` or `unique_for`.",
            content={"application/json": OpenAPIMediaType(schema=_ref(SUBMISSION_SCHEMA))},
        )


@dataclass
class SubmitBatchOperation(ConveyorOperation):
    """`POST /jobs/batch`: a `BatchSubmission` body."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.request_body = RequestBody(
            required=True,
            description=f"1 to {MAX_BATCH} jobs, each as `POST /jobs` takes it, optionally with "
            "its own `idempotency_key`.",
            content={"application/json": OpenAPIMediaType(schema=_ref(BATCH_SCHEMA))},
        )


def submission_schemas(registry: JobTypeRegistry) -> dict[str, Schema]:
    """The `JobSubmission` and `BatchItem` unions, their variants and `BatchSubmission`."""
    schemas = {
        **_union(registry, SUBMISSION_SCHEMA, "Job submission", batch=False),
        **_union(registry, BATCH_ITEM_SCHEMA, "Batch item", batch=True),
    }
    schemas[BATCH_SCHEMA] = Schema(
        type=OpenAPIType.OBJECT,
        title="Batch submission",
        description="Jobs validated together and stored in one step: all of them or none.",
        properties={
            "jobs": Schema(
                type=OpenAPIType.ARRAY,
                items=_ref(BATCH_ITEM_SCHEMA),
                min_items=1,
                max_items=MAX_BATCH,
            )
        },
        required=["jobs"],
        additional_properties=False,
    )
    return schemas


def add_submission_schemas(openapi: OpenAPI, registry: JobTypeRegistry) -> None:
    components = openapi.components
    components.schemas = {**(components.schemas or {}), **submission_schemas(registry)}


def _union(registry: JobTypeRegistry, union: str, title: str, *, batch: bool) -> dict[str, Schema]:
    variants = {
        variant_name(job_type, union): _variant(job_type, batch=batch)
        for job_type in registry.values()
    }
    schema = Schema(
        title=title,
        description="One job: which registered type, its payload and options.",
        one_of=[_ref(name) for name in variants],
        discriminator=Discriminator(
            property_name="type",
            mapping={
                job_type.name: _ref(variant_name(job_type, union)).ref
                for job_type in registry.values()
            },
        ),
    )
    return {union: schema, **variants}


def _variant(job_type: JobType, *, batch: bool) -> Schema:
    retry = job_type.retry
    properties: dict[str, Schema | Reference] = {
        "type": Schema(type=OpenAPIType.STRING, const=job_type.name),
        "payload": _verbatim(job_type.schema.json_schema()),
        "max_attempts": _optional(
            OpenAPIType.INTEGER,
            minimum=1,
            maximum=retry.max_attempts_limit,
            default=retry.max_attempts,
            description="Attempts before the job is dead-lettered.",
        ),
        "timeout": _optional(
            OpenAPIType.NUMBER,
            exclusive_minimum=0,
            maximum=job_type.timeout_limit,
            default=job_type.timeout,
            description="Seconds one attempt may run.",
        ),
        "queue": _optional(
            OpenAPIType.STRING,
            pattern=NAME_PATTERN,
            default=job_type.queue,
            description="The queue to put it in (workers choose the queues they serve).",
        ),
        "priority": _optional(
            OpenAPIType.INTEGER,
            minimum=PRIORITY_MIN,
            maximum=PRIORITY_MAX,
            default=job_type.priority,
            description="Higher runs first within its queue; equal priorities run in order.",
        ),
        "delay": _optional(
            OpenAPIType.NUMBER,
            minimum=0,
            maximum=MAX_SCHEDULE_AHEAD,
            description="Seconds from now before it may run. Not with `run_at`.",
        ),
        "run_at": _optional(
            OpenAPIType.STRING,
            format=OpenAPIFormat.DATE_TIME,
            min_length=_MOMENT_MIN,
            max_length=_MOMENT_MAX,
            description="RFC 3339 time, with its offset, before which it does not run; a time "
            "already past runs now. At most a year ahead. Not with `delay`.",
        ),
        "deadline": Schema(
            one_of=[
                Schema(
                    type=OpenAPIType.STRING,
                    format=OpenAPIFormat.DATE_TIME,
                    min_length=_MOMENT_MIN,
                    max_length=_MOMENT_MAX,
                ),
                Schema(type=OpenAPIType.NUMBER, exclusive_minimum=0, maximum=MAX_SCHEDULE_AHEAD),
                Schema(type=OpenAPIType.NULL),
            ],
            description="When the job expires unless it has finished: an RFC 3339 time or "
            "seconds from now. It must fall after the job may start, at most a year ahead.",
        ),
        "unique_key": _optional(
            OpenAPIType.STRING,
            min_length=1,
            max_length=UNIQUE_KEY_MAX,
            pattern=UNIQUE_KEY_PATTERN,
            description="While a job of the queue under this key has not finished (scheduled, "
            "queued, running, or waiting for a retry), a submission under it stores nothing and "
            "is answered with that job (`Unique-Replayed: true`). Not with `unique_for`.",
        ),
        "unique_for": Schema(
            one_of=[
                Schema(
                    type=OpenAPIType.ARRAY,
                    items=Schema(
                        type=OpenAPIType.STRING,
                        enum=sorted(field.name for field in job_type.schema.fields),
                    ),
                    min_items=1,
                    max_items=MAX_UNIQUE_FOR,
                    unique_items=True,
                ),
                Schema(type=OpenAPIType.NULL),
            ],
            description="As `unique_key`, the key made of the job type and these payload "
            "fields' values (each must be given). Not with `unique_key`.",
        ),
    }
    if batch:
        properties["idempotency_key"] = _optional(
            OpenAPIType.STRING,
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="As the `Idempotency-Key` header of `POST /jobs`, for this item: a "
            "repeat with the same body answers the first job; another body is refused.",
        )
    return Schema(
        type=OpenAPIType.OBJECT,
        title=f"{job_type.name} job",
        description=job_type.description,
        properties=properties,
        required=["type", "payload"],
        additional_properties=False,
        schema_not=Schema(required=["delay", "run_at"]),
    )


def _verbatim(json_schema: dict[str, Any]) -> Schema:
    # Litestar renders a plain dict as it is, which keeps the domain's schema exact; building
    # `Schema` objects from it would drop any keyword the converter did not know.
    return cast(Schema, json_schema)
