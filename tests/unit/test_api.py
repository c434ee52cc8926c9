"""The HTTP API through Litestar's test client, on the in-memory backend."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from dependency_injector import providers
from litestar import Litestar
from litestar.testing import TestClient

from domain.errors import NotReplicatedError, PartialSubmissionError, QueueUnavailableError
from domain.jobs import ErrorKind, JobError
from domain.limits import FlowLimits, RateLimit
from domain.ports import Backend
from domain.settlement import Ending
from entrypoints.api.app import create_app
from entrypoints.collector import YOUNG_THRESHOLD
from entrypoints.container import Container, build_container
from entrypoints.settings import QueueBackend, Settings
from tests.unit.backends import Broken, claim_one, leases_of, settle, stored_jobs

PROBLEM = "application/problem+json"
EMAIL = {"to": "user@example.com", "subject": "Hello", "body": "Hi there"}
VALID = {
    "email": EMAIL,
    "report": {"name": "q3", "rows": 500},
    "dummy": {"mode": "succeed", "result": {"answer": 42}},
}
JOB_VIEW_FIELDS = {
    "id",
    "type",
    "status",
    "queue",
    "priority",
    "attempts",
    "max_attempts",
    "timeout",
    "created_at",
    "started_at",
    "finished_at",
    "progress",
    "result",
    "error",
    "worker",
    "history",
    "run_at",
    "deadline",
    "retry_at",
    "cancel_requested_at",
    "heartbeat_at",
    "unique_key",
    "waiting_reason",
    "timeline",
    "idempotency_key",
}


def submit(client: TestClient[Litestar], type_: str, payload: object, **extra: object) -> str:
    response = client.post("/jobs", json={"type": type_, "payload": payload, **extra})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["title"]
    assert problem["type"]
    assert problem["detail"]
    return problem


# -- submitting ---------------------------------------------------------------------------


@pytest.mark.parametrize("type_", sorted(VALID))
def test_submitting_each_job_type_answers_202_with_location_and_a_queued_view(
    client: TestClient[Litestar], type_: str
) -> None:
    response = client.post("/jobs", json={"type": type_, "payload": VALID[type_]})

    assert response.status_code == 202, response.text
    view = response.json()
    assert set(view) == JOB_VIEW_FIELDS | {"replayed"}
    assert view["replayed"] is False
    assert response.headers["location"] == f"/jobs/{view['id']}"
    assert view["type"] == type_
    assert view["status"] == "queued"
    assert view["attempts"] == 0
    assert view["queue"] == "default"
    assert view["started_at"] is None
    assert view["error"] is None


def test_the_job_view_never_shows_the_payload(client: TestClient[Litestar]) -> None:
    job_id = submit(client, "email", {**EMAIL, "body": "canary-4711"})

    assert "canary-4711" not in client.get(f"/jobs/{job_id}").text


def test_a_submitted_job_reads_back_the_same(client: TestClient[Litestar]) -> None:
    posted = client.post("/jobs", json={"type": "email", "payload": EMAIL}).json()

    response = client.get(f"/jobs/{posted['id']}")

    assert response.status_code == 200
    read = response.json()
    # Only the read asks the backend where the job stands in its queue.
    assert posted.pop("waiting_reason")["kind"] == "queued"
    assert posted.pop("replayed") is False  # only the submission's answer says it
    assert read.pop("waiting_reason")["kind"] == "no_worker"
    assert read == posted


def test_submission_limits_come_from_the_job_type_unless_given(
    client: TestClient[Litestar],
) -> None:
    default = client.post("/jobs", json={"type": "email", "payload": EMAIL}).json()
    chosen = client.post(
        "/jobs", json={"type": "email", "payload": EMAIL, "max_attempts": 2, "timeout": 12.5}
    ).json()

    assert (default["max_attempts"], default["timeout"]) == (5, 30.0)
    assert (chosen["max_attempts"], chosen["timeout"]) == (2, 12.5)


@pytest.mark.parametrize(
    "address",
    [
        "user@example.com",
        "first.last+tag@sub.example.co.uk",
        "0@" + ".".join(["0" * 63, "a" * 63, "a" * 63, "a" * 59]),  # 254 characters
        "o'hara@x-y.example",
    ],
)
def test_every_well_formed_address_is_accepted(client: TestClient[Litestar], address: str) -> None:
    response = client.post("/jobs", json={"type": "email", "payload": {**EMAIL, "to": address}})

    assert response.status_code == 202, response.text


def test_json_media_types_with_suffix_and_charset_are_accepted(
    client: TestClient[Litestar],
) -> None:
    body = b'{"type": "email", "payload": {"to": "a@example.com", "subject": "s", "body": "b"}}'
    for content_type in (
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON; charset=UTF-8",
        "application/vnd.conveyor.job+json",
    ):
        response = client.post("/jobs", content=body, headers={"content-type": content_type})
        assert response.status_code == 202, (content_type, response.text)


def test_an_invalid_payload_lists_every_bad_field_with_its_path(
    client: TestClient[Litestar], backend: Backend
) -> None:
    response = client.post(
        "/jobs",
        json={
            "type": "email",
            "payload": {"to": "not-an-address", "subject": "", "colour": "red"},
            "max_attempts": 0,
            "timeout": "soon",
        },
    )

    problem = assert_problem(response, 422)
    paths = {error["path"]: error["message"] for error in problem["errors"]}
    assert set(paths) == {
        "payload.to",
        "payload.subject",
        "payload.body",
        "payload.colour",
        "max_attempts",
        "timeout",
    }
    assert "email" in paths["payload.to"]
    assert paths["payload.body"] == "field required"
    assert paths["payload.colour"] == "unknown field"
    assert problem["detail"].startswith("6 invalid fields: payload.colour: unknown field; ")
    assert problem["detail"].endswith("and 3 more (`errors` lists 6)")
    assert stored_jobs(backend) == []


def test_an_unknown_type_is_answered_with_the_known_types(client: TestClient[Litestar]) -> None:
    response = client.post("/jobs", json={"type": "os.system", "payload": {}})

    problem = assert_problem(response, 422)
    assert problem["known_types"] == ["dummy", "email", "report"]
    assert "'os.system'" in problem["detail"]
    assert problem["errors"][0]["path"] == "type"


def test_a_huge_number_of_bad_fields_gives_a_bounded_answer(
    client: TestClient[Litestar],
) -> None:
    payload = {**EMAIL, **{f"extra{i}": i for i in range(5000)}}

    problem = assert_problem(client.post("/jobs", json={"type": "email", "payload": payload}), 422)

    assert len(problem["errors"]) == 100
    assert problem["detail"].startswith("5000 invalid fields: payload.extra0: unknown field")
    assert problem["detail"].endswith("and 4997 more (`errors` lists 100)")


# -- reading ------------------------------------------------------------------------------


def test_a_job_moved_by_a_worker_shows_its_progress_result_and_times(
    client: TestClient[Litestar], backend: Backend
) -> None:
    job_id = submit(client, "report", {"name": "q3", "rows": 10})
    lease = claim_one(backend)
    asyncio.run(leases_of(backend).set_progress(lease, 40))

    active = client.get(f"/jobs/{job_id}").json()
    settle(backend, lease, Ending.succeeded({"rows": 10}))
    done = client.get(f"/jobs/{job_id}").json()

    assert (active["status"], active["progress"], active["attempts"]) == ("active", 40, 1)
    assert active["started_at"] is not None
    assert (done["status"], done["progress"], done["result"]) == ("succeeded", 100, {"rows": 10})
    assert done["finished_at"] is not None


TRACEBACK = 'Traceback (most recent call last):\n  File "/srv/app/handlers.py", line 9\n'


def test_a_failed_attempt_shows_its_error_but_never_a_stored_traceback(
    client: TestClient[Litestar], backend: Backend
) -> None:
    job_id = submit(client, "dummy", {"mode": "fatal"})
    lease = claim_one(backend)
    error = JobError(
        message="boom", type="NonRetryableError", kind=ErrorKind.NON_RETRYABLE, traceback=TRACEBACK
    )
    settle(backend, lease, Ending.failed(error, retry_in=None))

    view = client.get(f"/jobs/{job_id}").json()
    listed = client.get("/jobs", params={"status": "dead"}).json()["jobs"]

    assert view["status"] == "dead"
    assert view["error"] == {
        "message": "boom",
        "type": "NonRetryableError",
        "kind": "non_retryable",
        "traceback": None,
        "exit_code": None,
        "signal": None,
    }
    assert [a["outcome"] for a in view["history"]] == ["non_retryable"]
    assert [job["error"]["traceback"] for job in listed] == [None]


def test_a_stored_traceback_is_shown_when_the_operator_exposes_tracebacks() -> None:
    container = build_container(Settings(queue_backend=QueueBackend.MEMORY, expose_tracebacks=True))
    with TestClient(create_app(container)) as client:
        job_id = submit(client, "dummy", {"mode": "fatal"})
        backend = container.backend()
        lease = claim_one(backend)
        error = JobError(message="boom", type="NonRetryableError", traceback=TRACEBACK)
        settle(backend, lease, Ending.failed(error, retry_in=None))

        view = client.get(f"/jobs/{job_id}").json()
        listed = client.get("/jobs").json()["jobs"]

    assert view["error"]["traceback"] == TRACEBACK
    assert [job["error"]["traceback"] for job in listed] == [TRACEBACK]


def test_retrying_a_dead_job_queues_it_again_with_fresh_attempts(
    client: TestClient[Litestar], backend: Backend
) -> None:
    job_id = client.post("/jobs", json={"type": "dummy", "payload": {"mode": "fatal"}}).json()["id"]
    lease = claim_one(backend)
    settle(backend, lease, Ending.failed(JobError(message="x", type="X"), retry_in=None))

    response = client.post(f"/jobs/{job_id}/retry")

    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/jobs/{job_id}"
    assert (response.json()["status"], response.json()["attempts"]) == ("queued", 0)


def test_retrying_a_job_that_is_not_dead_is_409(client: TestClient[Litestar]) -> None:
    job_id = client.post("/jobs", json={"type": "dummy", "payload": {"mode": "fatal"}}).json()["id"]
    response = client.post(f"/jobs/{job_id}/retry")
    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/problem+json")
    assert client.get(f"/jobs/{job_id}").json()["status"] == "queued"


def test_retrying_an_unknown_job_is_404(client: TestClient[Litestar]) -> None:
    assert client.post(f"/jobs/{'0' * 32}/retry").status_code == 404


@pytest.mark.parametrize(
    "job_id",
    ["0" * 32, "not-an-id", "A" * 32, "0" * 33, "..%2F..%2Fetc", "%00", "%ff", "0" * 10_000],
)
def test_an_unknown_or_malformed_job_id_is_404(client: TestClient[Litestar], job_id: str) -> None:
    problem = assert_problem(client.get(f"/jobs/{job_id}"), 404)

    assert len(problem["detail"]) < 200


def test_listing_filters_and_pages_through_jobs(
    client: TestClient[Litestar], backend: Backend
) -> None:
    emails = [submit(client, "email", EMAIL) for _ in range(3)]
    report = submit(client, "report", {"name": "r", "rows": 1})

    everything = client.get("/jobs").json()
    only_emails = client.get("/jobs", params={"type": "email"}).json()
    first = client.get("/jobs", params={"limit": 2}).json()
    second = client.get("/jobs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    claim_one(backend)
    active = client.get("/jobs", params={"status": "active", "queue": "default"}).json()

    assert [j["id"] for j in everything["jobs"]] == [report, *reversed(emails)]
    assert everything["next_cursor"] is None
    assert [j["id"] for j in only_emails["jobs"]] == list(reversed(emails))
    assert [j["id"] for j in first["jobs"] + second["jobs"]] == [report, *reversed(emails)]
    assert second["next_cursor"] is None
    assert [j["id"] for j in active["jobs"]] == [emails[0]]


@pytest.mark.parametrize(
    ("params", "bad"),
    [
        ({"status": "finished"}, {"status"}),
        ({"status": ""}, {"status"}),
        ({"limit": "0"}, {"limit"}),
        ({"limit": "501"}, {"limit"}),
        ({"limit": "ten"}, {"limit"}),
        ({"limit": "-1"}, {"limit"}),
        ({"limit": "1" * 5000}, {"limit"}),
        ({"limit": "٣"}, {"limit"}),  # a digit, but not an ASCII one
        ({"type": "os.system"}, {"type"}),
        ({"queue": "a}:{b"}, {"queue"}),
        ({"queue": "default\n"}, {"queue"}),
        ({"cursor": "x" * 300}, {"cursor"}),
        ({"status": "nope", "limit": "0", "type": "../x"}, {"status", "limit", "type"}),
    ],
)
def test_bad_list_parameters_are_422_naming_each(
    client: TestClient[Litestar], params: dict[str, str], bad: set[str]
) -> None:
    problem = assert_problem(client.get("/jobs", params=params), 422)

    assert {error["path"] for error in problem["errors"]} == bad


def test_job_types_show_defaults_limits_and_payload_schemas(
    client: TestClient[Litestar], container: Container
) -> None:
    response = client.get("/job-types")

    assert response.status_code == 200
    listed = {t["name"]: t for t in response.json()["job_types"]}
    registry = container.registry()
    assert set(listed) == set(registry)
    for name, job_type in registry.items():
        assert listed[name] == {
            "name": name,
            "description": job_type.description,
            "queue": job_type.queue,
            "priority": job_type.priority,
            "max_attempts": job_type.retry.max_attempts,
            "max_attempts_limit": job_type.retry.max_attempts_limit,
            "timeout": job_type.timeout,
            "timeout_limit": job_type.timeout_limit,
            "payload_schema": job_type.schema.json_schema(),
            "rate_limit": None,
            "concurrency_limit": None,
        }


def test_job_types_and_queues_show_the_flow_limits_per_type() -> None:
    limits = FlowLimits.of({"email": RateLimit(10, 1.0)}, {"report": 2})
    container = build_container(Settings(queue_backend=QueueBackend.MEMORY, flow_limits=limits))
    with TestClient(create_app(container)) as client:
        listed = {t["name"]: t for t in client.get("/job-types").json()["job_types"]}
        queues = client.get("/queues").json()
    assert (listed["email"]["rate_limit"], listed["email"]["concurrency_limit"]) == ("10/s", None)
    assert (listed["report"]["rate_limit"], listed["report"]["concurrency_limit"]) == (None, 2)
    assert (listed["dummy"]["rate_limit"], listed["dummy"]["concurrency_limit"]) == (None, None)
    assert queues["limits"] == [
        {"job_type": "email", "rate": "10/s", "concurrency": None},
        {"job_type": "report", "rate": None, "concurrency": 2},
    ]


# -- health -------------------------------------------------------------------------------


def test_liveness_and_readiness_answer_200_when_the_backend_answers(
    client: TestClient[Litestar],
) -> None:
    assert client.get("/health/live").json() == {"status": "ok"}
    assert client.get("/health/ready").json() == {"status": "ready"}


# -- errors from the framework --------------------------------------------------------------


def test_an_unknown_route_is_a_404_problem(client: TestClient[Litestar]) -> None:
    assert_problem(client.get("/nowhere"), 404)
    assert_problem(client.get("/%ff"), 404)


def test_a_wrong_method_is_a_405_problem_with_allow(client: TestClient[Litestar]) -> None:
    response = client.delete("/jobs")

    assert_problem(response, 405)
    assert "POST" in response.headers["allow"]


# -- a backend that is down, or broken ------------------------------------------------------


def client_over(container: Container, backend: Backend) -> TestClient[Litestar]:
    container.backend.override(providers.Object(backend))
    return TestClient(create_app(container))


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/jobs", {"type": "email", "payload": EMAIL}),
        ("POST", "/jobs/batch", {"jobs": [{"type": "email", "payload": EMAIL}]}),
        ("GET", "/jobs/" + "0" * 32, None),
        ("GET", "/jobs", None),
        ("POST", f"/jobs/{'0' * 32}/cancel", None),
        ("POST", f"/jobs/{'0' * 32}/retry", None),
        ("GET", "/queues", None),
        ("GET", "/queues/default", None),
        ("POST", "/queues/default/pause", None),
        ("POST", "/queues/default/resume", None),
        ("GET", "/health/ready", None),
    ],
)
def test_an_unreachable_backend_is_503_with_retry_after(
    container: Container, method: str, path: str, body: object
) -> None:
    down = Broken(QueueUnavailableError("connection refused", retry_after=2.5))
    with client_over(container, down.backend()) as client:
        response = client.request(method, path, json=body)

    problem = assert_problem(response, 503)
    assert response.headers["retry-after"] == "3"
    assert "connection refused" not in problem["detail"]


def test_a_batch_stored_only_in_part_is_503_naming_what_happened_to_each_item(
    container: Container,
) -> None:
    refused = QueueUnavailableError("cannot reach redis", retry_after=2.0)
    partial = PartialSubmissionError(["a" * 32, None], [None, refused])
    body = {"jobs": [{"type": "email", "payload": EMAIL}, {"type": "email", "payload": EMAIL}]}
    with client_over(container, Broken(partial).backend()) as client:
        response = client.post("/jobs/batch", json=body)

    problem = assert_problem(response, 503)
    assert problem["type"].endswith("partially-stored")
    assert response.headers["retry-after"] == "2"
    assert [(e["path"], e["message"]) for e in problem["errors"]] == [
        ("jobs[0]", f"stored as {'a' * 32}"),
        ("jobs[1]", "not stored: the job store cannot be reached right now"),
    ]
    assert "cannot reach redis" not in response.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/jobs", {"type": "email", "payload": EMAIL}),
        ("/jobs/batch", {"jobs": [{"type": "email", "payload": EMAIL}]}),
    ],
)
def test_a_submission_the_replicas_did_not_confirm_is_503_saying_a_retry_is_safe(
    container: Container, path: str, body: object
) -> None:
    short = Broken(NotReplicatedError(0, 2, 0.5))
    with client_over(container, short.backend()) as client:
        response = client.post(path, json=body, headers={"Idempotency-Key": "order-1"})

    problem = assert_problem(response, 503)
    assert problem["type"] == "urn:conveyor:problem:not-replicated"
    assert response.headers["retry-after"] == "1"
    detail = problem["detail"]
    assert "0 of the 2 replicas" in detail
    assert "may have been stored but is not yet confirmed durable" in detail
    assert "same Idempotency-Key" in detail
    assert "Without a key, a retry may store a second job" in detail


def test_a_readiness_probe_that_fails_any_other_way_is_503_too(container: Container) -> None:
    with client_over(container, Broken(PermissionError("NOPERM")).backend()) as client:
        response = client.get("/health/ready")

    assert_problem(response, 503)
    assert "retry-after" in response.headers


def test_an_unexpected_error_is_a_500_problem_that_reveals_nothing_and_is_logged(
    container: Container, caplog: pytest.LogCaptureFixture
) -> None:
    broken = Broken(RuntimeError("internal detail: host=db-7 token=abc"))
    with client_over(container, broken.backend()) as client, caplog.at_level(logging.ERROR):
        response = client.get("/jobs/" + "0" * 32)

    assert_problem(response, 500)
    assert "db-7" not in response.text
    assert "RuntimeError" in caplog.text


def test_shutting_down_closes_the_backends_connection(container: Container) -> None:
    broken = Broken(QueueUnavailableError("down"))
    with client_over(container, broken.backend()):
        assert not broken.closed

    assert broken.closed


def test_payloads_never_reach_the_logs(
    client: TestClient[Litestar], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        submit(client, "email", {**EMAIL, "body": "canary-password-1"})
        client.post("/jobs", json={"type": "email", "payload": {"body": "canary-password-2"}})

    assert "canary-password" not in caplog.text


# -- serving ------------------------------------------------------------------------------


@pytest.fixture
def process_logging() -> Iterator[None]:
    """Restores the root logger, which the factory configures from the environment."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("process_logging")
def test_uvicorn_can_build_the_app_from_the_factory_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUEUE_BACKEND", "memory")
    config = uvicorn.Config("entrypoints.api.app:create_app", factory=True, log_config=None)

    config.load()

    assert config.loaded
    with TestClient(create_app()) as client:
        assert client.post("/jobs", json={"type": "email", "payload": EMAIL}).status_code == 202


def test_the_served_app_leaves_what_start_up_built_to_the_garbage_collector() -> None:
    """`conveyor api` serves `create_served_app`: start-up's objects frozen, young ones
    collected less often. In a process of its own, so this one's collector is untouched."""
    code = (
        "import gc, json\n"
        "from entrypoints.api.app import create_served_app\n"
        "create_served_app()\n"
        "print(json.dumps([gc.get_freeze_count(), gc.get_threshold()]))\n"
    )
    env = {**os.environ, "QUEUE_BACKEND": "memory", "CONVEYOR_SCHEDULER": "0"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    frozen, threshold = json.loads(done.stdout.splitlines()[-1])
    assert frozen > 10_000  # the app, its schemas and its modules
    assert threshold == [YOUNG_THRESHOLD, 10, 10]
