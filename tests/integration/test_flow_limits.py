"""Rate and concurrency limits per job type on a real Redis, with real worker processes.

Acceptance figures (printed with ``pytest -s``):
- `email` limited to 20/s, 4 worker processes x 50: 400 emails take 19 to 21.5 s, and no
  1-second window holds more than 20 starts (from the audit log).
- `report` limited to 2, 3 worker processes: never more than 2 running, sampled every 50 ms
  and from the audit log, through two SIGKILLs mid-report (a whole `conveyor worker`, as
  when a machine is lost, then one supervised worker process); each killed slot is taken
  again within the lease + 1 s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from domain.submission import MAX_BATCH, Submission
from entrypoints.container import build_container
from entrypoints.settings import Settings
from tests.integration.faults.checker import LedgerReader
from tests.integration.faults.harness import Pool
from tests.integration.processes import service_env


def submit(env: dict[str, str], submissions: Sequence[Submission]) -> list[str]:
    """Store the jobs as the API does (validated, in batches), from this process."""

    async def main() -> list[str]:
        container = build_container(Settings.from_env(env))
        service = container.job_service()
        try:
            ids: list[str] = []
            for at in range(0, len(submissions), MAX_BATCH):
                accepted = await service.submit_batch(submissions[at : at + MAX_BATCH])
                ids += [a.job.id for a in accepted]
            return ids
        finally:
            await container.backend().connection.close()

    return asyncio.run(main())


def wait_ended(
    ledger: LedgerReader, ids: Sequence[str], within: float, env: dict[str, str]
) -> list[dict[str, Any]]:
    """Wait until every job of `ids` succeeded; answers the ledger's events. On failure, says
    what Redis holds of the jobs that did not succeed and what the ledger saw of them."""
    wanted = set(ids)
    deadline = time.monotonic() + within
    while True:
        ledger.poll()
        done = {
            e["job_id"]
            for e in ledger.events
            if e["event"] == "end" and e.get("outcome") == "succeeded"
        }
        if wanted <= done:
            return ledger.events
        if time.monotonic() >= deadline:
            missing = sorted(wanted - done)
            raise AssertionError(
                f"{len(missing)} of {len(wanted)} not done\n"
                + "\n".join(stored(env, job_id, ledger.events) for job_id in missing)
            )
        time.sleep(0.05)


def stored(env: dict[str, str], job_id: str, events: Sequence[dict[str, Any]]) -> str:
    """Job `job_id` as Redis holds it (its payload left out), and its lines in the ledger."""
    base = "{" + env["CONVEYOR_KEY_PREFIX"] + ":default}:"
    client = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
    try:
        job = client.hgetall(base + "job:" + job_id)
        where = {
            name: client.zscore(base + name, job_id)
            for name in ("queued", "active", "delayed", "limited:report")
        }
    finally:
        client.close()
    job.pop("payload", None)
    lines = [e for e in events if e["job_id"] == job_id]
    return f"job {job_id}: {job}\n  in {where}\n  ledger: {lines}"


def most_in_window(times: Sequence[float], window: float) -> int:
    """The most of `times` in any half-open window [t, t + window)."""
    ordered = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(ordered):
        while ordered[first] <= at - window:
            first += 1
        most = max(most, last - first + 1)
    return most


def most_overlapping(intervals: Sequence[tuple[float, float]]) -> int:
    """The most of `intervals` (start, end) open at one moment (an end before a start at
    the same time)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.mark.alone
def test_a_rate_limit_holds_400_emails_on_4_processes_to_20_starts_a_second(
    redis_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    env = service_env(
        redis_url, CONVEYOR_RATE_LIMITS='{"email": "20/s"}', CONVEYOR_AUDIT_LOG=str(path)
    )
    emails = [
        Submission(
            type="email",
            payload={"to": f"user{n}@example.com", "subject": f"hello {n}", "body": "hi"},
        )
        for n in range(400)
    ]
    with Pool(env, tmp_path, processes=4, concurrency=50) as pool:
        pool.wait_children(4)
        began = time.time()
        ids = submit(env, emails)
        events = wait_ended(LedgerReader(path), ids, within=40.0, env=env)
    starts = [e for e in events if e["event"] == "start"]
    ends = [e["ts"] for e in events if e["event"] == "end"]
    took = max(ends) - began
    claimed = most_in_window([e["started_at"] for e in starts], 1.0)
    seen = most_in_window([e["ts"] for e in starts], 1.0)
    processes = len({e["pid"] for e in starts})
    print(
        f"\nrate 20/s, 4 processes x 50: {len(ids)} emails in {took:.2f} s "
        f"({len(ids) / took:.1f}/s), {len(starts)} starts on {processes} processes; "
        f"most starts in any 1 s window: {claimed} by the claims' time (Redis clock), "
        f"{seen} by the workers' clocks as they began"
    )
    assert len(starts) == len(ids)
    assert 19.0 <= took <= 21.5
    assert claimed <= 20


def running_on(
    ledger: LedgerReader, pids: set[int], dead: Collection[int] = (), within: float = 20.0
) -> int:
    """Wait until a report runs in one of `pids` while two run in all the live processes (not
    in `dead`, whose attempts never end in the log); answers its pid."""
    deadline = time.monotonic() + within
    while True:
        running = {p: h for p, h in ledger.open_executions().items() if p not in dead}
        if sum(len(held) for held in running.values()) == 2:
            found = [pid for pid in running if pid in pids]
            if found:
                return found[0]
        assert time.monotonic() < deadline, "no report ran where wanted"
        time.sleep(0.02)


@pytest.mark.alone
def test_a_concurrency_limit_holds_report_to_2_on_3_processes_through_sigkills(
    redis_url: str, tmp_path: Path
) -> None:
    """Two kills: a whole `conveyor worker` with its supervisor, as when a machine is lost
    (nobody settles its attempts: their slots come back when their leases lapse), then a
    worker process whose supervisor lives (it settles the process's attempts at once)."""
    lease = 1.5
    path = tmp_path / "audit.jsonl"
    env = service_env(
        redis_url,
        CONVEYOR_CONCURRENCY_LIMITS='{"report": 2}',
        CONVEYOR_AUDIT_LOG=str(path),
        CONVEYOR_LEASE_SECONDS=str(lease),
        CONVEYOR_RECOVER_INTERVAL_SECONDS="0.5",
    )
    reports = [
        Submission(type="report", payload={"name": f"r{n}", "rows": 10, "seconds": 1.5})
        for n in range(10)
    ]
    active_key = "{" + env["CONVEYOR_KEY_PREFIX"] + ":default}:index:active"
    client = redis.Redis.from_url(redis_url)
    kills: dict[int, float] = {}  # pid -> when it was killed
    samples: list[tuple[int, int]] = []  # (active in Redis, running in live processes)
    stop = threading.Event()
    watcher = LedgerReader(path)

    def sample() -> None:
        while not stop.is_set():
            stored = int(client.zcard(active_key))
            running = sum(
                len(held) for pid, held in watcher.open_executions().items() if pid not in kills
            )
            samples.append((stored, running))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        with Pool(env, tmp_path, processes=1, concurrency=4) as lone:
            (alone,) = (c.pid for c in lone.wait_children(1))
            sampler.start()
            ids = submit(env, reports)
            ledger = LedgerReader(path)
            running_on(ledger, {alone})  # alone, it holds both slots
            with Pool(env, tmp_path, processes=2, concurrency=4) as pair:
                supervised = {c.pid for c in pair.wait_children(2)}
                running_on(ledger, {alone})
                kills[alone] = time.time()
                lone.kill_tree()  # the supervisor too: nobody settles its attempts
                pid = running_on(ledger, supervised, dead=kills)
                time.sleep(0.3)
                kills[pid] = time.time()
                os.kill(pid, signal.SIGKILL)  # its supervisor settles its attempt at once
                events = wait_ended(ledger, ids, within=40.0, env=env)
    finally:
        stop.set()
        if sampler.is_alive():
            sampler.join()
        client.close()
    starts = {(e["job_id"], e["token"]): e for e in events if e["event"] == "start"}
    # An attempt runs from its start until its handler was done (its end line is written
    # after its settlement, which frees the slot); one in a killed process, at most until
    # the kill (its end, if any, is written later, by a supervisor that saw it die).
    ends = {
        (e["job_id"], e["token"]): e.get("handler_ended", e["ts"])
        for e in events
        if e["event"] == "end"
    }
    intervals = [
        (e["ts"], min(ends.get(key, kills[e["pid"]]), kills[e["pid"]]))
        if e["pid"] in kills
        else (e["ts"], ends[key])
        for key, e in starts.items()
    ]
    reused = {
        pid: min(e["ts"] for e in starts.values() if e["ts"] > at) - at for pid, at in kills.items()
    }
    most_stored = max(s for s, _ in samples)
    most_running = max(r for _, r in samples)
    from_ledger = most_overlapping(intervals)
    print(
        f"\nconcurrency 2, 3 processes x 4, lease {lease} s: {len(ids)} reports, "
        f"{len(starts)} attempts; most at once: {most_stored} active in Redis and "
        f"{most_running} running in live processes over {len(samples)} samples 50 ms apart, "
        f"{from_ledger} from the audit log; a slot taken again {reused[alone]:.2f} s after a "
        f"whole worker (supervisor too) was SIGKILLed mid-report, {reused[pid]:.2f} s after a "
        f"supervised worker process was"
    )
    assert most_stored <= 2
    # Not asserted: a sampled execution is open until its end line, which is written after
    # its settlement gave the slot back, so on a busy machine the next start can be sampled
    # beside it. The audit log's start-to-handler_ended intervals measure the same precisely.
    assert from_ledger <= 2
    assert max(reused.values()) <= lease + 1.0
