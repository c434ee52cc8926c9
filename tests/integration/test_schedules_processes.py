"""Cron schedules, accepted on a real Redis with real processes: three `conveyor worker`
supervisors and two API processes all run the scheduler; an every-second schedule makes one
job per tick, and after everything stopped for 10 s the misfire policy is honoured (one
catch-up job with `run_once`, none with `skip`).

Prints its figures (`pytest -s`).
"""

from __future__ import annotations

import itertools
import json
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.processes import Api, Conveyor, service_env

pytestmark = pytest.mark.integration

# A queue no worker serves: the jobs stay queued, so the test costs no job runs.
QUEUE = "cron-acceptance"
GRACE = 2
SCHEDULES = [
    {
        "name": f"beat-{policy.replace('_', '-')}",
        "every": 1,
        "type": "dummy",
        "payload": {"mode": "succeed"},
        "options": {"queue": QUEUE},
        "misfire": policy,
        "misfire_grace": GRACE,
    }
    for policy in ("run_once", "skip")
]
RUN = 30.0
DOWN = 10.0


def ticks_by_schedule(client: httpx.Client) -> dict[str, list[datetime]]:
    response = client.get("/jobs", params={"queue": QUEUE, "limit": 500})
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["next_cursor"] is None
    found: dict[str, list[datetime]] = {}
    for job in page["jobs"]:
        _, name, when = job["idempotency_key"].split(":", 2)
        found.setdefault(name, []).append(datetime.fromisoformat(when))
    return {name: sorted(ticks) for name, ticks in found.items()}


def start(env: dict[str, str], log_dir: Path) -> list[Conveyor]:
    """Three worker supervisors and two APIs, started together (the APIs waited for last)."""
    workers = [
        Conveyor(["worker", "--processes", "1", "--concurrency", "1"], env, log_dir)
        for _ in range(3)
    ]
    apis = [Api(env, log_dir) for _ in range(2)]
    for process in [*workers, *apis]:
        Conveyor.start(process)  # without waiting for an API to answer
    deadline = time.monotonic() + 20
    for api in apis:
        while True:
            try:
                if httpx.get(f"{api.base}/health/live", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, api.output()
            time.sleep(0.05)
    return [*workers, *apis]


def scheduler_lines(processes: list[Conveyor]) -> list[dict[str, Any]]:
    lines = []
    for process in processes:
        for line in process.output().splitlines():
            if line.startswith("{") and '"conveyor.scheduler"' in line:
                lines.append(json.loads(line))
    return lines


def misfires(processes: list[Conveyor]) -> list[dict[str, Any]]:
    return [line for line in scheduler_lines(processes) if "misfired" in line["event"]]


def test_every_second_schedule_fires_each_tick_once_and_honours_misfires(
    redis_url: str, tmp_path: Path
) -> None:
    env = service_env(redis_url, CONVEYOR_SCHEDULES=json.dumps(SCHEDULES))
    processes = start(env, tmp_path)
    try:
        api = processes[-1]
        assert isinstance(api, Api)
        with api.client() as client:
            time.sleep(1)  # every process is up and scheduling
            window_start = datetime.now(UTC)
            time.sleep(RUN)
            window_end = datetime.now(UTC)
            time.sleep(1.5)  # the last tick of the window is stored
            before = ticks_by_schedule(client)
        stopped_at = time.monotonic()
        for process in processes:  # all at once, then wait for each
            process.signal(signal.SIGTERM)
        for process in processes:
            process.stop()
        stop_took = time.monotonic() - stopped_at
        all_stopped = datetime.now(UTC)
        time.sleep(DOWN)
        restarted = start(env, tmp_path)
        processes += restarted
        api = restarted[-1]
        assert isinstance(api, Api)
        with api.client() as client:
            time.sleep(2)
            after = ticks_by_schedule(client)
    finally:
        for process in processes:
            if process.proc is not None and process.proc.poll() is None:
                process.stop()

    print()
    print(f"5 schedulers (3 worker supervisors, 2 APIs), {RUN:.0f} s window, every 1 s:")
    for name, ticks in before.items():
        in_window = [t for t in ticks if window_start < t <= window_end]
        repeats = sum(n - 1 for n in Counter(ticks).values())
        print(f"  {name}: {len(in_window)} jobs in the window, {repeats} ticks twice")
        assert 29 <= len(in_window) <= 31, (name, len(in_window))
        assert repeats == 0
        steps = {round((b - a).total_seconds(), 3) for a, b in itertools.pairwise(ticks)}
        assert steps == {1.0}, (name, steps)  # no tick missed either

    submits = [line for line in scheduler_lines(processes) if "job_id" in line]
    replayed = [line for line in submits if not line["new"]]
    print(f"  {len(submits)} ticks submitted in all, {len(replayed)} by two processes")
    assert replayed == []  # the compare-and-set gave each tick to one process

    lines = misfires(restarted)
    print(f"stopped everything ({stop_took:.1f} s to stop) for {DOWN:.0f} s, then restarted:")
    for schedule in SCHEDULES:
        name = str(schedule["name"])
        ticks = after[name]
        assert sum(n - 1 for n in Counter(ticks).values()) == 0
        last_before = max(t for t in ticks if t <= all_stopped)
        [misfire] = [line for line in lines if line["schedule"] == name]
        latest = datetime.fromisoformat(misfire["tick"])
        missed = round((latest - last_before).total_seconds())
        in_gap = [t for t in ticks if last_before < t <= latest]
        print(
            f"  {name} ({schedule['misfire']}): {missed} ticks missed, "
            f"{len(in_gap)} catch-up job(s), misfire handled by 1 of 5 processes"
        )
        assert missed >= DOWN
        expected = [latest] if schedule["misfire"] == "run_once" else []
        assert in_gap == expected
        resumed = [t for t in ticks if t > latest]
        assert resumed, name
        assert resumed[0] == latest + timedelta(seconds=1)


def test_on_rq_the_scheduler_process_submits_through_rqs_queues(
    redis_url: str, tmp_path: Path
) -> None:
    schedule = {**SCHEDULES[0], "name": "rq-beat"}
    env = service_env(redis_url, QUEUE_BACKEND="rq", CONVEYOR_SCHEDULES=json.dumps([schedule]))
    with (
        Api({**env, "CONVEYOR_SCHEDULER": "0"}, tmp_path) as api,
        Conveyor(["scheduler"], env, tmp_path) as scheduler,
        api.client() as client,
    ):
        deadline = time.monotonic() + 15
        while not ticks_by_schedule(client).get("rq-beat"):  # the scheduler is up
            assert time.monotonic() < deadline, scheduler.output()
            time.sleep(0.1)
        time.sleep(3)
        ticks = ticks_by_schedule(client)["rq-beat"]
        assert scheduler.stop() == 0, scheduler.output()
    print(f"\nQUEUE_BACKEND=rq, `conveyor scheduler`: {len(ticks) - 1} more jobs in 3 s")
    assert 2 <= len(ticks) - 1 <= 4, ticks
    assert len(set(ticks)) == len(ticks)
