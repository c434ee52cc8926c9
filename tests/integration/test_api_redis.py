"""The API on the real Redis backend: jobs really land in Redis, and a Redis that is down or
silent is a quick 503 with Retry-After, never a hang or a 500."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from litestar import Litestar
from litestar.testing import TestClient

from entrypoints.api.app import create_app
from entrypoints.container import build_container
from entrypoints.settings import QueueBackend, Settings

PAYLOADS = {
    "email": {"to": "user@example.com", "subject": "Hello", "body": "Hi"},
    "report": {"name": "q3", "rows": 500},
    "dummy": {"mode": "succeed", "result": {"answer": 42}},
}
FAST_503_SECONDS = 1.5


@pytest.fixture
def settings(redis_url: str) -> Iterator[Settings]:
    """Settings for one test: its own key prefix, whose keys are deleted afterwards."""
    prefix = f"api-test-{uuid.uuid4().hex}"
    yield Settings(redis_url=redis_url, queue_backend=QueueBackend.REDIS, key_prefix=prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        for pattern in (f"{{{prefix}:*", f"{prefix}:*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.unlink(*keys)
    finally:
        client.close()


def client_for(settings: Settings) -> TestClient[Litestar]:
    container = build_container(settings, redis_socket_timeout=settings.redis_timeout)
    return TestClient(create_app(container))


def keys_under(redis_url: str, prefix: str) -> list[bytes]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [
            key
            for pattern in (f"{{{prefix}:*", f"{prefix}:*")
            for key in client.scan_iter(match=pattern, count=1000)
        ]
    finally:
        client.close()


def test_jobs_submitted_through_the_api_are_stored_in_redis(settings: Settings) -> None:
    with client_for(settings) as client:
        assert client.get("/health/ready").status_code == 200
        posted = {}
        for type_, payload in PAYLOADS.items():
            response = client.post("/jobs", json={"type": type_, "payload": payload})
            assert response.status_code == 202, response.text
            assert response.headers["location"] == f"/jobs/{response.json()['id']}"
            posted[type_] = response.json()
            # Only the submission's answer says whether it was there before.
            assert posted[type_].pop("replayed") is False

    # A second app, with its own connections, reads them back from Redis.
    with client_for(settings) as other:
        for view in posted.values():
            read = other.get(f"/jobs/{view['id']}")
            assert read.status_code == 200
            # Only a read asks the backend where the job stands in its queue.
            assert read.json() == {**view, "waiting_reason": read.json()["waiting_reason"]}
            assert read.json()["waiting_reason"]["kind"] == "no_worker"
            assert read.json()["status"] == "queued"
        listed = other.get("/jobs", params={"status": "queued"}).json()
        emails = other.get("/jobs", params={"type": "email"}).json()
        assert other.get("/jobs/" + "0" * 32).status_code == 404

    assert {job["id"] for job in listed["jobs"]} == {view["id"] for view in posted.values()}
    assert [job["id"] for job in emails["jobs"]] == [posted["email"]["id"]]


def test_refused_submissions_leave_nothing_in_redis(settings: Settings) -> None:
    assert settings.redis_url is not None
    with client_for(settings) as client:
        # What start-up wrote (the idempotency window's mark), before any submission.
        started = sorted(keys_under(settings.redis_url, settings.key_prefix))
        statuses = [
            client.post("/jobs", content=b"{", headers={"content-type": "application/json"}),
            client.post("/jobs", json={"type": "os.system", "payload": {}}),
            client.post("/jobs", json={"type": "email", "payload": {"to": "x"}}),
            client.post("/jobs", json={"type": "email", "payload": {}, "max_attempts": 10**6}),
            client.post("/jobs", content=b"x" * (settings.max_body_bytes + 1)),
        ]

    assert [r.status_code for r in statuses] == [400, 422, 422, 422, 415]
    assert sorted(keys_under(settings.redis_url, settings.key_prefix)) == started
    assert not any(b":job:" in key or b"queued" in key for key in started), started


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def silent_redis() -> Iterator[str]:
    """A port that accepts connections and never answers (a hung or blackholed Redis)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/jobs", {"type": "email", "payload": PAYLOADS["email"]}),
        ("GET", "/jobs/" + "0" * 32, None),
        ("GET", "/jobs", None),
        ("GET", "/health/ready", None),
    ],
)
def test_an_unreachable_redis_is_a_fast_503_with_retry_after(
    method: str, path: str, body: object
) -> None:
    down = Settings(
        redis_url=f"redis://127.0.0.1:{closed_port()}/0", queue_backend=QueueBackend.REDIS
    )
    with client_for(down) as client:
        started = time.monotonic()
        response = client.request(method, path, json=body)
        elapsed = time.monotonic() - started
        live = client.get("/health/live")

    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert int(response.headers["retry-after"]) >= 1
    assert elapsed < FAST_503_SECONDS
    assert live.status_code == 200  # the process itself is fine


def test_a_redis_that_never_answers_is_a_503_within_the_timeout(silent_redis: str) -> None:
    hung = Settings(redis_url=silent_redis, queue_backend=QueueBackend.REDIS, redis_timeout=0.5)
    with client_for(hung) as client:
        started = time.monotonic()
        response = client.post("/jobs", json={"type": "email", "payload": PAYLOADS["email"]})
        elapsed = time.monotonic() - started

    assert response.status_code == 503, response.text
    assert "retry-after" in response.headers
    assert elapsed < FAST_503_SECONDS


def test_unusual_but_valid_payloads_are_stored(settings: Settings) -> None:
    deepest = "[" * 30 + "]" * 30  # with the envelope and payload objects: 32, the limit
    bodies = [
        f'{{"type": "dummy", "payload": {{"mode": "succeed", "result": {deepest}}}}}',
        f'{{"type": "dummy", "payload": {{"mode": "succeed", "result": 1{"0" * 400}}}}}',
        '{"type": "dummy", "payload": {"mode": "succeed", "result": "\\u0000\\u2028\U0001f600"}}',
        '{"type": "email", "payload": {"to": "a@example.com", "subject": "\u00e9", "body": ""}}',
    ]
    with client_for(settings) as client:
        for body in bodies:
            response = client.post(
                "/jobs", content=body.encode(), headers={"content-type": "application/json"}
            )
            assert response.status_code == 202, (body[:80], response.text)
            assert client.get(response.headers["location"]).status_code == 200
