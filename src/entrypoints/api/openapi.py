"""The OpenAPI document's parts that Litestar cannot infer.

`POST /jobs` reads its raw body (so the API decides every error), which leaves Litestar
nothing to document. `SubmitJobOperation` (the handler's `operation_class`) points the
request body at the `JobSubmission` component: a `oneOf` discriminated on `type`, one variant
per registered job type, whose `payload` is that type's `schema.json_schema()` verbatim (the
domain is the one source of truth). `add_submission_schemas` puts those components into the
app's document once Litestar has built it: Litestar fills `components.schemas` from the types
it saw, so schemas passed through `OpenAPIConfig.components` would be dropped. (Routes added
later with `app.register()` make Litestar rebuild the document; the API never does that.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, cast

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

from domain.job_types import JobType, JobTypeRegistry

SUBMISSION_SCHEMA: Final = "JobSubmission"
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


def _ref(name: str) -> Reference:
    return Reference(ref=f"#/components/schemas/{name}")


def variant_name(job_type: JobType) -> str:
    """`email` -> `EmailJobSubmission`, `daily-report` -> `DailyReportJobSubmission`."""
    words = job_type.name.replace("-", "_").split("_")
    return "".join(word[:1].upper() + word[1:] for word in words) + SUBMISSION_SCHEMA


@dataclass
class ConveyorOperation(Operation):
    """Every operation: a 429 or 503 answer carries a `Retry-After` header."""

    def __post_init__(self) -> None:
        for status, response in (self.responses or {}).items():
            if status in ("429", "503") and isinstance(response, OpenAPIResponse):
                response.headers = {**(response.headers or {}), "Retry-After": _RETRY_AFTER}


@dataclass
class SubmitJobOperation(ConveyorOperation):
    """`POST /jobs`: the discriminated `JobSubmission` body, and the 202's `Location`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        accepted = (self.responses or {}).get("202")
        if isinstance(accepted, OpenAPIResponse):
            accepted.headers = {**(accepted.headers or {}), "Location": _LOCATION}
        self.request_body = RequestBody(
            required=True,
            description="The job to run: its registered `type` and a `payload` that type "
            "accepts (see GET /job-types), optionally `max_attempts` and `timeout`.",
            content={"application/json": OpenAPIMediaType(schema=_ref(SUBMISSION_SCHEMA))},
        )


def submission_schemas(registry: JobTypeRegistry) -> dict[str, Schema]:
    """The `JobSubmission` union and one variant per job type, by component name."""
    variants = {variant_name(job_type): _variant(job_type) for job_type in registry.values()}
    union = Schema(
        title="Job submission",
        description="One job: which registered type, and its payload.",
        one_of=[_ref(name) for name in variants],
        discriminator=Discriminator(
            property_name="type",
            mapping={
                job_type.name: _ref(variant_name(job_type)).ref for job_type in registry.values()
            },
        ),
    )
    return {SUBMISSION_SCHEMA: union, **variants}


def add_submission_schemas(openapi: OpenAPI, registry: JobTypeRegistry) -> None:
    components = openapi.components
    components.schemas = {**(components.schemas or {}), **submission_schemas(registry)}


def _variant(job_type: JobType) -> Schema:
    retry = job_type.retry
    return Schema(
        type=OpenAPIType.OBJECT,
        title=f"{job_type.name} job",
        description=job_type.description,
        properties={
            "type": Schema(type=OpenAPIType.STRING, const=job_type.name),
            "payload": _verbatim(job_type.schema.json_schema()),
            "max_attempts": Schema(
                type=OpenAPIType.INTEGER,
                minimum=1,
                maximum=retry.max_attempts_limit,
                default=retry.max_attempts,
                description="Attempts before the job is dead-lettered.",
            ),
            "timeout": Schema(
                type=OpenAPIType.NUMBER,
                exclusive_minimum=0,
                maximum=job_type.timeout_limit,
                default=job_type.timeout,
                description="Seconds one attempt may run.",
            ),
        },
        required=["type", "payload"],
        additional_properties=False,
    )


def _verbatim(json_schema: dict[str, Any]) -> Schema:
    # Litestar renders a plain dict as it is, which keeps the domain's schema exact; building
    # `Schema` objects from it would drop any keyword the converter did not know.
    return cast(Schema, json_schema)
