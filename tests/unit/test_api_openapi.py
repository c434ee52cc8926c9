"""The OpenAPI document at /schema: every operation named and tagged, every parameter, header
and error answer described, and POST /jobs shown as a union discriminated on `type` whose
payloads are the domain's own schemas."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
from dependency_injector import providers
from litestar import Litestar
from litestar.testing import TestClient

from domain.job_types import JobContext, JobType, JobTypeRegistry
from domain.job_types.registry import default_registry
from domain.jobs import NAME_PATTERN, JSONObject, JSONValue
from domain.schema import Field, Kind, PayloadSchema
from entrypoints.api.app import create_app
from entrypoints.container import Container, build_container
from entrypoints.settings import QueueBackend, Settings
from tests.fakes import RecordingEmailSender

PROBLEM = "application/problem+json"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture
def container() -> Container:
    return build_container(Settings(queue_backend=QueueBackend.MEMORY))


@pytest.fixture
def document(container: Container) -> Iterator[dict[str, Any]]:
    with TestClient(create_app(container)) as client:
        response = client.get("/schema/openapi.json")
        assert response.status_code == 200
        yield response.json()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def resolve(document: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/components/schemas/"), ref
    schema: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


def test_every_endpoint_is_documented_with_an_operation_id_and_tags(
    document: dict[str, Any],
) -> None:
    found = {(path, method): op for path, method, op in operations(document)}

    assert set(found) == {
        ("/jobs", "post"),
        ("/jobs", "get"),
        ("/jobs/batch", "post"),
        ("/jobs/{job_id}", "get"),
        ("/jobs/{job_id}/cancel", "post"),
        ("/jobs/{job_id}/retry", "post"),
        ("/queues", "get"),
        ("/queues/{name}", "get"),
        ("/queues/{name}/pause", "post"),
        ("/queues/{name}/resume", "post"),
        ("/schedules", "post"),
        ("/schedules", "get"),
        ("/schedules/{name}", "get"),
        ("/schedules/{name}", "delete"),
        ("/schedules/{name}/pause", "post"),
        ("/schedules/{name}/resume", "post"),
        ("/job-types", "get"),
        ("/health/live", "get"),
        ("/health/ready", "get"),
    }
    ids = [op["operationId"] for op in found.values()]
    assert len(set(ids)) == len(ids)
    assert all(op["tags"] for op in found.values())
    assert found[("/jobs", "post")]["operationId"] == "submitJob"


def test_submit_job_documents_every_answer_with_a_problem_schema(
    document: dict[str, Any],
) -> None:
    responses = document["paths"]["/jobs"]["post"]["responses"]

    assert set(responses) >= {"202", "400", "413", "415", "422", "503"}
    assert responses["202"]["headers"]["Location"]["schema"]["type"] == "string"
    assert responses["202"]["headers"]["Location"]["required"] is True
    accepted = responses["202"]["content"]["application/json"]["schema"]["$ref"]
    assert set(resolve(document, accepted)["properties"]) >= {"id", "status", "progress"}
    for status in ("400", "413", "415", "422", "503"):
        schema = responses[status]["content"][PROBLEM]["schema"]
        assert set(resolve(document, schema["$ref"])["required"]) == {
            "type",
            "title",
            "status",
            "detail",
        }
    assert responses["503"]["headers"]["Retry-After"]["required"] is True


def test_every_503_documents_retry_after(document: dict[str, Any]) -> None:
    unavailable = [
        (path, op["responses"]["503"])
        for path, _, op in operations(document)
        if "503" in op["responses"]
    ]

    assert {path for path, _ in unavailable} == {
        "/jobs",
        "/jobs/batch",
        "/jobs/{job_id}",
        "/jobs/{job_id}/cancel",
        "/jobs/{job_id}/retry",
        "/queues",
        "/queues/{name}",
        "/queues/{name}/pause",
        "/queues/{name}/resume",
        "/schedules",
        "/schedules/{name}",
        "/schedules/{name}/pause",
        "/schedules/{name}/resume",
        "/health/ready",
    }
    assert all("Retry-After" in response["headers"] for _, response in unavailable)


def test_every_error_answer_is_a_documented_problem(document: dict[str, Any]) -> None:
    for path, method, op in operations(document):
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            assert set(response["content"]) == {PROBLEM}, (path, method, status)
            ref = response["content"][PROBLEM]["schema"]["$ref"]
            assert ref == "#/components/schemas/Problem", (path, method, status)
            assert response["description"]


def test_over_limit_answers_are_documented_with_retry_after(document: dict[str, Any]) -> None:
    limited = {
        path: op["responses"]["429"]
        for path, _, op in operations(document)
        if "429" in op["responses"]
    }

    assert set(limited) == {"/jobs", "/jobs/batch", "/queues/{name}/pause"}
    assert all(r["headers"]["Retry-After"]["required"] for r in limited.values())


def test_what_a_backend_may_lack_is_documented_as_501(document: dict[str, Any]) -> None:
    unsupported = {
        (path, method) for path, method, op in operations(document) if "501" in op["responses"]
    }

    assert unsupported == {
        ("/jobs", "post"),
        ("/jobs/batch", "post"),
        ("/jobs/{job_id}/cancel", "post"),
        ("/queues", "get"),
        ("/queues/{name}", "get"),
        ("/queues/{name}/pause", "post"),
        ("/queues/{name}/resume", "post"),
    }


def test_submit_job_documents_its_idempotency_headers(document: dict[str, Any]) -> None:
    operation = document["paths"]["/jobs"]["post"]
    [header] = [p for p in operation["parameters"] if p["in"] == "header"]
    accepted = operation["responses"]["202"]["headers"]

    assert header["name"] == "Idempotency-Key"
    assert header["required"] is False
    assert (header["schema"]["type"], header["schema"]["pattern"]) == ("string", "^[!-~]{1,200}$")
    assert accepted["Idempotent-Replayed"]["schema"] == {"type": "string", "enum": ["true"]}
    assert "Idempotent-Replayed" in operation["description"]
    assert set(operation["responses"]) >= {"202", "400", "413", "415", "422", "429", "501", "503"}


def test_the_batch_body_is_an_array_of_the_union_with_item_keys(
    document: dict[str, Any], container: Container
) -> None:
    operation = document["paths"]["/jobs/batch"]["post"]
    body = resolve(
        document, operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    )
    jobs = body["properties"]["jobs"]
    union = resolve(document, jobs["items"]["$ref"])
    accepted = operation["responses"]["202"]["content"]["application/json"]["schema"]["$ref"]
    entry = resolve(document, resolve(document, accepted)["properties"]["jobs"]["items"]["$ref"])

    assert (jobs["minItems"], jobs["maxItems"]) == (1, 1000)
    assert body["required"] == ["jobs"]
    assert set(union["discriminator"]["mapping"]) == set(container.registry())
    for ref in union["discriminator"]["mapping"].values():
        key = resolve(document, ref)["properties"]["idempotency_key"]
        assert key["pattern"] == "^[!-~]{1,200}$"
    assert set(entry["properties"]) == {"id", "status", "created", "replayed_by", "location"}
    assert set(operation["responses"]) >= {"202", "400", "413", "415", "422", "429", "503"}


def test_every_variant_documents_the_scheduling_and_placement_options(
    document: dict[str, Any], container: Container
) -> None:
    schemas = document["components"]["schemas"]
    for union in ("JobSubmission", "BatchItem"):
        for name, ref in schemas[union]["discriminator"]["mapping"].items():
            variant = resolve(document, ref)
            options = variant["properties"]
            job_type = container.registry()[name]
            assert options["queue"]["default"] == job_type.queue
            assert (options["priority"]["minimum"], options["priority"]["maximum"]) == (-100, 100)
            assert options["delay"]["minimum"] == 0
            assert options["run_at"]["format"] == "date-time"
            deadline = options["deadline"]["oneOf"]
            assert {d["type"] for d in deadline} == {"string", "number", "null"}
            assert variant["not"] == {"required": ["delay", "run_at"]}
            assert ("idempotency_key" in options) is (union == "BatchItem")


def test_reading_a_job_documents_wait_and_the_explained_view(document: dict[str, Any]) -> None:
    operation = document["paths"]["/jobs/{job_id}"]["get"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    view = resolve(
        document, operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    )

    assert parameters["wait"]["in"] == "query"
    assert (parameters["wait"]["schema"]["type"], parameters["wait"]["schema"]["minimum"]) == (
        "number",
        0,
    )
    assert parameters["job_id"]["schema"]["pattern"] == "^[0-9a-f]{32}$"
    assert set(view["properties"]) >= {
        "run_at",
        "deadline",
        "retry_at",
        "cancel_requested_at",
        "heartbeat_at",
        "waiting_reason",
        "timeline",
    }
    assert set(operation["responses"]) == {"200", "400", "404", "422", "503"}


def test_every_202_that_sends_location_documents_it(document: dict[str, Any]) -> None:
    for path in ("/jobs", "/jobs/{job_id}/retry"):
        location = document["paths"][path]["post"]["responses"]["202"]["headers"]["Location"]
        assert (location["required"], location["schema"]["format"]) == (True, "uri-reference")


def test_cancel_documents_both_of_its_successes(document: dict[str, Any]) -> None:
    responses = document["paths"]["/jobs/{job_id}/cancel"]["post"]["responses"]

    assert set(responses) == {"200", "202", "400", "403", "404", "409", "415", "501", "503"}
    for status in ("200", "202"):
        ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/JobView"


def test_queue_endpoints_document_the_queue_view(document: dict[str, Any]) -> None:
    for path in ("/queues/{name}", "/queues/{name}/pause", "/queues/{name}/resume"):
        [operation] = document["paths"][path].values()
        ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        queue = resolve(document, ref)
        assert set(queue["required"]) == {
            "name",
            "counts",
            "oldest_queued_age",
            "paused",
            "workers",
            "rate_in",
            "rate_out",
            "drain_rate",
        }
        assert "404" in operation["responses"]
        [name] = operation["parameters"]
        assert name["schema"]["pattern"] == NAME_PATTERN


def test_the_submission_body_is_a_union_discriminated_on_type(
    document: dict[str, Any], container: Container
) -> None:
    body = document["paths"]["/jobs"]["post"]["requestBody"]
    union = resolve(document, body["content"]["application/json"]["schema"]["$ref"])
    registry = container.registry()

    assert body["required"] is True
    assert union["discriminator"]["propertyName"] == "type"
    mapping = union["discriminator"]["mapping"]
    assert set(mapping) == set(registry)
    assert sorted(v["$ref"] for v in union["oneOf"]) == sorted(mapping.values())
    for name, job_type in registry.items():
        variant = resolve(document, mapping[name])
        assert variant["properties"]["type"] == {"type": "string", "const": name}
        assert variant["properties"]["payload"] == job_type.schema.json_schema()
        assert variant["properties"]["max_attempts"]["maximum"] == (
            job_type.retry.max_attempts_limit
        )
        assert variant["properties"]["timeout"]["maximum"] == job_type.timeout_limit
        assert set(variant["required"]) == {"type", "payload"}
        assert variant["additionalProperties"] is False


async def _noop(payload: JSONObject, context: JobContext) -> JSONValue:
    return None


def test_a_new_job_type_appears_in_the_document_with_no_api_change(
    container: Container,
) -> None:
    thumbnail = JobType(
        name="make-thumbnail",
        description="Shrink an image.",
        schema=PayloadSchema(
            (Field(name="width", kind=Kind.INTEGER, required=True, minimum=1, description="px"),)
        ),
        handler=_noop,
    )
    registry = JobTypeRegistry([*default_registry(RecordingEmailSender()).values(), thumbnail])
    container.registry.override(providers.Object(registry))

    with TestClient(create_app(container)) as client:
        document = client.get("/schema/openapi.json").json()
        accepted = client.post("/jobs", json={"type": "make-thumbnail", "payload": {"width": 64}})

    mapping = document["components"]["schemas"]["JobSubmission"]["discriminator"]["mapping"]
    assert mapping["make-thumbnail"] == "#/components/schemas/MakeThumbnailJobSubmission"
    variant = resolve(document, mapping["make-thumbnail"])
    assert variant["properties"]["payload"] == thumbnail.schema.json_schema()
    assert accepted.status_code == 202


def test_the_served_document_is_the_apps_document(container: Container) -> None:
    app: Litestar = create_app(container)

    with TestClient(app) as client:
        served = client.get("/schema/openapi.json").json()

    assert served == app.openapi_schema.to_schema()
    assert served["openapi"].startswith("3.1")


DUMMY_PAYLOADS = [
    {"mode": "succeed"},
    {"mode": "succeed", "result": [1, {"a": None}]},
    {"mode": "fatal", "result": None},
    {"mode": "fail", "times": 2},
    {"mode": "fail", "times": None, "how": None},
    {"mode": "sleep", "seconds": 0.5},
    {"mode": "cpu", "seconds": 1},
    {"mode": "crash", "how": "abort"},
    {"mode": "memory", "mb": 8},
    {"mode": "succeed", "times": 2},
    {"mode": "sleep", "how": "exit"},
    {"mode": "crash", "how": "melt"},
    {"mode": "crash", "mb": 1},
    {"mode": "fail", "result": 1},
    {"mode": "memory", "mb": 0},
    {"mode": "nap"},
    {"mode": None},
    {},
]


@pytest.mark.parametrize("payload", DUMMY_PAYLOADS, ids=[json.dumps(p) for p in DUMMY_PAYLOADS])
@pytest.mark.parametrize("faults", [True, False], ids=["dummy faults on", "dummy faults off"])
def test_the_documented_payload_schema_accepts_exactly_what_the_api_accepts(
    faults: bool, payload: dict[str, Any]
) -> None:
    container = build_container(Settings(queue_backend=QueueBackend.MEMORY, dummy_faults=faults))
    with TestClient(create_app(container)) as client:
        document = client.get("/schema/openapi.json").json()
        answer = client.post("/jobs", json={"type": "dummy", "payload": payload})
    mapping = document["components"]["schemas"]["JobSubmission"]["discriminator"]["mapping"]
    documented = resolve(document, mapping["dummy"])["properties"]["payload"]

    assert jsonschema_rs.Draft202012Validator(documented).is_valid(payload) is (
        answer.status_code == 202
    ), answer.text


def test_the_document_says_which_setting_the_dummy_fault_modes_need(
    document: dict[str, Any],
) -> None:
    mapping = document["components"]["schemas"]["JobSubmission"]["discriminator"]["mapping"]
    mode = resolve(document, mapping["dummy"])["properties"]["payload"]["properties"]["mode"]

    assert mode["enum"] == ["succeed", "fail", "fatal", "sleep"]
    assert "CONVEYOR_DUMMY_FAULTS=1" in mode["description"]


def test_optional_payload_fields_are_documented_as_nullable(document: dict[str, Any]) -> None:
    mapping = document["components"]["schemas"]["JobSubmission"]["discriminator"]["mapping"]
    report = resolve(document, mapping["report"])["properties"]["payload"]["properties"]

    assert report["seconds"]["type"] == ["number", "null"]
    assert report["name"]["type"] == "string"
