"""The API's `/metrics` through Litestar's test client, on the in-memory backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from entrypoints.api.app import create_app
from entrypoints.api.metrics import LATENCY_BUCKETS, METRICS_KEY, ApiMetrics, RequestFigures
from entrypoints.container import Container, build_container
from entrypoints.settings import QueueBackend, Settings

DUMMY = {"type": "dummy", "payload": {"mode": "succeed"}}


@pytest.fixture
def client() -> Iterator[TestClient[Litestar]]:
    container: Container = build_container(Settings(queue_backend=QueueBackend.MEMORY))
    with TestClient(create_app(container)) as test_client:
        yield test_client


def scrape(client: TestClient[Litestar]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def test_submissions_are_counted_by_type_queue_and_outcome(
    client: TestClient[Litestar],
) -> None:
    headers = {"Idempotency-Key": "k-1"}
    assert client.post("/jobs", json=DUMMY, headers=headers).status_code == 202
    assert client.post("/jobs", json=DUMMY, headers=headers).status_code == 202
    assert client.post("/jobs", json={"type": "nope", "payload": {}}).status_code == 422
    batch = {"jobs": [DUMMY, {**DUMMY, "queue": "bulk"}]}
    assert client.post("/jobs/batch", json=batch).status_code == 202
    unique = {**DUMMY, "unique_key": "once"}
    assert client.post("/jobs/batch", json={"jobs": [unique, unique]}).status_code == 202

    figures = scrape(client)

    def submits(type_: str, queue: str, outcome: str) -> float:
        labels = (("outcome", outcome), ("queue", queue), ("type", type_))
        return figures[("conveyor_submits_total", labels)]

    assert submits("dummy", "default", "accepted") == 3
    assert submits("dummy", "default", "replayed") == 1
    assert submits("dummy", "default", "unique_replayed") == 1
    assert submits("dummy", "bulk", "accepted") == 1
    assert submits("", "", "refused_422") == 1


def test_requests_are_counted_by_route_template_never_by_path(
    client: TestClient[Litestar],
) -> None:
    job_id = client.post("/jobs", json=DUMMY).json()["id"]
    client.get(f"/jobs/{job_id}")
    client.get("/no/such/thing")

    figures = scrape(client)
    routes = {dict(labels)["route"] for name, labels in figures if name.startswith("conveyor_http")}

    assert routes == {"/jobs", "/jobs/{job_id}", "unmatched"}
    assert not any(job_id in route for route in routes)
    get_job = (("method", "GET"), ("route", "/jobs/{job_id}"), ("status", "200"))
    assert figures[("conveyor_http_requests_total", get_job)] == 1
    latency = (("method", "GET"), ("route", "/jobs/{job_id}"))
    assert figures[("conveyor_http_request_duration_seconds_count", latency)] == 1


def test_queue_state_is_read_when_scraped(client: TestClient[Litestar]) -> None:
    client.post("/jobs", json=DUMMY)
    client.post("/jobs", json=DUMMY)
    client.post("/queues/default/pause")

    figures = scrape(client)

    assert figures[("conveyor_redis_up", ())] == 1
    queued = (("queue", "default"), ("status", "queued"))
    assert figures[("conveyor_queue_jobs", queued)] == 2
    assert figures[("conveyor_queue_paused", (("queue", "default"),))] == 1
    assert figures[("conveyor_queue_oldest_waiting_seconds", (("queue", "default"),))] >= 0


def test_a_metric_that_fails_never_fails_the_request(
    client: TestClient[Litestar], caplog: pytest.LogCaptureFixture
) -> None:
    metrics = client.app.state[METRICS_KEY]
    assert isinstance(metrics, ApiMetrics)

    def broken(*_: object) -> None:
        raise RuntimeError("registry broken")

    metrics.figures.add = broken  # type: ignore[method-assign,assignment]
    metrics.figures.submit = broken  # type: ignore[method-assign,assignment]

    answers = [client.post("/jobs", json=DUMMY).status_code for _ in range(3)]

    assert answers == [202, 202, 202]
    assert [r.message for r in caplog.records].count(
        "a metric could not be recorded (logged once): RuntimeError('registry broken')"
    ) == 1


def test_metrics_can_be_turned_off_and_submissions_still_answer() -> None:
    settings = Settings.from_env({"QUEUE_BACKEND": "memory", "CONVEYOR_API_METRICS": "0"})
    assert settings.api_metrics is False
    with TestClient(create_app(build_container(settings))) as client:
        assert client.post("/jobs", json=DUMMY).status_code == 202
        assert client.options("/jobs").headers["allow"] == "GET, OPTIONS, POST"
        assert client.get("/metrics").status_code == 404
        assert METRICS_KEY not in client.app.state


def test_the_request_figures_expose_what_the_librarys_counter_and_histogram_would() -> None:
    """The plain-number request figures against prometheus-client's own labelled counters
    and histogram fed the same answers and submissions: the same samples, bucket by bucket
    (values on a bound, under the first and past the last included)."""
    times = [0.0, 0.0005, 0.001, 0.0011, 0.0025, 0.04, 1.0, 29.9, 30.0, 31.0, 1e9]
    answers = [("/jobs", "POST", 202, t) for t in times] + [
        ("/jobs/{job_id}", "GET", 404, 0.003),
        ("unmatched", "GET", 404, None),
    ]
    ours = CollectorRegistry(auto_describe=False)
    figures = RequestFigures()
    ours.register(figures)
    theirs = CollectorRegistry(auto_describe=False)
    requests = Counter(
        "conveyor_http_requests", "-", ("route", "method", "status"), registry=theirs
    )
    latency = Histogram(
        "conveyor_http_request_duration_seconds",
        "-",
        ("route", "method"),
        buckets=LATENCY_BUCKETS,
        registry=theirs,
    )
    submits = Counter("conveyor_submits", "-", ("type", "queue", "outcome"), registry=theirs)
    for outcome in [("dummy", "default", "accepted")] * 3 + [("", "", "refused_422")]:
        figures.submit(*outcome)
        submits.labels(*outcome).inc()
    for route, method, status, took in answers:
        figures.add(route, method, status, took)
        requests.labels(route, method, str(status)).inc()
        if took is not None:
            latency.labels(route, method).observe(took)

    def samples(
        registry: CollectorRegistry,
    ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = generate_latest(registry).decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if not s.name.endswith("_created")
        }

    expected = samples(theirs)
    assert samples(ours) == expected
    first = (("le", "0.001"), ("method", "POST"), ("route", "/jobs"))
    assert expected[("conveyor_http_request_duration_seconds_bucket", first)] == 3
    accepted = (("outcome", "accepted"), ("queue", "default"), ("type", "dummy"))
    assert expected[("conveyor_submits_total", accepted)] == 3
