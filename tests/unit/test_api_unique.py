"""Unique jobs through the HTTP API, on the in-memory backend: `unique_key` and `unique_for`
on `POST /jobs` and `/jobs/batch`, what a replay answers, and the 422s and the 501."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from dependency_injector import providers
from litestar import Litestar
from litestar.testing import TestClient

from adapters.rq.submitter import RqSubmitter
from domain.ports import Backend
from domain.settlement import Ending
from entrypoints.api.app import create_app
from entrypoints.container import Container
from tests.unit.backends import NoDeadlines, claim, settle, stored_jobs

PROBLEM = "application/problem+json"
REPORT = {"type": "report", "payload": {"name": "q3", "rows": 500}}
UNIQUE = {**REPORT, "unique_key": "rebuild report q3"}


def errors_of(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    return {e["path"]: e["message"] for e in response.json()["errors"]}


def test_a_second_submit_under_a_live_key_answers_the_first_job_until_it_succeeds(
    client: TestClient[Litestar], backend: Backend
) -> None:
    first = client.post("/jobs", json=UNIQUE)
    second = client.post("/jobs", json={**UNIQUE, "payload": {"name": "other", "rows": 1}})

    assert first.status_code == second.status_code == 202
    assert "unique-replayed" not in first.headers
    assert (first.json()["replayed"], first.json()["unique_key"]) == (False, "rebuild report q3")
    assert second.headers["unique-replayed"] == "true"
    assert "idempotent-replayed" not in second.headers
    assert second.json()["replayed"] is True
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["location"] == f"/jobs/{first.json()['id']}"
    assert len(stored_jobs(backend)) == 1
    assert client.get(f"/jobs/{first.json()['id']}").json()["unique_key"] == "rebuild report q3"

    (lease,) = claim(backend)
    settle(backend, lease, Ending.succeeded({"rows": 500}))
    third = client.post("/jobs", json=UNIQUE)

    assert third.status_code == 202
    assert "unique-replayed" not in third.headers
    assert third.json()["id"] != first.json()["id"]
    assert len(stored_jobs(backend)) == 2


def test_unique_for_keys_on_the_type_and_the_named_payload_values(
    client: TestClient[Litestar],
) -> None:
    def post(name: str, rows: int) -> Any:
        body = {"type": "report", "payload": {"name": name, "rows": rows}, "unique_for": ["name"]}
        return client.post("/jobs", json=body)

    first, same_name, other_name = post("q3", 500), post("q3", 7), post("q4", 500)

    assert same_name.json()["id"] == first.json()["id"]
    assert same_name.headers["unique-replayed"] == "true"
    assert other_name.json()["id"] != first.json()["id"]
    key = first.json()["unique_key"]
    assert key.startswith("report:")
    assert len(key) == len("report:") + 64


@pytest.mark.parametrize(
    ("options", "path", "message"),
    [
        ({"unique_key": ""}, "unique_key", "expected 1-200 characters"),
        ({"unique_key": "k" * 201}, "unique_key", "expected 1-200 characters"),
        ({"unique_key": "a\nb"}, "unique_key", "no control characters"),
        ({"unique_key": 7}, "unique_key", "expected 1-200 characters"),
        ({"unique_for": []}, "unique_for", "expected a list of 1 to 16"),
        ({"unique_for": "name"}, "unique_for", "expected a list of 1 to 16"),
        ({"unique_for": ["name", "owner"]}, "unique_for[1]", "have no field 'owner'"),
        ({"unique_for": ["name", "name"]}, "unique_for[1]", "named twice"),
        ({"unique_for": ["name", 3]}, "unique_for[1]", "expected a payload field name"),
        ({"unique_key": "k", "unique_for": ["name"]}, "unique_for", "not both"),
    ],
)
def test_a_bad_unique_option_is_a_422_naming_its_path(
    client: TestClient[Litestar], options: dict[str, object], path: str, message: str
) -> None:
    single = client.post("/jobs", json={**REPORT, **options})
    batch = client.post("/jobs/batch", json={"jobs": [REPORT, {**REPORT, **options}]})

    assert message in errors_of(single)[path]
    assert message in errors_of(batch)[f"jobs[1].{path}"]


def test_unique_for_a_field_the_payload_does_not_give_is_a_422(
    client: TestClient[Litestar],
) -> None:
    body = {"type": "dummy", "payload": {"mode": "succeed"}, "unique_for": ["mode", "result"]}
    assert "does not give 'result'" in errors_of(client.post("/jobs", json=body))["unique_for[1]"]


def test_a_batch_answers_each_item_under_a_held_key_with_the_holder(
    client: TestClient[Litestar], backend: Backend
) -> None:
    held = client.post("/jobs", json=UNIQUE).json()["id"]
    other = {**REPORT, "unique_key": "another"}
    response = client.post("/jobs/batch", json={"jobs": [UNIQUE, other, other, REPORT]})

    assert response.status_code == 202
    entries = response.json()["jobs"]
    assert [(e["created"], e["replayed_by"]) for e in entries] == [
        (False, "unique_key"),
        (True, None),
        (False, "unique_key"),
        (True, None),
    ]
    assert entries[0]["id"] == held
    assert entries[2]["id"] == entries[1]["id"]
    assert len(stored_jobs(backend)) == 3


def test_an_idempotency_key_answered_with_the_holder_replays_that_answer(
    client: TestClient[Litestar],
) -> None:
    first = client.post("/jobs", json=UNIQUE, headers={"Idempotency-Key": "req-1"})
    second = client.post("/jobs", json=UNIQUE, headers={"Idempotency-Key": "req-2"})
    repeat = client.post("/jobs", json=UNIQUE, headers={"Idempotency-Key": "req-2"})

    assert second.headers["unique-replayed"] == "true"
    assert repeat.headers["idempotent-replayed"] == "true"
    assert "unique-replayed" not in repeat.headers
    assert first.json()["id"] == second.json()["id"] == repeat.json()["id"]
    assert repeat.json()["replayed"] is True


def test_a_requeue_while_another_job_holds_the_key_is_a_409(
    client: TestClient[Litestar],
) -> None:
    first = client.post("/jobs", json=UNIQUE).json()["id"]
    assert client.post(f"/jobs/{first}/cancel").status_code == 200
    second = client.post("/jobs", json=UNIQUE).json()["id"]

    refused = client.post(f"/jobs/{first}/retry")

    assert refused.status_code == 409
    assert refused.json()["type"].endswith("unique-key-held")
    assert second in refused.json()["detail"]
    assert client.post(f"/jobs/{second}/cancel").status_code == 200
    assert client.post(f"/jobs/{first}/retry").status_code == 202
    assert client.post("/jobs", json=UNIQUE).headers["unique-replayed"] == "true"


def test_a_unique_key_on_a_backend_that_cannot_hold_one_is_a_501_and_nothing_is_stored(
    container: Container,
) -> None:
    backend: Backend = container.backend()
    limited = attrs.evolve(backend, submitter=NoDeadlines(backend.submitter))
    container.backend.override(providers.Object(limited))
    with TestClient(create_app(container)) as client:
        refused = client.post("/jobs", json=UNIQUE)
        batch = client.post("/jobs/batch", json={"jobs": [REPORT, UNIQUE]})

    assert refused.status_code == batch.status_code == 501
    assert refused.json()["capability"] == batch.json()["capability"] == "unique_keys"
    assert stored_jobs(backend) == []


def test_the_rq_submitter_does_not_hold_unique_keys() -> None:
    assert RqSubmitter.traits.unique_keys is False
