"""The API's Prometheus metrics: its requests, submissions and Redis errors, and the queues'
state read from Redis when `/metrics` is scraped.

Counting never fails a request: a metric that raises is logged once and the request goes
on. Labels hold only what is bounded and known: the route's template (never the path, which
holds job ids), the method and status, registered job types and kept queues; a refused
submission's type and queue are not labels, since a caller could name any number of them.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import accumulate
from typing import Any, Final, cast

from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.types import Scope
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from domain.errors import QueueUnavailableError, UnsupportedOperationError
from domain.job_service import Accepted, JobService
from domain.jobs import JobStatus
from domain.ports import QueueStats

log = logging.getLogger("conveyor.api")

METRICS_KEY: Final = "metrics"
# When a request reached the routes (the app's middleware notes it in the scope).
STARTED: Final = "conveyor.started"
# The text format every Prometheus reads (Litestar adds the charset).
_TEXT_FORMAT: Final = "text/plain; version=0.0.4"
_SUBMIT_ROUTES: Final = frozenset({"/jobs", "/jobs/batch"})
LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)


class ApiMetrics:
    """One API process's figures, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.figures = RequestFigures()
        self.registry.register(self.figures)
        self._redis_errors = Counter(
            "conveyor_redis_errors",
            "Requests (and scrapes) that found Redis unreachable or refusing writes.",
            registry=self.registry,
        )
        self._failed_once = False

    def _guard(self, exc: Exception) -> None:
        if not self._failed_once:
            self._failed_once = True
            log.error("a metric could not be recorded (logged once): %r", exc)

    def answered(self, scope: Scope, status: int) -> None:
        try:
            route = scope.get("path_template") or "unmatched"
            method = cast(str, scope.get("method", ""))
            started = cast(dict[str, Any], scope).get(STARTED)
            took = time.perf_counter() - started if isinstance(started, float) else None
            self.figures.add(route, method, status, took)
            if status >= 400 and method == "POST" and route in _SUBMIT_ROUTES:
                self.figures.submit("", "", f"refused_{status}")
        except Exception as exc:
            self._guard(exc)

    def submitted(self, accepted: Iterable[Accepted]) -> None:
        try:
            for one in accepted:
                if one.created:
                    outcome = "accepted"
                else:
                    outcome = "unique_replayed" if one.unique else "replayed"
                self.figures.submit(one.job.type, one.job.queue, outcome)
        except Exception as exc:
            self._guard(exc)

    def redis_error(self) -> None:
        try:
            self._redis_errors.inc()
        except Exception as exc:
            self._guard(exc)


class RequestFigures(Collector):
    """Requests answered, by route template, method and status, their latency, and the
    submissions by type, queue and outcome: counted in plain numbers as they happen and
    made metric families when scraped.

    Every request passes here, so its cost is paid on every request: a dictionary lookup and
    an addition or two, where the library's labelled counters and histogram take a lock per
    increment and walk the buckets. The families are the library's, so is the exposition.
    Label values are bounded: route templates (never paths, which hold job ids), methods,
    statuses, registered job types and kept queues (a refused submission's are not labels:
    a caller could name any number of them). One event loop calls `add`, `submit` and
    `collect`, so nothing needs a lock.
    """

    def __init__(self) -> None:
        self._bounds = LATENCY_BUCKETS
        self._le = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._answers: dict[tuple[str, str, int], int] = {}
        # Per route and method: the answers in each bucket (not cumulative; the last one
        # past every bound), then the sum of their latencies.
        self._timings: dict[tuple[str, str], list[float]] = {}
        self._submits: dict[tuple[str, str, str], int] = {}

    def add(self, route: str, method: str, status: int, seconds: float | None) -> None:
        key = (route, method, status)
        self._answers[key] = self._answers.get(key, 0) + 1
        if seconds is None:
            return
        timing = self._timings.get((route, method))
        if timing is None:
            timing = self._timings[(route, method)] = [0.0] * (len(self._bounds) + 2)
        timing[bisect_left(self._bounds, seconds)] += 1
        timing[-1] += seconds

    def submit(self, type_: str, queue: str, outcome: str) -> None:
        key = (type_, queue, outcome)
        self._submits[key] = self._submits.get(key, 0) + 1

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "conveyor_http_requests",
            "HTTP requests answered, by route template, method and status.",
            labels=("route", "method", "status"),
        )
        for (route, method, status), count in self._answers.items():
            requests.add_metric([route, method, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "conveyor_http_request_duration_seconds",
            "From a request's reaching its route to its answer's start.",
            labels=("route", "method"),
        )
        for (route, method), timing in self._timings.items():
            buckets = list(zip(self._le, accumulate(timing[:-1]), strict=True))
            latency.add_metric([route, method], buckets, sum_value=timing[-1])
        yield latency
        submits = CounterMetricFamily(
            "conveyor_submits",
            "Submissions (each job of a batch), by outcome: accepted, replayed (a repeat under"
            " an Idempotency-Key), unique_replayed (a job not finished holds its unique key),"
            " or refused_<status>.",
            labels=("type", "queue", "outcome"),
        )
        for labels, count in self._submits.items():
            submits.add_metric(labels, count)
        yield submits


def metrics_of(state: State) -> ApiMetrics | None:
    found = state.get(METRICS_KEY)
    return found if isinstance(found, ApiMetrics) else None


# The depth operators graph and alert on has a sample even at 0, so its series never has a
# gap; any other status has one only while it holds jobs, which keeps a scrape of 1,000
# queues to a few thousand samples instead of 8,000 mostly zero.
_ALWAYS_SHOWN: Final = frozenset({JobStatus.QUEUED, JobStatus.ACTIVE})


class QueueFigures(Collector):
    """The queues' state as read for one scrape."""

    def __init__(self, stats: Sequence[QueueStats] | None) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "conveyor_redis_up", "1 when this scrape could read the queues from Redis."
        )
        up.add_metric([], 0.0 if self._stats is None else 1.0)
        yield up
        if self._stats is None:
            return
        jobs = GaugeMetricFamily(
            "conveyor_queue_jobs",
            "Jobs in each queue by status (queued and active always; others when not 0).",
            labels=("queue", "status"),
        )
        oldest = GaugeMetricFamily(
            "conveyor_queue_oldest_waiting_seconds",
            "How long the oldest queued job has waited (0: none waits).",
            labels=("queue",),
        )
        paused = GaugeMetricFamily("conveyor_queue_paused", "1: paused.", labels=("queue",))
        workers = GaugeMetricFamily(
            "conveyor_queue_workers", "Live workers serving the queue.", labels=("queue",)
        )
        for queue in self._stats:
            for status in JobStatus:
                count = queue.counts.get(status, 0)
                if count or status in _ALWAYS_SHOWN:
                    jobs.add_metric([queue.name, status.value], count)
            oldest.add_metric([queue.name], queue.oldest_queued_age or 0.0)
            paused.add_metric([queue.name], 1.0 if queue.paused else 0.0)
            if queue.workers is not None:
                workers.add_metric([queue.name], queue.workers)
        yield from (jobs, oldest, paused, workers)


@get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics",
    include_in_schema=False,
)
async def serve_metrics(
    request: Request[Any, Any, Any], jobs: NamedDependency[JobService]
) -> Response[bytes]:
    """This process's figures and the queues' state, in Prometheus's text format."""
    metrics = metrics_of(request.app.state)
    stats: Sequence[QueueStats] | None
    try:
        # One pipelined round trip: one script per queue (at most CONVEYOR_MAX_QUEUES).
        stats = await jobs.queues()
    except UnsupportedOperationError:
        stats = ()  # a backend that keeps no queue figures
    except QueueUnavailableError:
        stats = None
        if metrics is not None:
            metrics.redis_error()
    queues = CollectorRegistry(auto_describe=False)
    queues.register(QueueFigures(stats))
    body = generate_latest(queues)
    if metrics is not None:
        body = generate_latest(metrics.registry) + body
    return Response(body, media_type=_TEXT_FORMAT)
