"""Metrics, end to end: the API and a 2-process worker on a real Redis run a known mix of jobs,
and both `/metrics` endpoints, read with prometheus-client's own text parser, count exactly
what happened, also after the worker's children were SIGKILLed and replaced."""

from __future__ import annotations

import re
import signal
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from entrypoints.local_redis import LocalRedis
from tests.integration.faults.harness import Pool
from tests.integration.hardening.streams import CommandCounter
from tests.integration.processes import Api, free_port, service_env, wait_for_job

Figures = dict[tuple[str, frozenset[tuple[str, str]]], float]
DUMMY = "dummy"
DONE = {"succeeded", "dead", "cancelled", "expired"}
SCRAPES = 20


def scrape(url: str) -> Figures:
    answer = httpx.get(url, timeout=5.0)
    assert answer.status_code == 200, answer.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(figures: Figures, name: str, **labels: str) -> float:
    return figures.get((name, frozenset(labels.items())), 0.0)


def total(figures: Figures, name: str) -> float:
    return sum(v for (n, _), v in figures.items() if n == name)


class Tally:
    """Every answer the test's client got, by the route template the API should count."""

    def __init__(self) -> None:
        self.answers: Counter[tuple[str, str, str]] = Counter()

    def hook(self, response: httpx.Response) -> None:
        path = re.sub(r"/jobs/[0-9a-f]{32}", "/jobs/{job_id}", response.request.url.path)
        self.answers[(path, response.request.method, str(response.status_code))] += 1


def submit(client: httpx.Client, payload: dict[str, Any], **options: Any) -> str:
    answer = client.post("/jobs", json={"type": DUMMY, "payload": payload, **options})
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def wait_active(client: httpx.Client, job_id: str) -> None:
    wait_for_job(client, job_id, {"active"})


def test_both_endpoints_count_a_known_mix_exactly_across_a_child_killed_and_replaced(
    redis_url: str, tmp_path: Path
) -> None:
    # A long lease: no renewal or recovery tick falls inside the test, so those count 0.
    env = service_env(
        redis_url,
        CONVEYOR_DUMMY_FAULTS="1",
        CONVEYOR_LEASE_SECONDS="120",
        CONVEYOR_CANCEL_GRACE_SECONDS="1",
    )
    tally = Tally()
    metrics_port = free_port()
    began = time.monotonic()
    with (
        Api(env, tmp_path) as api,
        httpx.Client(
            base_url=api.base, timeout=5.0, event_hooks={"response": [tally.hook]}
        ) as client,
        Pool(
            {**env, "CONVEYOR_METRICS_PORT": str(metrics_port)},
            tmp_path,
            processes=2,
            concurrency=4,
        ) as pool,
    ):
        pool.wait_children(2)
        worker_url = f"http://127.0.0.1:{metrics_port}/metrics"
        # The crash first, alone: the jobs its process held besides would go back to the
        # queue uncharged, and run again.
        crash = submit(client, {"mode": "crash"}, max_attempts=1)
        assert wait_for_job(client, crash, DONE)["status"] == "dead"
        pool.wait_children(2)
        succeed = [submit(client, {"mode": "succeed"}) for _ in range(5)]
        flaky = [submit(client, {"mode": "fail", "times": 1}) for _ in range(2)]
        fatal = submit(client, {"mode": "fatal"})
        timeout = submit(client, {"mode": "sleep", "seconds": 30}, timeout=0.5, max_attempts=1)
        cancel = submit(client, {"mode": "sleep", "seconds": 30})
        wait_active(client, cancel)
        assert client.post(f"/jobs/{cancel}/cancel").status_code == 202
        ends = {
            "succeeded": [*succeed, *flaky],
            "dead": [fatal, crash, timeout],
            "cancelled": [cancel],
        }
        for status, ids in ends.items():
            for job_id in ids:
                assert wait_for_job(client, job_id, DONE)["status"] == status
        pool.wait_children(2)

        # Then both children SIGKILLed while one runs a job of 2 attempts.
        killed = submit(client, {"mode": "sleep", "seconds": 1.5}, max_attempts=2)
        wait_active(client, killed)
        running = scrape(worker_url)
        doomed = pool.wait_children(2)
        for child in doomed:
            child.send_signal(signal.SIGKILL)
        psutil.wait_procs(doomed, timeout=5)
        view = wait_for_job(client, killed, DONE)
        assert view["status"] == "succeeded"
        assert view["attempts"] == 2
        pool.wait_children(2)
        asked = Counter(tally.answers)
        api_figures = scrape(f"{api.base}/metrics")
        worker = scrape(worker_url)
        elapsed = time.monotonic() - began
        assert pool.stop() == 0

    # The worker: 12 jobs, 15 attempts (the flaky ones and the killed one ran twice).
    def jobs(outcome: str) -> float:
        return value(worker, "conveyor_jobs_total", type=DUMMY, queue="default", outcome=outcome)

    def per_job(name: str) -> float:
        return value(worker, name, type=DUMMY, queue="default")

    print(
        f"\nworker figures after {elapsed:.1f} s:",
        {
            name: total(worker, name)
            for name in sorted({n for n, _ in worker})
            if name.startswith("conveyor_") and not name.endswith("_bucket")
        },
    )
    assert per_job("conveyor_jobs_started_total") == 15
    assert jobs("succeeded") == 8  # 5 succeed, 2 flaky on their 2nd attempt, the killed one
    assert jobs("failed") == 3  # a retry scheduled: the 2 flaky and the killed one's first
    assert jobs("dead") == 3  # fatal, crash (1 attempt), timeout (1 attempt)
    assert jobs("cancelled") == 1
    assert total(worker, "conveyor_jobs_total") == 15
    assert per_job("conveyor_jobs_timed_out_total") == 1
    assert per_job("conveyor_jobs_lost_total") == 2  # the crash, the killed one's 1st attempt
    assert per_job("conveyor_job_pickup_seconds_count") == 12  # every job's first claim
    # Every attempt whose handler came to an end of its own: not the 2 lost ones, nor the
    # cancelled one (its sleep ignores cancel requests: the worker stopped it after the grace).
    assert per_job("conveyor_job_run_seconds_count") == 12
    assert value(worker, "conveyor_worker_restarts_total", cause="exited") == 1  # the crash
    assert value(worker, "conveyor_worker_restarts_total", cause="killed") == 2
    assert total(worker, "conveyor_worker_restarts_total") == 3
    assert total(worker, "conveyor_leases_renewed_total") == 0
    assert total(worker, "conveyor_leases_recovered_total") == 0
    assert total(worker, "conveyor_stale_writes_rejected_total") == 0
    assert value(running, "conveyor_jobs_in_flight", type=DUMMY, queue="default") == 1
    assert total(worker, "conveyor_jobs_in_flight") == 0

    # The API: every submission and every answer its client got.
    def submits(outcome: str) -> float:
        return value(
            api_figures, "conveyor_submits_total", type=DUMMY, queue="default", outcome=outcome
        )

    print("API requests counted:", total(api_figures, "conveyor_http_requests_total"))
    assert submits("accepted") == 12
    assert total(api_figures, "conveyor_submits_total") == 12
    for (route, method, status), count in asked.items():
        counted = value(
            api_figures, "conveyor_http_requests_total", route=route, method=method, status=status
        )
        assert counted == count, (route, method, status)
    live = value(
        api_figures,
        "conveyor_http_requests_total",
        route="/health/live",
        method="GET",
        status="200",
    )
    assert live == 1  # the harness's readiness probe
    assert total(api_figures, "conveyor_http_requests_total") == sum(asked.values()) + 1
    assert total(api_figures, "conveyor_redis_errors_total") == 0
    assert value(api_figures, "conveyor_redis_up") == 1
    for status, count in {"succeeded": 8, "dead": 3, "cancelled": 1, "queued": 0}.items():
        assert value(api_figures, "conveyor_queue_jobs", queue="default", status=status) == count
    assert value(api_figures, "conveyor_queue_workers", queue="default") == 2
    assert value(api_figures, "conveyor_queue_paused", queue="default") == 0


def test_a_worker_whose_metrics_port_is_taken_stops_with_one_line_naming_it(
    redis_url: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        pool = Pool(service_env(redis_url), tmp_path, processes=1, concurrency=1)
        pool.args += ["--metrics-port", str(port)]
        with pool:
            code = pool.wait(15)
    lines = [line for line in pool.output().splitlines() if "metrics port" in line]
    assert code == 2
    assert len(lines) == 1
    assert f"127.0.0.1:{port} is taken" in lines[0]


def test_the_api_scrape_reads_1000_queues_in_one_round_trip_of_one_script_each(
    tmp_path: Path,
) -> None:
    """The scrape's cost in Redis grows by one script per known queue and nothing else, sent
    as one pipeline. How long it takes is printed here, never asserted: on a shared machine
    a time bound fails for reasons of the machine's."""
    with LocalRedis(data_dir=tmp_path / "redis") as server:
        # No scheduler in this API: its polls would land in the count.
        env = service_env(server.url, CONVEYOR_SCHEDULER="0")
        commands = CommandCounter(server.url)
        with Api(env, tmp_path) as api, api.client() as client:
            jobs = [
                {"type": DUMMY, "payload": {"mode": "succeed"}, "queue": f"q{n:04d}"}
                for n in range(1000)
            ]
            assert client.post("/jobs/batch", json={"jobs": jobs}).status_code == 202
            assert len(client.get("/queues").json()["queues"]) == 1000
            client.get("/metrics")  # the scripts loaded, the connection made
            times = []
            before = commands.snapshot()
            for _ in range(SCRAPES):
                began = time.perf_counter()
                answer = client.get("/metrics")
                times.append(time.perf_counter() - began)
                assert answer.status_code == 200
            spent = commands.snapshot() - before
            figures = scrape(f"{api.base}/metrics")
        commands.close()
    times.sort()
    per_scrape = sum(spent.values()) / SCRAPES
    print(
        f"\n/metrics with 1,000 queues: p50 {times[SCRAPES // 2] * 1000:.0f} ms, max "
        f"{times[-1] * 1000:.0f} ms, {per_scrape:.1f} Redis commands per scrape ({dict(spent)})"
    )
    queued = {labels for name, labels in figures if name == "conveyor_queue_jobs"}
    assert len(queued) == 1000 * 2  # queued and active; the other statuses hold none
    assert value(figures, "conveyor_queue_jobs", queue="q0999", status="queued") == 1
    # One script per queue (INFO commandstats counts the commands inside it too: a fixed
    # number, however many jobs the queue holds), and the known queues' list.
    assert spent["evalsha"] == 1000 * SCRAPES, dict(spent)
    assert spent["smembers"] == SCRAPES, dict(spent)
    assert per_scrape <= 1000 * 15, dict(spent)
