"""The job lifecycle over HTTP, on the in-memory backend: options, idempotency keys, batches,
explained state and long polling, cancellation, queues, admission limits and backends that
lack a role."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import attrs
import pytest
from dependency_injector import providers
from litestar import Litestar
from litestar.testing import TestClient

from domain.jobs import JobError, JobStatus
from domain.ports import AdmissionPolicy, Backend, QueueLimits
from domain.settlement import Ending
from entrypoints.api.app import create_app
from entrypoints.container import Container, build_container
from entrypoints.settings import QueueBackend, Settings
from tests.unit.backends import NoDeadlines, claim, leases_of, settle, stored_jobs

PROBLEM: Final = "application/problem+json"
EMAIL: Final = {"to": "user@example.com", "subject": "Hello", "body": "Hi there"}
SUCCEED: Final = {"type": "dummy", "payload": {"mode": "succeed"}}


def container_for(**settings: Any) -> Container:
    return build_container(Settings(queue_backend=QueueBackend.MEMORY, **settings))


@pytest.fixture
def container() -> Container:
    return container_for(wait_max_seconds=2.0)


def post_job(client: TestClient[Litestar], **fields: Any) -> dict[str, Any]:
    response = client.post("/jobs", json={**SUCCEED, **fields})
    assert response.status_code == 202, response.text
    view: dict[str, Any] = response.json()
    return view


def stored(backend: Backend) -> int:
    return len(stored_jobs(backend))


def problem_of(response: Any, status: int, slug: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["detail"]
    if slug is not None:
        assert problem["type"] == f"urn:conveyor:problem:{slug}"
    return problem


def paths_of(problem: dict[str, Any]) -> set[str]:
    return {error["path"] for error in problem.get("errors", [])}


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


# -- submission options ---------------------------------------------------------------------


def test_queue_priority_and_deadline_are_taken_from_the_submission(
    client: TestClient[Litestar],
) -> None:
    before = datetime.now(UTC)

    view = post_job(client, queue="reports", priority=-7, deadline=60)

    assert (view["queue"], view["priority"], view["status"]) == ("reports", -7, "queued")
    deadline = parse(view["deadline"])
    assert before + timedelta(seconds=59) < deadline < before + timedelta(seconds=62)
    assert client.get(f"/jobs/{view['id']}").json()["deadline"] == view["deadline"]


def test_a_delayed_job_is_scheduled_and_says_until_when(client: TestClient[Litestar]) -> None:
    view = post_job(client, delay=600)

    read = client.get(f"/jobs/{view['id']}").json()

    assert view["status"] == read["status"] == "scheduled"
    assert read["waiting_reason"]["kind"] == "scheduled"
    assert read["waiting_reason"]["until"] == read["run_at"] == view["run_at"]
    assert [event["kind"] for event in read["timeline"]] == ["submitted", "scheduled"]


def test_a_run_at_in_the_future_schedules_and_one_in_the_past_queues(
    client: TestClient[Litestar],
) -> None:
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)

    future = post_job(client, run_at=rfc3339(later))
    past = post_job(client, run_at="2020-01-01T00:00:00Z")

    assert (future["status"], parse(future["run_at"])) == ("scheduled", later)
    assert (past["status"], past["run_at"]) == ("queued", None)


def test_every_bad_option_is_named_in_one_422(
    client: TestClient[Litestar], backend: Backend
) -> None:
    response = client.post(
        "/jobs",
        json={
            **SUCCEED,
            "queue": "Not A Name",
            "priority": 101,
            "delay": 5,
            "run_at": "2030-01-01T00:00:00Z",
            "deadline": "tomorrow",
        },
    )

    problem = problem_of(response, 422, "invalid-job")
    assert paths_of(problem) == {"queue", "priority", "run_at", "deadline"}
    assert stored(backend) == 0


# -- idempotency keys -----------------------------------------------------------------------


def test_a_repeat_under_an_idempotency_key_answers_the_first_job(
    client: TestClient[Litestar], backend: Backend
) -> None:
    headers = {"Idempotency-Key": "order-42/charge"}

    first = client.post("/jobs", json=SUCCEED, headers=headers)
    again = client.post("/jobs", json=SUCCEED, headers=headers)

    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert stored(backend) == 1


def test_another_body_under_a_used_key_is_a_422_conflict_naming_the_key(
    client: TestClient[Litestar], backend: Backend
) -> None:
    headers = {"Idempotency-Key": "order-42"}
    client.post("/jobs", json=SUCCEED, headers=headers)

    response = client.post("/jobs", json={**SUCCEED, "priority": 5}, headers=headers)

    problem = problem_of(response, 422, "idempotency-conflict")
    assert "'order-42'" in problem["detail"]
    assert paths_of(problem) == {"Idempotency-Key"}
    assert stored(backend) == 1


@pytest.mark.parametrize("key", [b"", b"has space", b"x" * 201, "cl\u00e9".encode(), b"tab\there"])
def test_a_malformed_idempotency_key_is_a_422_and_stores_nothing(
    client: TestClient[Litestar], backend: Backend, key: bytes
) -> None:
    response = client.post("/jobs", json=SUCCEED, headers={b"Idempotency-Key": key})

    problem = problem_of(response, 422, "invalid-header")
    assert paths_of(problem) == {"Idempotency-Key"}
    assert stored(backend) == 0


def test_a_key_of_200_printable_characters_is_accepted(client: TestClient[Litestar]) -> None:
    key = ("!~" * 100).encode()

    assert client.post("/jobs", json=SUCCEED, headers={b"Idempotency-Key": key}).status_code == 202


# -- batches --------------------------------------------------------------------------------


def test_a_batch_answers_one_entry_per_job_in_order(
    client: TestClient[Litestar], backend: Backend
) -> None:
    items = [
        {"type": "email", "payload": EMAIL},
        {**SUCCEED, "priority": 9, "queue": "fast"},
        {"type": "report", "payload": {"name": "r", "rows": 3}, "delay": 60},
    ]

    response = client.post("/jobs/batch", json={"jobs": items})

    assert response.status_code == 202, response.text
    entries = response.json()["jobs"]
    fields = {"id", "status", "created", "replayed_by", "location"}
    assert [set(entry) for entry in entries] == [fields] * 3
    assert all(entry["replayed_by"] is None for entry in entries)
    assert [entry["status"] for entry in entries] == ["queued", "queued", "scheduled"]
    assert all(entry["created"] for entry in entries)
    views = [client.get(entry["location"]).json() for entry in entries]
    assert [view["type"] for view in views] == ["email", "dummy", "report"]
    assert (views[1]["priority"], views[1]["queue"]) == (9, "fast")
    assert stored(backend) == 3


def test_a_batch_with_bad_items_lists_every_one_by_index_and_stores_none(
    client: TestClient[Litestar], backend: Backend
) -> None:
    items = [
        {**SUCCEED, "colour": "red"},
        {"type": "email", "payload": {**EMAIL, "to": "nobody"}},
        SUCCEED,
        {"type": "os.system", "payload": {}},
        {**SUCCEED, "priority": 1000, "idempotency_key": "has space"},
        "not an object",
    ]

    response = client.post("/jobs/batch", json={"jobs": items})

    problem = problem_of(response, 422, "invalid-job")
    assert paths_of(problem) == {
        "jobs[0].colour",
        "jobs[1].payload.to",
        "jobs[3].type",
        "jobs[4].priority",
        "jobs[4].idempotency_key",
        "jobs[5]",
    }
    assert problem["errors"][0]["path"] == "jobs[0].colour"
    assert stored(backend) == 0


def test_a_batch_of_valid_envelopes_names_the_domains_errors_by_index_too(
    client: TestClient[Litestar], backend: Backend
) -> None:
    items = [SUCCEED, {"type": "email", "payload": {}}, {**SUCCEED, "delay": -1}]

    problem = problem_of(client.post("/jobs/batch", json={"jobs": items}), 422)

    assert paths_of(problem) == {
        "jobs[1].payload.to",
        "jobs[1].payload.subject",
        "jobs[1].payload.body",
        "jobs[2].delay",
    }
    assert stored(backend) == 0


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"jobs": []}, "jobs"),
        ({"jobs": [SUCCEED] * 1001}, "jobs"),
        ({"jobs": SUCCEED}, "jobs"),
        ({}, "jobs"),
        ({"jobs": [SUCCEED], "more": 1}, "more"),
        ([SUCCEED], ""),
    ],
)
def test_a_malformed_batch_is_a_422(
    client: TestClient[Litestar], backend: Backend, body: object, path: str
) -> None:
    problem = problem_of(client.post("/jobs/batch", json=body), 422)

    assert path in paths_of(problem)
    assert stored(backend) == 0


def test_a_batch_item_key_answers_the_first_job_and_a_changed_item_is_a_conflict(
    client: TestClient[Litestar], backend: Backend
) -> None:
    keyed = {**SUCCEED, "idempotency_key": "item-1"}
    first = client.post("/jobs/batch", json={"jobs": [keyed]}).json()["jobs"][0]

    again = client.post("/jobs/batch", json={"jobs": [SUCCEED, keyed]})
    changed = client.post("/jobs/batch", json={"jobs": [SUCCEED, {**keyed, "priority": 3}]})

    assert again.status_code == 202
    replayed = again.json()["jobs"]
    assert [entry["created"] for entry in replayed] == [True, False]
    assert replayed[1]["id"] == first["id"]
    problem = problem_of(changed, 422, "idempotency-conflict")
    assert "jobs[1]" in problem["detail"]
    assert stored(backend) == 2


def test_a_batch_may_be_larger_than_one_job_but_not_than_four_times_the_limit() -> None:
    container = container_for(max_body_bytes=4096)
    item = {"type": "email", "payload": {**EMAIL, "body": "x" * 1000}}
    with TestClient(create_app(container)) as client:
        accepted = client.post("/jobs/batch", json={"jobs": [item] * 10})
        refused = client.post("/jobs/batch", json={"jobs": [item] * 20})
        single = client.post("/jobs", json={"type": "email", "payload": {"body": "x" * 5000}})

    assert accepted.status_code == 202, accepted.text
    assert "16384 bytes" in problem_of(refused, 413, "request-too-large")["detail"]
    assert "4096 bytes" in problem_of(single, 413)["detail"]


# -- reading: explained state and long polling -----------------------------------------------


def test_a_job_explains_why_it_waits(client: TestClient[Litestar], backend: Backend) -> None:
    first = post_job(client)
    second = post_job(client)
    assert backend.monitor is not None
    assert backend.pauser is not None
    asyncio.run(backend.monitor.heartbeat("w1", ["default"], ttl=30))

    reason = client.get(f"/jobs/{second['id']}").json()["waiting_reason"]
    asyncio.run(backend.pauser.pause("default"))
    paused = client.get(f"/jobs/{first['id']}").json()["waiting_reason"]

    assert (reason["kind"], reason["ahead"]) == ("behind_jobs", 1)
    assert "behind 1 jobs" in reason["message"]
    assert paused["kind"] == "queue_paused"


def test_the_timeline_follows_attempts_and_retries(
    client: TestClient[Litestar], backend: Backend
) -> None:
    job_id = post_job(client)["id"]
    [lease] = claim(backend)
    asyncio.run(leases_of(backend).renew([lease], 30))
    active = client.get(f"/jobs/{job_id}").json()
    settle(backend, lease, Ending.failed(JobError(message="boom", type="RuntimeError"), 60))
    failed = client.get(f"/jobs/{job_id}").json()

    assert active["waiting_reason"] is None
    assert active["heartbeat_at"] is not None
    assert [e["kind"] for e in active["timeline"]] == ["submitted", "claimed", "heartbeat"]
    assert active["timeline"][1]["worker"] == "w1"
    assert failed["status"] == "failed"
    assert failed["waiting_reason"]["kind"] == "retry_backoff"
    assert failed["waiting_reason"]["until"] == failed["retry_at"]
    kinds = [e["kind"] for e in failed["timeline"]]
    assert kinds == ["submitted", "claimed", "failed", "retry_scheduled"]
    assert failed["timeline"][2]["detail"] == "RuntimeError: boom"
    assert failed["timeline"][3]["attempt"] == 2


def test_wait_answers_as_soon_as_the_job_finishes(
    client: TestClient[Litestar], backend: Backend
) -> None:
    job_id = post_job(client)["id"]
    [lease] = claim(backend)
    settle(backend, lease, Ending.succeeded({"ok": True}))

    started = time.monotonic()
    view = client.get(f"/jobs/{job_id}", params={"wait": "30"}).json()

    assert (view["status"], view["result"]) == ("succeeded", {"ok": True})
    assert time.monotonic() - started < 1


def test_wait_on_a_job_that_does_not_finish_is_capped_by_the_setting(
    client: TestClient[Litestar],
) -> None:
    job_id = post_job(client)["id"]

    started = time.monotonic()
    response = client.get(f"/jobs/{job_id}", params={"wait": "1e9"})
    waited = time.monotonic() - started

    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    assert 1.9 <= waited < 4  # wait_max_seconds is 2 here


def test_a_short_wait_waits_that_long(client: TestClient[Litestar]) -> None:
    job_id = post_job(client)["id"]

    started = time.monotonic()
    assert client.get(f"/jobs/{job_id}", params={"wait": "0.3"}).status_code == 200

    assert 0.25 <= time.monotonic() - started < 1.5


@pytest.mark.parametrize("wait", ["-1", "abc", "nan", "inf", "1e", "", " 1", "0x10", "\u0663"])
def test_a_bad_wait_is_a_422(client: TestClient[Litestar], wait: str) -> None:
    job_id = post_job(client)["id"]

    problem = problem_of(client.get(f"/jobs/{job_id}", params={"wait": wait}), 422)

    assert paths_of(problem) == {"wait"}


def test_waiting_on_an_unknown_job_is_a_404_at_once(client: TestClient[Litestar]) -> None:
    started = time.monotonic()
    problem_of(client.get(f"/jobs/{'0' * 32}", params={"wait": "5"}), 404, "job-not-found")
    assert time.monotonic() - started < 1


# -- cancelling -----------------------------------------------------------------------------


def test_cancelling_a_waiting_job_is_200_and_final(
    client: TestClient[Litestar], backend: Backend
) -> None:
    job_id = post_job(client)["id"]

    response = client.post(f"/jobs/{job_id}/cancel")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    assert claim(backend) == []
    problem_of(client.post(f"/jobs/{job_id}/cancel"), 409, "invalid-transition")


def test_cancelling_a_scheduled_job_is_200(client: TestClient[Litestar]) -> None:
    job_id = post_job(client, delay=600)["id"]

    response = client.post(f"/jobs/{job_id}/cancel")

    assert (response.status_code, response.json()["status"]) == (200, "cancelled")


def test_cancelling_an_active_job_is_202_with_the_request_recorded(
    client: TestClient[Litestar], backend: Backend
) -> None:
    job_id = post_job(client)["id"]
    [lease] = claim(backend)

    response = client.post(f"/jobs/{job_id}/cancel")

    assert response.status_code == 202, response.text
    view = response.json()
    assert (view["status"], view["cancel_requested_at"] is not None) == ("active", True)
    assert asyncio.run(leases_of(backend).cancel_requested([lease])) == {job_id}
    assert settle(backend, lease, Ending.cancelled()) is JobStatus.CANCELLED
    assert client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"


def test_cancelling_a_finished_job_is_409_and_an_unknown_one_404(
    client: TestClient[Litestar], backend: Backend
) -> None:
    job_id = post_job(client)["id"]
    [lease] = claim(backend)
    settle(backend, lease, Ending.succeeded(None))

    problem = problem_of(client.post(f"/jobs/{job_id}/cancel"), 409, "invalid-transition")

    assert "succeeded" in problem["detail"]
    problem_of(client.post(f"/jobs/{'0' * 32}/cancel"), 404)
    problem_of(client.post("/jobs/not-a-job/cancel"), 404)


# -- queues ---------------------------------------------------------------------------------


def test_queues_show_their_jobs_by_status(client: TestClient[Litestar], backend: Backend) -> None:
    post_job(client)
    post_job(client)
    post_job(client, queue="reports", delay=60)
    claim(backend)

    listed = client.get("/queues")
    one = client.get("/queues/reports")

    assert listed.status_code == 200
    queues = {q["name"]: q for q in listed.json()["queues"]}
    assert set(queues) == {"default", "reports"}
    default = queues["default"]
    assert set(default["counts"]) == {status.value for status in JobStatus}
    assert (default["counts"]["active"], default["counts"]["queued"]) == (2, 0)
    assert (default["paused"], default["workers"]) == (False, 0)
    assert one.json()["counts"]["scheduled"] == 1
    # The same queue, but for its rates: they decay between the two reads.
    rates = ("rate_in", "rate_out", "drain_rate")
    assert {k: v for k, v in one.json().items() if k not in rates} == {
        k: v for k, v in queues["reports"].items() if k not in rates
    }
    assert one.json()["rate_in"] == pytest.approx(queues["reports"]["rate_in"], rel=0.01)


def test_a_queue_never_used_has_no_jobs(client: TestClient[Litestar]) -> None:
    view = client.get("/queues/nothing-here").json()

    assert view["name"] == "nothing-here"
    assert set(view["counts"].values()) == {0}
    assert view["oldest_queued_age"] is None


def test_pausing_a_queue_stops_claims_until_it_is_resumed(
    client: TestClient[Litestar], backend: Backend
) -> None:
    job_id = post_job(client)["id"]

    paused = client.post("/queues/default/pause")
    claimed_while_paused = claim(backend)
    resumed = client.post("/queues/default/resume")

    assert (paused.status_code, paused.json()["paused"]) == (200, True)
    assert paused.json()["counts"]["queued"] == 1
    assert claimed_while_paused == []
    assert (resumed.status_code, resumed.json()["paused"]) == (200, False)
    assert [lease.job_id for lease in claim(backend)] == [job_id]


@pytest.mark.parametrize("name", ["Default", "a}:{b", "x" * 65, "..", "1abc", "%20"])
@pytest.mark.parametrize("action", ["", "/pause", "/resume"])
def test_a_malformed_queue_name_is_a_404(
    client: TestClient[Litestar], name: str, action: str
) -> None:
    method = "GET" if not action else "POST"

    problem_of(client.request(method, f"/queues/{name}{action}"), 404)


# -- admission and capabilities ---------------------------------------------------------------


def test_a_job_or_a_pause_opening_a_queue_past_max_queues_is_a_429_naming_the_setting() -> None:
    with TestClient(create_app(container_for(max_queues=2))) as client:
        post_job(client, queue="alpha")
        assert client.post("/queues/beta/pause").status_code == 200
        refused = client.post("/jobs", json={**SUCCEED, "queue": "gamma"})
        paused = client.post("/queues/gamma/pause")
        kept = client.post("/jobs", json={**SUCCEED, "queue": "beta"})

    for response in (refused, paused):
        problem = problem_of(response, 429, "too-many-queues")
        assert "CONVEYOR_MAX_QUEUES" in problem["detail"]
        assert "'gamma'" in problem["detail"]
        assert int(response.headers["retry-after"]) >= 1
    assert kept.status_code == 202


def test_past_the_most_long_polls_a_wait_is_answered_at_once() -> None:
    container = container_for(max_waiters=0, wait_max_seconds=5.0)
    with TestClient(create_app(container)) as client:
        job_id = post_job(client)["id"]
        started = time.monotonic()
        response = client.get(f"/jobs/{job_id}", params={"wait": "5"})

    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    assert time.monotonic() - started < 1


def test_a_queue_over_its_depth_limit_is_a_429_with_retry_after() -> None:
    policy = AdmissionPolicy(default=QueueLimits(max_depth=1), retry_after=2.5)
    with TestClient(create_app(container_for(admission=policy))) as client:
        first = client.post("/jobs", json=SUCCEED)
        refused = client.post("/jobs", json=SUCCEED)
        batch = client.post("/jobs/batch", json={"jobs": [SUCCEED]})

    assert first.status_code == 202
    problem = problem_of(refused, 429, "over-limit")
    assert "'default'" in problem["detail"]
    assert refused.headers["retry-after"] == "3"
    assert problem_of(batch, 429, "over-limit")
    assert batch.headers["retry-after"] == "3"


def without(container: Container, **roles: None) -> Container:
    """`container` over its memory backend without the roles named."""
    container.backend.override(providers.Object(attrs.evolve(container.backend(), **roles)))
    return container


@pytest.mark.parametrize(
    ("role", "method", "path", "capability"),
    [
        ("pauser", "POST", "/queues/default/pause", "pause"),
        ("pauser", "POST", "/queues/default/resume", "pause"),
        ("control", "POST", f"/jobs/{'0' * 32}/cancel", "cancel"),
        ("control", "POST", f"/jobs/{'0' * 32}/retry", "cancel"),
        ("monitor", "GET", "/queues", "queue_stats"),
        ("monitor", "GET", "/queues/default", "queue_stats"),
    ],
)
def test_a_role_the_backend_lacks_is_a_501_naming_it(
    container: Container, role: str, method: str, path: str, capability: str
) -> None:
    with TestClient(create_app(without(container, **{role: None}))) as client:
        response = client.request(method, path)

    problem = problem_of(response, 501, "unsupported-by-backend")
    assert problem["capability"] == capability
    assert f"`{capability}`" in problem["detail"]


def test_a_backend_without_a_pauser_still_reports_its_queues(container: Container) -> None:
    with TestClient(create_app(without(container, pauser=None))) as client:
        post_job(client)
        listed = client.get("/queues")

    assert listed.status_code == 200
    assert [q["counts"]["queued"] for q in listed.json()["queues"]] == [1]


def test_a_deadline_on_a_backend_that_cannot_enforce_one_is_a_501_and_nothing_is_stored(
    container: Container,
) -> None:
    backend: Backend = container.backend()
    limited = attrs.evolve(backend, submitter=NoDeadlines(backend.submitter))
    container.backend.override(providers.Object(limited))
    with TestClient(create_app(container)) as client:
        refused = client.post("/jobs", json={**SUCCEED, "deadline": 60})
        batch = client.post("/jobs/batch", json={"jobs": [SUCCEED, {**SUCCEED, "deadline": 60}]})
        accepted = client.post("/jobs", json=SUCCEED)

    assert problem_of(refused, 501, "unsupported-by-backend")["capability"] == "deadlines"
    assert problem_of(batch, 501, "unsupported-by-backend")["capability"] == "deadlines"
    assert accepted.status_code == 202
    assert stored(backend) == 1


# -- framework answers are problems too ------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("DELETE", "/queues", 405),
        ("GET", "/queues/default/pause", 405),
        ("PUT", f"/jobs/{'0' * 32}/cancel", 405),
        ("GET", "/jobs/batch", 405),
        ("GET", "/queue", 404),
    ],
)
def test_framework_errors_on_the_new_routes_are_problems(
    client: TestClient[Litestar], method: str, path: str, status: int
) -> None:
    response = client.request(method, path)

    problem_of(response, status)
    if status == 405:
        assert response.headers["allow"]


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/jobs", "GET, OPTIONS, POST"),
        ("/jobs/batch", "OPTIONS, POST"),
        (f"/jobs/{'0' * 32}", "GET, OPTIONS"),
        (f"/jobs/{'0' * 32}/cancel", "OPTIONS, POST"),
        ("/queues/default/pause", "OPTIONS, POST"),
    ],
)
def test_options_lists_every_method_of_the_path(
    client: TestClient[Litestar], path: str, allowed: str
) -> None:
    response = client.options(path)

    assert response.status_code == 204
    assert response.headers["allow"] == allowed


# -- JSON's numbers and nulls ----------------------------------------------------------------


def test_a_whole_number_written_with_a_fraction_is_an_integer(
    client: TestClient[Litestar], backend: Backend
) -> None:
    view = post_job(client, max_attempts=2.0, priority=-3.0)
    report = client.post(
        "/jobs", json={"type": "report", "payload": {"name": "r", "rows": 5.0, "seconds": 1.0}}
    )

    assert (view["max_attempts"], view["priority"]) == (2, -3)
    assert report.status_code == 202, report.text
    [stored_report] = [job for job in stored_jobs(backend) if job.type == "report"]
    assert stored_report.payload["rows"] == 5
    assert isinstance(stored_report.payload["rows"], int)


def test_a_fraction_is_still_not_an_integer(client: TestClient[Litestar]) -> None:
    problem = problem_of(client.post("/jobs", json={**SUCCEED, "max_attempts": 2.5}), 422)

    assert paths_of(problem) == {"max_attempts"}


def test_options_given_as_null_take_their_defaults(client: TestClient[Litestar]) -> None:
    nulls = dict.fromkeys(("max_attempts", "timeout", "queue", "priority", "delay", "run_at"))

    view = post_job(client, **nulls, deadline=None)

    assert (view["queue"], view["priority"], view["max_attempts"]) == ("default", 0, 3)
    assert (view["status"], view["run_at"], view["deadline"]) == ("queued", None, None)


@pytest.mark.parametrize("cursor", ["", "\u00b2", "caf\u00e9", "a b", "x" * 257])
def test_a_cursor_that_no_backend_makes_is_a_422(client: TestClient[Litestar], cursor: str) -> None:
    problem = problem_of(client.get("/jobs", params={"cursor": cursor}), 422)

    assert paths_of(problem) == {"cursor"}
