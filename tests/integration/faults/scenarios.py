"""Fault scenarios shared by a fault test and the negative control that must see it fail."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.faults.checker import LedgerReader, Report
from tests.integration.faults.harness import (
    LEASE_S,
    RECOVER_TICK_S,
    Evidence,
    Load,
    Pool,
    fault_env,
    job_states,
    kill_busy_child,
    stale_writes,
    submit,
    wait_settled,
    with_patch,
)
from tests.integration.processes import Api


@dataclass
class Run:
    """A scenario's report plus what it observed along the way."""

    report: Report
    ledger: Path
    patch_report: Path | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def patch_lines(self) -> list[str]:
        if self.patch_report is None or not self.patch_report.exists():
            return []
        return self.patch_report.read_text().splitlines()


def _env(redis_url: str, tmp_path: Path, patch: str | None) -> tuple[dict[str, str], Path | None]:
    env = fault_env(redis_url, tmp_path / "ledger.jsonl")
    if patch is None:
        return env, None
    report = tmp_path / f"patch-{patch}.txt"
    return with_patch(env, patch, report), report


def sigkill_busy_children(
    redis_url: str,
    tmp_path: Path,
    *,
    jobs: int,
    rate: float,
    kills: int,
    every: float,
    processes: int,
    concurrency: int,
    job_seconds: float = 1.0,
    settle_within: float = 40.0,
    patch: str | None = None,
) -> Run:
    """W1: paced load of `jobs` sleep jobs; SIGKILL a busy child every `every` s.

    The API's process gets no patch (it only enqueues); the pool gets `patch`, if any.
    """
    api_env = fault_env(redis_url, tmp_path / "ledger.jsonl")
    env, patch_report = _env(redis_url, tmp_path, patch)
    env["CONVEYOR_KEY_PREFIX"] = api_env["CONVEYOR_KEY_PREFIX"]
    evidence = Evidence(tmp_path / "ledger.jsonl")
    ledger = LedgerReader(evidence.ledger_path)

    def body(_: int) -> Mapping[str, Any]:
        payload = {"mode": "sleep", "seconds": job_seconds}
        return {"type": "dummy", "payload": payload, "max_attempts": kills}

    with Api(api_env, tmp_path) as api, api.client() as client:
        with Pool(env, tmp_path, processes=processes, concurrency=concurrency) as pool:
            pool.wait_children(processes)
            started = time.monotonic()
            with Load(api.base, body, rate=rate, count=jobs, senders=2) as load:
                time.sleep(min(4.0, every))
                for _ in range(kills):
                    evidence.kills.append(kill_busy_child(pool, ledger))
                    time.sleep(every)
                load.wait(within=jobs / rate + 30)
            load_s = time.monotonic() - started
            # Everything the kills did not touch must finish; the killed jobs must be back
            # within the reclaim bound of the last kill, and finish after it.
            killed = {job_id for kill in evidence.kills for job_id, _ in kill.executions}
            wait_settled(client, set(load.acked) - killed, within=settle_within)
            reclaimed_by = evidence.kills[-1].ts + LEASE_S + RECOVER_TICK_S + 1.0
            final = wait_settled(
                client, load.acked, within=max(0.0, reclaimed_by - time.time()) + 2 * job_seconds
            )
            drained_s = time.monotonic() - started
            stale = stale_writes(redis_url, pool.prefix)
            pool.remember(int(e["pid"]) for e in ledger.starts())
            children = len(pool.children())
    sent = load.sent
    report = evidence.report(
        load.acked,
        final,
        stale,
        kills=len(evidence.kills),
        killed_executions=sum(len(k.executions) for k in evidence.kills),
        load_s=round(load_s, 1),
        drained_s=round(drained_s, 1),
    )
    facts = {
        "not_202": [s for s in sent if s.status != 202],
        "children_at_end": children,
    }
    return Run(report, evidence.ledger_path, patch_report, facts)


def stalled_holder(
    redis_url: str,
    tmp_path: Path,
    *,
    jobs: int = 2,
    job_seconds: float = 6.0,
    frozen_for: float = LEASE_S + 3.0,
    patch: str | None = None,
) -> Run:
    """W7: freeze (SIGSTOP) a child holding jobs past its lease, then let it go (SIGCONT).

    Timed so that the frozen holder's handlers are due the moment it resumes, while the new
    holder is still running them: the stale holder then tries to complete under a token that
    is no longer current (fencing must refuse it), or learns from its next renewal that the
    lease is gone (and must stop its copy).
    """
    api_env = fault_env(redis_url, tmp_path / "ledger.jsonl")
    env, patch_report = _env(redis_url, tmp_path, patch)
    env["CONVEYOR_KEY_PREFIX"] = api_env["CONVEYOR_KEY_PREFIX"]
    # Fencing must hold where nothing replaces a stalled process (a whole machine frozen):
    # the supervisor's watchdog would kill the frozen holder before it could resume.
    env["CONVEYOR_WATCHDOG_SECONDS"] = "0"
    evidence = Evidence(tmp_path / "ledger.jsonl")
    ledger = LedgerReader(evidence.ledger_path)
    body = {
        "type": "dummy",
        "payload": {"mode": "sleep", "seconds": job_seconds},
        "max_attempts": 3,
    }
    with Api(api_env, tmp_path) as api, api.client() as client:
        with Pool(env, tmp_path, processes=2, concurrency=jobs) as pool:
            pool.wait_children(2)
            ids = [submit(client, body) for _ in range(jobs)]
            deadline = time.monotonic() + 10
            while len({e["job_id"] for e in ledger.starts()}) < jobs:
                assert time.monotonic() < deadline, f"jobs never started: {ledger.events}"
                time.sleep(0.05)
            time.sleep(1.0)
            stop = kill_busy_child(pool, ledger, signal.SIGSTOP)
            evidence.kills.append(stop)
            time.sleep(frozen_for)
            resumed = time.time()
            os.kill(stop.pid, signal.SIGCONT)
            final = wait_settled(client, ids, within=job_seconds + 15)
            # Every execution, the resumed holder's included, writes its end line once it
            # learns its fate: wait for all of them (bounded), then read the final states.
            deadline = time.monotonic() + job_seconds + LEASE_S
            while ledger.open_executions() and time.monotonic() < deadline:
                time.sleep(0.1)
            final = job_states(client, ids)
            held = {job_id for job_id, _ in stop.executions}
            stale = stale_writes(redis_url, pool.prefix)
            pool.remember(int(e["pid"]) for e in ledger.starts())
    report = evidence.report(ids, final, stale, frozen_s=frozen_for)
    stale_ends = [
        e
        for e in ledger.events
        if e["event"] == "end" and int(e["pid"]) == stop.pid and e["job_id"] in held
    ]
    facts = {
        "stopped": stop,
        "resumed": resumed,
        "held": held,
        "stale_holder_ends": stale_ends,
        "final": final,
    }
    return Run(report, evidence.ledger_path, patch_report, facts)
