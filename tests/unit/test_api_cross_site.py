"""Cross-site writes: a page on another site cannot make a browser change anything, and clients
that are not browsers work as before. Through Litestar's test client, on the memory backend."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from domain.ports import Backend
from entrypoints.container import Container, build_container
from entrypoints.settings import QueueBackend, Settings
from tests.unit.backends import stored_jobs

PROBLEM = "application/problem+json"
JOB = {"type": "dummy", "payload": {"mode": "succeed"}}
FORM = {"content-type": "application/x-www-form-urlencoded"}
FOREIGN = {"origin": "https://evil.example"}


@pytest.fixture
def container() -> Container:
    return build_container(
        Settings(
            queue_backend=QueueBackend.MEMORY,
            allowed_origins=frozenset({"https://jobs.example.com"}),
        )
    )


def paused(client: TestClient[Litestar], queue: str = "default") -> bool:
    answer: bool = client.get(f"/queues/{queue}").json()["paused"]
    return answer


def job_id(client: TestClient[Litestar], **extra: Any) -> str:
    response = client.post("/jobs", json={**JOB, **extra})
    assert response.status_code == 202, response.text
    answer: str = response.json()["id"]
    return answer


def test_a_cross_site_form_that_pauses_a_queue_is_refused_and_pauses_nothing(
    client: TestClient[Litestar],
) -> None:
    response = client.post("/queues/default/pause", content=b"x=1", headers={**FORM, **FOREIGN})

    assert response.status_code == 403
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["type"] == "urn:conveyor:problem:origin-not-allowed"
    assert not paused(client)


def test_every_state_changing_endpoint_refuses_a_foreign_origin_before_acting(
    client: TestClient[Litestar], container: Container
) -> None:
    waiting = job_id(client, delay=600)
    backend: Backend = container.backend()
    before = stored_jobs(backend)
    for path, body in [
        ("/jobs", JOB),
        ("/jobs/batch", {"jobs": [JOB]}),
        (f"/jobs/{waiting}/cancel", None),
        (f"/jobs/{waiting}/retry", None),
        ("/queues/default/pause", None),
        ("/queues/other/resume", None),
    ]:
        response = client.post(path, json=body, headers=FOREIGN)
        assert response.status_code == 403, (path, response.text)
        assert response.headers["content-type"].startswith(PROBLEM)
    assert stored_jobs(backend) == before
    assert client.get(f"/jobs/{waiting}").json()["status"] == "scheduled"
    assert not paused(client)


@pytest.mark.parametrize(
    "origin", ["null", "https://jobs.example.com.evil.example", "http://jobs.example.com", "?"]
)
def test_an_origin_is_allowed_only_if_listed_exactly(
    client: TestClient[Litestar], origin: str
) -> None:
    assert client.post("/queues/default/pause", headers={"origin": origin}).status_code == 403
    assert not paused(client)


def test_a_listed_origin_may_change_state_with_json(client: TestClient[Litestar]) -> None:
    listed = {"origin": "https://JOBS.example.com:443"}
    assert client.post("/jobs", json=JOB, headers=listed).status_code == 202
    assert client.post("/queues/default/pause", headers=listed).status_code == 200
    assert paused(client)


def test_a_listed_origin_still_cannot_send_a_form(client: TestClient[Litestar]) -> None:
    listed = {"origin": "https://jobs.example.com"}
    response = client.post("/queues/default/pause", content=b"x=1", headers={**FORM, **listed})
    assert response.status_code == 415
    assert not paused(client)


def test_one_foreign_origin_among_several_is_refused(client: TestClient[Litestar]) -> None:
    headers = [("origin", "https://jobs.example.com"), ("origin", "https://evil.example")]
    response = client.post("/queues/default/pause", headers=headers)
    assert response.status_code == 403
    assert not paused(client)


def test_json_requests_without_an_origin_work_as_before(client: TestClient[Litestar]) -> None:
    waiting = job_id(client, delay=600)
    assert client.post("/jobs/batch", json={"jobs": [JOB]}).status_code == 202
    assert client.post(f"/jobs/{waiting}/cancel").status_code == 200
    assert client.post(f"/jobs/{waiting}/retry").status_code == 202
    assert client.post("/queues/default/pause").status_code == 200
    json_body = {"content-type": "application/json"}
    assert (
        client.post("/queues/default/resume", content=b"{}", headers=json_body).status_code == 200
    )
    assert not paused(client)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (FORM, b"x=1"),
        (FORM, b""),  # a form without fields
        ({"content-type": "multipart/form-data; boundary=b"}, b"--b--\r\n"),
        ({"content-type": "text/plain"}, b'{"paused": true}'),
        ({}, b"x=1"),  # a body without a media type
    ],
)
def test_an_endpoint_without_a_body_refuses_one_that_is_not_json(
    client: TestClient[Litestar], headers: dict[str, str], body: bytes
) -> None:
    waiting = job_id(client, delay=600)
    for path in ("/queues/default/pause", f"/jobs/{waiting}/cancel"):
        response = client.post(path, content=body, headers=headers)
        assert response.status_code == 415, (path, response.text)
        assert response.headers["content-type"].startswith(PROBLEM)
    assert not paused(client)
    assert client.get(f"/jobs/{waiting}").json()["status"] == "scheduled"


def test_reading_is_not_refused_whatever_the_origin(client: TestClient[Litestar]) -> None:
    assert client.get("/jobs", headers=FOREIGN).status_code == 200
    assert client.get("/queues/default", headers=FOREIGN).status_code == 200


def test_the_document_names_the_403_and_415_of_every_state_changing_endpoint(
    client: TestClient[Litestar],
) -> None:
    document = client.get("/schema/openapi.json").json()
    changing = [
        (method, path, item[method])
        for path, item in document["paths"].items()
        for method in ("post", "put", "patch", "delete")
        if method in item
    ]
    # Jobs: submit, batch, cancel, requeue; queues: pause, resume; schedules: put, delete,
    # pause, resume.
    assert len(changing) == 10, [(method, path) for method, path, _ in changing]
    for method, path, operation in changing:
        assert {"403", "415"} <= set(operation["responses"]), (method, path)
