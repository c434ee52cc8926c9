"""Rate and concurrency limits per job type on a real Redis, with real worker processes.

Acceptance figures (printed with ``pytest -s``):
- `email` limited to 20/s, 4 worker processes x 50: 400 emails take 19 to 21.5 s, and no
  1-second window holds more than 20 starts (from the audit log).
- `report` limited to 2, 3 worker processes: never more than 2 running, sampled every 50 ms
  and from the audit log, including while one worker process is SIGKILLed mid-report; the
  killed slot is taken again within the lease + 1 s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def wait_ended(ledger: LedgerReader, ids: Sequence[str], within: float) -> list[dict[str, Any]]:
    """Wait until every job of `ids` succeeded; answers the ledger's events."""
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
        assert time.monotonic() < deadline, f"{len(wanted - done)} of {len(wanted)} not done"
        time.sleep(0.05)


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
        events = wait_ended(LedgerReader(path), ids, within=40.0)
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


def test_a_concurrency_limit_holds_report_to_2_on_3_processes_through_a_sigkill(
    redis_url: str, tmp_path: Path
) -> None:
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
        for n in range(6)
    ]
    active_key = "{" + env["CONVEYOR_KEY_PREFIX"] + ":default}:index:active"
    client = redis.Redis.from_url(redis_url)
    killed: dict[str, Any] = {}
    samples: list[tuple[int, int]] = []  # (active in Redis, running in live processes)
    stop = threading.Event()
    watcher = LedgerReader(path)

    def sample() -> None:
        while not stop.is_set():
            stored = int(client.zcard(active_key))
            dead = killed.get("pid")
            running = sum(
                len(held) for pid, held in watcher.open_executions().items() if pid != dead
            )
            samples.append((stored, running))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        with Pool(env, tmp_path, processes=3, concurrency=4) as pool:
            children = {c.pid for c in pool.wait_children(3)}
            sampler.start()
            ids = submit(env, reports)
            ledger = LedgerReader(path)
            deadline = time.monotonic() + 20
            while True:  # kill a process holding a report, once two run
                running = {p: h for p, h in ledger.open_executions().items() if p in children}
                if sum(len(h) for h in running.values()) == 2:
                    break
                assert time.monotonic() < deadline, "two reports never ran at once"
                time.sleep(0.02)
            time.sleep(0.3)
            pid, held = next(iter(running.items()))
            killed.update(pid=pid, at=time.time(), job=held[0][0])
            os.kill(pid, signal.SIGKILL)
            events = wait_ended(ledger, ids, within=40.0)
    finally:
        stop.set()
        if sampler.is_alive():
            sampler.join()
        client.close()
    starts = {(e["job_id"], e["token"]): e for e in events if e["event"] == "start"}
    # An attempt runs from its start until its handler was done (its end line is written
    # after its settlement, which frees the slot); one in the killed process, at most until
    # the kill (its end is written later, by the supervisor that saw the process die).
    ends = {
        (e["job_id"], e["token"]): e.get("handler_ended", e["ts"])
        for e in events
        if e["event"] == "end"
    }
    intervals = [
        (e["ts"], min(ends.get(key, killed["at"]), killed["at"]))
        if e["pid"] == killed["pid"]
        else (e["ts"], ends[key])
        for key, e in starts.items()
    ]
    after_kill = sorted(e["ts"] for e in starts.values() if e["ts"] > killed["at"])
    reused_in = after_kill[0] - killed["at"]
    most_stored = max(s for s, _ in samples)
    most_running = max(r for _, r in samples)
    from_ledger = most_overlapping(intervals)
    print(
        f"\nconcurrency 2, 3 processes x 4, lease {lease} s: {len(ids)} reports, "
        f"{len(starts)} attempts; one process SIGKILLed mid-report; most at once: "
        f"{most_stored} active in Redis and {most_running} running in live processes over "
        f"{len(samples)} samples 50 ms apart, {from_ledger} from the audit log; the killed "
        f"slot taken again {reused_in:.2f} s after the kill"
    )
    assert most_stored <= 2
    assert most_running <= 2
    assert from_ledger <= 2
    assert reused_in <= lease + 1.0
