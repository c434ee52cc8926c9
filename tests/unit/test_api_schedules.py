"""`/schedules` through Litestar's test client, on the memory backend; and the schedules of
the settings, declared at start-up or refused."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dependency_injector import providers
from litestar import Litestar
from litestar.testing import TestClient

from entrypoints.api.app import create_app
from entrypoints.container import Container, build_container
from entrypoints.scheduling import check_schedules
from entrypoints.setting_values import parse_schedules
from entrypoints.settings import QueueBackend, Settings, SettingsError
from tests.fakes import FakeClock

PROBLEM = "application/problem+json"
EMAIL = {"to": "ops@example.com", "subject": "Nightly", "body": "done"}
NIGHTLY = {
    "name": "nightly",
    "cron": "0 2 * * *",
    "timezone": "Europe/Paris",
    "type": "email",
    "payload": EMAIL,
    "options": {"queue": "mail", "max_attempts": 5},
    "misfire": "skip",
}


def settings(**changes: Any) -> Settings:
    fields: dict[str, Any] = {"queue_backend": QueueBackend.MEMORY, "scheduler": False}
    return Settings(**{**fields, **changes})


@pytest.fixture
def client() -> Iterator[TestClient[Litestar]]:
    with TestClient(create_app(build_container(settings()))) as test_client:
        yield test_client


def test_a_schedule_is_created_then_read_listed_and_replaced(
    client: TestClient[Litestar],
) -> None:
    created = client.post("/schedules", json=NIGHTLY)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/schedules/nightly"
    view = created.json()
    assert (view["cron"], view["timezone"], view["misfire"], view["paused"]) == (
        "0 2 * * *",
        "Europe/Paris",
        "skip",
        False,
    )
    assert view["next_tick"] is not None
    assert view["job_key_prefix"] == "schedule:nightly:"
    assert "payload" not in view
    assert client.get("/schedules/nightly").json() == view
    assert [s["name"] for s in client.get("/schedules").json()["schedules"]] == ["nightly"]
    again = client.post("/schedules", json=NIGHTLY)
    assert (again.status_code, again.json()["next_tick"]) == (200, view["next_tick"])
    changed = client.post("/schedules", json={**NIGHTLY, "cron": "0 3 * * *"})
    assert (changed.status_code, changed.json()["cron"]) == (200, "0 3 * * *")


def test_pause_resume_and_delete(client: TestClient[Litestar]) -> None:
    client.post("/schedules", json=NIGHTLY)
    paused = client.post("/schedules/nightly/pause")
    assert (paused.status_code, paused.json()["paused"], paused.json()["next_tick"]) == (
        200,
        True,
        None,
    )
    resumed = client.post("/schedules/nightly/resume")
    assert (resumed.json()["paused"], resumed.json()["next_tick"] is not None) == (False, True)
    assert client.delete("/schedules/nightly").status_code == 204
    assert client.get("/schedules/nightly").status_code == 404


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/schedules/nope", "get"),
        ("/schedules/nope", "delete"),
        ("/schedules/nope/pause", "post"),
        ("/schedules/nope/resume", "post"),
        ("/schedules/Not%20A%20Name", "get"),
    ],
)
def test_an_unknown_schedule_is_a_404_problem(
    client: TestClient[Litestar], path: str, method: str
) -> None:
    response = getattr(client, method)(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == "urn:conveyor:problem:schedule-not-found"


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"cron": None, "timezone": None, "every": 0}, "every"),
        ({"cron": None, "timezone": None, "every": -1}, "every"),
        ({"type": "nope"}, "type"),
        ({"payload": {"to": "x", "subject": "s", "body": "b"}}, "payload.to"),
        ({"options": {"queue": "NO"}}, "options.queue"),
        ({"misfire": "maybe"}, "misfire"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_bad_schedule_is_a_422_with_the_fields_path(
    client: TestClient[Litestar], changes: dict[str, Any], path: str
) -> None:
    response = client.post("/schedules", json={**NIGHTLY, **changes})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["type"] == "urn:conveyor:problem:invalid-schedule"
    assert path in {error["path"] for error in problem["errors"]}
    assert client.get("/schedules").json()["schedules"] == []


def test_a_body_that_is_not_an_object_is_refused(client: TestClient[Litestar]) -> None:
    assert client.post("/schedules", json=[NIGHTLY]).status_code == 422
    assert (
        client.post(
            "/schedules", content=b"{", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )


def test_the_schedules_of_the_settings_are_declared_at_start_up() -> None:
    container = build_container(settings(scheduler=True, schedules=_parsed([NIGHTLY])))
    with TestClient(create_app(container)) as client:
        deadline = time.monotonic() + 5
        while not (listed := client.get("/schedules").json()["schedules"]):
            assert time.monotonic() < deadline
            time.sleep(0.01)  # declared by the scheduler's task as it starts
        assert [view["name"] for view in listed] == ["nightly"]


def test_a_bad_schedule_in_the_settings_stops_start_up_naming_the_variable() -> None:
    container: Container = build_container(
        settings(schedules=_parsed([{**NIGHTLY, "cron": "0 2 * *", "timezone": "Nowhere/X"}]))
    )
    with pytest.raises(SettingsError) as caught:
        check_schedules(container)
    message = str(caught.value)
    assert "CONVEYOR_SCHEDULES" in message
    assert "[0].cron" in message
    assert "[0].timezone" in message


@pytest.mark.parametrize(
    "raw",
    [
        '{"name": "x"}',
        '[{"name": "x"}]',
        '[{"name": "x", "type": "email", "payload": {}, "y": 1}]',
        "[",
        "[1]",
    ],
)
def test_a_malformed_schedules_setting_is_refused(raw: str) -> None:
    with pytest.raises(SettingsError, match="CONVEYOR_SCHEDULES"):
        Settings.from_env({"CONVEYOR_SCHEDULES": raw})


def test_a_job_from_a_schedule_says_where_it_came_from() -> None:
    container = build_container(settings())
    clock = FakeClock()
    container.clock.override(providers.Object(clock))
    with TestClient(create_app(container)) as client:
        every = {**NIGHTLY, "cron": None, "timezone": None, "every": 60}
        assert client.post("/schedules", json=every).status_code == 201
        clock.advance(60)
        with client.portal() as portal:  # the app's event loop
            portal.call(container.scheduler().run_pass)
        last = client.get("/schedules/nightly").json()["last_job_id"]
        job = client.get(f"/jobs/{last}").json()
        assert job["idempotency_key"] == "schedule:nightly:2026-01-01T00:01:00.000Z"
        assert job["queue"] == "mail"


def _parsed(items: list[dict[str, Any]]) -> Any:
    return parse_schedules(json.dumps(items))
