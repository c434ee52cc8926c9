"""The HTTP endpoints for schedules: declaring them, reading them, pausing, resuming and
removing them. A schedule's jobs are submitted by the scheduler that every API process and
every worker supervisor runs (`entrypoints.scheduling`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Annotated, Any, Final, cast

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Discriminator,
    OpenAPI,
    OpenAPIMediaType,
    OpenAPIType,
    Reference,
    RequestBody,
    Schema,
)

from domain.errors import FieldError, InvalidScheduleError, ScheduleNotFoundError
from domain.job_types import JobType, JobTypeRegistry
from domain.jobs import NAME_PATTERN, PRIORITY_MAX, PRIORITY_MIN, is_name
from domain.ports.schedules import Upsert
from domain.schedules import (
    DEFAULT_GRACE,
    MAX_EVERY,
    MAX_GRACE,
    MIN_EVERY,
    MisfirePolicy,
    ScheduleRequest,
)
from domain.scheduling import ScheduleService
from domain.submission import MAX_SCHEDULE_AHEAD
from entrypoints.api.body import decode_json, integral, require_json
from entrypoints.api.catalog import ScheduleList, ScheduleView
from entrypoints.api.guards import refuse_a_body
from entrypoints.api.openapi import (
    BAD_PARAMETER,
    BODYLESS_ERRORS,
    FOREIGN_ORIGIN,
    UNAVAILABLE,
    ConveyorOperation,
    path_parameter,
    problem,
    variant_name,
)
from entrypoints.setting_values import SCHEDULE_FIELDS

ScheduleName = Annotated[
    str, path_parameter("The schedule's name: 1-64 of a-z, 0-9, '_' or '-'.", NAME_PATTERN)
]
_NO_SCHEDULE: Final = problem("No schedule has this name.")
_REQUIRED: Final = ("name", "type", "payload")
# What deleting, pausing or resuming a schedule may answer besides its own.
_BY_NAME_BODYLESS: Final = {
    **BODYLESS_ERRORS,
    400: BAD_PARAMETER,
    404: _NO_SCHEDULE,
    503: UNAVAILABLE,
}


def schedule_request(document: object) -> ScheduleRequest:
    """The body as a ScheduleRequest; raises InvalidScheduleError for a wrong envelope (not
    an object, unknown or missing fields). What the fields say is the domain's to judge."""
    if not isinstance(document, Mapping):
        raise InvalidScheduleError([FieldError("", "expected a JSON object")])
    errors = [FieldError(key, "unknown field") for key in document if key not in SCHEDULE_FIELDS]
    errors += [FieldError(key, "field required") for key in _REQUIRED if key not in document]
    if errors:
        raise InvalidScheduleError(errors)
    return ScheduleRequest(**{key: integral(value) for key, value in document.items()})


def _checked(name: str) -> str:
    if not is_name(name):
        raise ScheduleNotFoundError(name)
    return name


SCHEDULE_SCHEMA: Final = "ScheduleDeclaration"


@dataclass
class PutScheduleOperation(ConveyorOperation):
    """`POST /schedules`: the body is read raw (so the API decides every error); this is
    what it takes (`schedule_schemas`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.request_body = RequestBody(
            required=True,
            description="The schedule: a name, a timetable (`cron` with an optional "
            "`timezone`, or `every`), and the job each tick submits (`type`, `payload`, "
            "`options`).",
            content={
                "application/json": OpenAPIMediaType(
                    schema=Reference(ref=f"#/components/schemas/{SCHEDULE_SCHEMA}")
                )
            },
        )


def _nullable(kind: OpenAPIType, **schema: Any) -> Schema:
    # A field given as null is left to its default, as if it were not given.
    return Schema(type=[kind, OpenAPIType.NULL], **schema)


def add_schedule_schemas(openapi: OpenAPI, registry: JobTypeRegistry) -> None:
    """`ScheduleDeclaration`: a union discriminated on `type`, one variant per job type,
    whose `payload` and `options` are what that type accepts (as for `POST /jobs`)."""
    variants = {
        variant_name(job_type, SCHEDULE_SCHEMA): _variant(job_type)
        for job_type in registry.values()
    }
    union = Schema(
        title="Schedule declaration",
        description="A schedule: its name, its timetable and the job each tick submits.",
        one_of=[Reference(ref=f"#/components/schemas/{name}") for name in variants],
        discriminator=Discriminator(
            property_name="type",
            mapping={
                job_type.name: f"#/components/schemas/{variant_name(job_type, SCHEDULE_SCHEMA)}"
                for job_type in registry.values()
            },
        ),
    )
    components = openapi.components
    components.schemas = {**(components.schemas or {}), SCHEDULE_SCHEMA: union, **variants}


def _variant(job_type: JobType) -> Schema:
    retry = job_type.retry
    return Schema(
        type=OpenAPIType.OBJECT,
        title=f"{job_type.name} schedule",
        properties={
            "name": Schema(type=OpenAPIType.STRING, pattern=NAME_PATTERN),
            "cron": _nullable(
                OpenAPIType.STRING,
                min_length=1,
                max_length=200,
                description="A standard 5-field cron expression (minute hour day-of-month "
                "month day-of-week), as Debian's cron reads it. Not with `every`.",
            ),
            "timezone": _nullable(
                OpenAPIType.STRING,
                min_length=1,
                max_length=64,
                default="UTC",
                description="The IANA time zone the cron expression is read in "
                "(`Europe/Paris`). Only with `cron`.",
            ),
            "every": _nullable(
                OpenAPIType.NUMBER,
                minimum=MIN_EVERY,
                maximum=MAX_EVERY,
                description="A fixed interval in seconds, counted from the schedule's "
                "creation. Not with `cron`.",
            ),
            "type": Schema(type=OpenAPIType.STRING, const=job_type.name),
            "payload": cast(Schema, job_type.schema.json_schema()),
            "options": _nullable(
                OpenAPIType.OBJECT,
                properties={
                    "queue": _nullable(OpenAPIType.STRING, pattern=NAME_PATTERN),
                    "priority": _nullable(
                        OpenAPIType.INTEGER, minimum=PRIORITY_MIN, maximum=PRIORITY_MAX
                    ),
                    "max_attempts": _nullable(
                        OpenAPIType.INTEGER, minimum=1, maximum=retry.max_attempts_limit
                    ),
                    "timeout": _nullable(
                        OpenAPIType.NUMBER,
                        exclusive_minimum=0,
                        maximum=job_type.timeout_limit,
                    ),
                    "deadline": _nullable(
                        OpenAPIType.NUMBER,
                        minimum=1,
                        maximum=MAX_SCHEDULE_AHEAD,
                        description="Seconds after its tick by which the job must finish.",
                    ),
                },
                additional_properties=False,
                description="The job's options, as `POST /jobs` takes them.",
            ),
            "misfire": _nullable(
                OpenAPIType.STRING,
                enum=[p.value for p in MisfirePolicy],
                default=MisfirePolicy.RUN_ONCE.value,
                description="After downtime: `run_once` submits one job for the missed "
                "ticks (the latest), `skip` none.",
            ),
            "misfire_grace": _nullable(
                OpenAPIType.NUMBER,
                minimum=1,
                maximum=MAX_GRACE,
                default=DEFAULT_GRACE,
                description="Seconds a tick may be late and still run as usual; a later "
                "one is missed.",
            ),
            "paused": _nullable(
                OpenAPIType.BOOLEAN,
                description="Pause (true) or resume (false) it; left out, as it is (a new "
                "one runs).",
            ),
        },
        required=list(_REQUIRED),
        additional_properties=False,
        schema_not=Schema(required=["cron", "every"]),
    )


class SchedulesController(Controller):
    path = "/schedules"
    tags = ["schedules"]

    @post(
        "/",
        operation_id="putSchedule",
        summary="Create or replace a schedule",
        description="Validate the schedule, including the job each tick would submit, and "
        "keep it: 201 when new, 200 when it replaced (or repeated) the one of its name. The "
        "same definition again keeps its ticks; a changed one starts from its next tick "
        "after now. Each tick submits one job, with the idempotency key "
        "`schedule:<name>:<tick time>`.",
        status_code=HTTPStatus.OK,
        operation_class=PutScheduleOperation,
        responses={
            201: ResponseSpec(ScheduleView, description="A new schedule.", generate_examples=False),
            400: problem("The body is not strict JSON."),
            403: FOREIGN_ORIGIN,
            415: problem("The body is not `application/json`."),
            422: problem(
                "The schedule is invalid: a bad cron expression, time zone, interval or "
                "misfire policy, an unknown job type, or a payload or options its jobs would "
                "be refused for (every bad field is listed in `errors`)."
            ),
            503: UNAVAILABLE,
        },
    )
    async def put_schedule(
        self, request: Request[Any, Any, Any], schedules: NamedDependency[ScheduleService]
    ) -> Response[ScheduleView]:
        require_json(request)
        stored, outcome = await schedules.put(schedule_request(decode_json(await request.body())))
        created = outcome is Upsert.CREATED
        return Response(
            ScheduleView.from_domain(stored),
            status_code=HTTPStatus.CREATED if created else HTTPStatus.OK,
            headers={"Location": f"/schedules/{stored.schedule.name}"},
        )

    @get(
        "/",
        operation_id="listSchedules",
        summary="List schedules",
        description="Every schedule, by name: its timetable, whether it is paused, its next "
        "tick, and the latest tick that submitted a job.",
        operation_class=ConveyorOperation,
        responses={503: UNAVAILABLE},
    )
    async def list_schedules(self, schedules: NamedDependency[ScheduleService]) -> ScheduleList:
        return ScheduleList(schedules=[ScheduleView.from_domain(s) for s in await schedules.list()])

    @get(
        "/{name:str}",
        operation_id="getSchedule",
        summary="Get a schedule",
        operation_class=ConveyorOperation,
        responses={400: BAD_PARAMETER, 404: _NO_SCHEDULE, 503: UNAVAILABLE},
    )
    async def get_schedule(
        self, name: ScheduleName, schedules: NamedDependency[ScheduleService]
    ) -> ScheduleView:
        return ScheduleView.from_domain(await schedules.get(_checked(name)))

    @delete(
        "/{name:str}",
        operation_id="deleteSchedule",
        summary="Remove a schedule",
        description="It submits no more jobs; the jobs it submitted stay.",
        operation_class=ConveyorOperation,
        guards=[refuse_a_body],
        responses=_BY_NAME_BODYLESS,
    )
    async def delete_schedule(
        self, name: ScheduleName, schedules: NamedDependency[ScheduleService]
    ) -> None:
        await schedules.delete(_checked(name))

    @post(
        "/{name:str}/pause",
        operation_id="pauseSchedule",
        summary="Pause a schedule",
        description="Its ticks submit nothing until it is resumed. Pausing a paused schedule "
        "changes nothing.",
        status_code=HTTPStatus.OK,
        operation_class=ConveyorOperation,
        guards=[refuse_a_body],
        responses=_BY_NAME_BODYLESS,
    )
    async def pause_schedule(
        self, name: ScheduleName, schedules: NamedDependency[ScheduleService]
    ) -> ScheduleView:
        return ScheduleView.from_domain(await schedules.pause(_checked(name)))

    @post(
        "/{name:str}/resume",
        operation_id="resumeSchedule",
        summary="Resume a schedule",
        description="It ticks again from its next tick after now: the ticks of the pause are "
        "not run (nor counted as missed). Resuming a running schedule changes nothing.",
        status_code=HTTPStatus.OK,
        operation_class=ConveyorOperation,
        guards=[refuse_a_body],
        responses=_BY_NAME_BODYLESS,
    )
    async def resume_schedule(
        self, name: ScheduleName, schedules: NamedDependency[ScheduleService]
    ) -> ScheduleView:
        return ScheduleView.from_domain(await schedules.resume(_checked(name)))
