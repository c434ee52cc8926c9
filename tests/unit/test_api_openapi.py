"""The OpenAPI document at /schema: every operation named and tagged, and POST /jobs shown as
a union discriminated on `type` whose payloads are the domain's own schemas."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dependency_injector import providers
from litestar import Litestar
from litestar.testing import TestClient

from domain.job_types import JobContext, JobType, JobTypeRegistry
from domain.job_types.registry import default_registry
from domain.jobs import JSONObject, JSONValue
from domain.schema import Field, Kind, PayloadSchema
from entrypoints.api.app import create_app
from entrypoints.container import Container, build_container
from entrypoints.settings import Backend, Settings
from tests.fakes import RecordingEmailSender

PROBLEM = "application/problem+json"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture
def container() -> Container:
    return build_container(Settings(queue_backend=Backend.MEMORY))


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
        ("/jobs/{job_id}", "get"),
        ("/jobs/{job_id}/retry", "post"),
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
        "/jobs/{job_id}",
        "/jobs/{job_id}/retry",
        "/health/ready",
    }
    assert all("Retry-After" in response["headers"] for _, response in unavailable)


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
