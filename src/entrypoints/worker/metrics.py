"""Prometheus metrics of a `conveyor worker`: its attempts, leases and child processes.

A worker is a supervisor and N children, and a child can die at any moment (a crashing job,
SIGKILL, the watchdog), so the figures cannot live in a child's memory: every process writes
its own into a file of prometheus-client's multiprocess mode, in a directory the supervisor
makes for this run, and the supervisor serves `/metrics` by adding the files up. A counter
written before a child died stays in its file, so the totals survive the child's death and
its replacement; the in-flight gauge of a dead child is dropped with its file.

The figures come from the attempt observers (see `observers`): what the backend stored,
counted once, in the process that learnt it (a child for the attempts it settled, the
supervisor for those of a child that died).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from domain.jobs import Lease
from entrypoints.worker.endings import LEASE_LOST
from entrypoints.worker.metrics_env import MULTIPROC_ENV
from entrypoints.worker.observers import AttemptEnd, AttemptObserver, PoolObserver

log = logging.getLogger("conveyor.worker")

# Run times from a no-op to the longest timeouts; pickups from a busy loop to a backlog.
RUN_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
PICKUP_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def use_directory(path: str) -> None:
    """Write this process's figures into `path`, from now on.

    The library decides where values live when it is imported, so it is told again here, in
    each process, before any metric exists. By default it asks the kernel for the process id
    at every increment, to notice a fork; a worker process never forks, so its id is read once.
    """
    os.environ[MULTIPROC_ENV] = path
    pid = os.getpid()
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: pid)  # type: ignore[no-untyped-call]


class MetricsServer:
    """The supervisor's `/metrics`: the sum of every process's files, served from a thread."""

    def __init__(self, host: str, port: int) -> None:
        self._dir = tempfile.mkdtemp(prefix="conveyor-metrics-")
        use_directory(self._dir)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_PoolFigures(self._dir))
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise MetricsPortError(host, port, exc) from None
        log.info("serving metrics", extra={"host": host, "port": port})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        shutil.rmtree(self._dir, ignore_errors=True)


class MetricsPortError(Exception):
    def __init__(self, host: str, port: int, cause: OSError) -> None:
        reason = (
            "is taken" if cause.errno == errno.EADDRINUSE else f"cannot be bound ({cause.strerror})"
        )
        super().__init__(
            f"the metrics port {host}:{port} {reason} "
            "(--metrics-port / CONVEYOR_METRICS_PORT); stopping"
        )


class WorkerMetrics(AttemptObserver, PoolObserver):
    """Counts attempts as the observers hear of them: in a child, those it ran; in the
    supervisor, those of children that died, and the children it replaced."""

    def __init__(self) -> None:
        labels = ("type", "queue")
        self._started = Counter("conveyor_jobs_started", "Attempts started.", labels, registry=None)
        self._ended = Counter(
            "conveyor_jobs",
            "Attempts ended, by the status their settlement stored (`failed`: a retry is"
            " scheduled) or `lease_lost`, `released`, `left_to_lease`.",
            (*labels, "outcome"),
            registry=None,
        )
        self._timed_out = Counter(
            "conveyor_jobs_timed_out", "Attempts cut at their timeout.", labels, registry=None
        )
        self._lost = Counter(
            "conveyor_jobs_lost",
            "Attempts whose worker process died running them (a crash, a kill, the watchdog).",
            labels,
            registry=None,
        )
        self._run = Histogram(
            "conveyor_job_run_seconds",
            "How long attempts ran, to their settlement.",
            labels,
            buckets=RUN_BUCKETS,
            registry=None,
        )
        self._pickup = Histogram(
            "conveyor_job_pickup_seconds",
            "From a job's being ready (submitted, or its run_at) to its first claim.",
            labels,
            buckets=PICKUP_BUCKETS,
            registry=None,
        )
        self._renewed = Counter("conveyor_leases_renewed", "Lease renewals.", registry=None)
        self._recovered = Counter(
            "conveyor_leases_recovered",
            "Jobs whose lapsed leases a recovery sweep sent back.",
            registry=None,
        )
        self._stale = Counter(
            "conveyor_stale_writes_rejected",
            "Writes about an attempt refused because its lease was no longer the job's.",
            registry=None,
        )
        self._unreplicated = Counter(
            "conveyor_settlements_unreplicated",
            "Attempts settled on the Redis primary that fewer replicas than"
            " CONVEYOR_MIN_REPLICAS confirmed in time (a failover then runs the job again).",
            registry=None,
        )
        self._restarts = Counter(
            "conveyor_worker_restarts",
            "Worker processes replaced, by cause.",
            ("cause",),
            registry=None,
        )
        # Children by label values, looked up once: `labels()` costs more than the increment.
        self._per_job: dict[tuple[str, str], _PerJob] = {}
        self._outcomes: dict[tuple[str, str, str], Callable[[], None]] = {}

    def _job(self, lease: Lease) -> _PerJob:
        job = lease.job
        key = (job.type, job.queue)
        found = self._per_job.get(key)
        if found is None:
            found = self._per_job[key] = _PerJob(self, key)
        return found

    def started(self, lease: Lease) -> None:
        per = self._job(lease)
        per.started()
        job = lease.job
        if job.attempts == 1 and job.started_at is not None:
            # Both times are Redis's clock, so no two machines' clocks are compared.
            ready = job.run_at if job.run_at is not None else job.created_at
            per.pickup((job.started_at - ready).total_seconds())

    def renewed(self, lease: Lease) -> None:
        self._renewed.inc()

    def ended(self, lease: Lease, end: AttemptEnd) -> None:
        job = lease.job
        key = (job.type, job.queue, end.outcome)
        count = self._outcomes.get(key)
        if count is None:
            count = self._outcomes[key] = self._ended.labels(*key).inc
        count()
        if end.error_kind is not None or end.elapsed is not None:
            per = self._job(lease)
            if end.lost:
                per.lost()
            elif end.timed_out:
                per.timed_out()
            if end.elapsed is not None:
                per.ran(end.elapsed)
        if end.outcome == LEASE_LOST:
            self._stale.inc()
        if end.unreplicated:
            self._unreplicated.inc()

    def recovered(self, moved: int) -> None:
        self._recovered.inc(moved)

    def child_replaced(self, cause: str) -> None:
        self._restarts.labels(cause).inc()


class _PerJob:
    """The metric children of one job type and queue."""

    def __init__(self, metrics: WorkerMetrics, key: tuple[str, str]) -> None:
        self.started = metrics._started.labels(*key).inc
        self.timed_out = metrics._timed_out.labels(*key).inc
        self.lost = metrics._lost.labels(*key).inc
        self.ran = metrics._run.labels(*key).observe
        self.pickup = metrics._pickup.labels(*key).observe


# How each counter's family moves the attempts in flight.
_IN_FLIGHT_SIGNS: Final = {"conveyor_jobs_started": 1, "conveyor_jobs": -1}


class _PoolFigures(Collector):
    """Every process's figures added up, and the attempts in flight derived from them.

    An attempt in flight is one started and not yet ended: every attempt counted started
    is counted ended exactly once (by its child, or by the supervisor if the child died), so
    the difference needs no write per job and no gauge a dying child could leave behind.
    """

    def __init__(self, path: str) -> None:
        self._files = multiprocess.MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        families: list[Metric] = list(self._files.collect())  # type: ignore[no-untyped-call]
        running: Tally[tuple[str, str]] = Tally()
        for family in families:
            sign = _IN_FLIGHT_SIGNS.get(family.name)
            if sign is None:
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = (sample.labels["type"], sample.labels["queue"])
                    running[key] += int(sample.value) * sign
        in_flight = GaugeMetricFamily(
            "conveyor_jobs_in_flight",
            "Attempts started and not yet ended.",
            labels=("type", "queue"),
        )
        for key, count in sorted(running.items()):
            in_flight.add_metric(key, count)
        yield from families
        yield in_flight
