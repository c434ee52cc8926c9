"""The witness ledger and the checker that turns it into the fault tests' figures.

Three sources of truth, none trusted alone (reliability.md §7.1):

- the *acked set*: jobs the API answered ``202`` (the client-side ledger, see `harness.py`);
- Redis's *final state* of each of those jobs, read through the API after the drain;
- the *witness ledger*: JSON lines every worker process appends with one ``os.write`` on an
  O_APPEND file (``CONVEYOR_AUDIT_LOG``), outside Redis, so a Redis fault cannot erase them
  and a SIGKILL cannot tear one:
  ``start`` (before the handler runs), ``renewed`` (after each successful lease renewal) and
  ``end`` (when the attempt's outcome is recorded; ``succeeded`` only when Redis accepted the
  completion under that attempt's token; ``unreplicated`` when fewer replicas than
  ``CONVEYOR_MIN_REPLICAS`` confirmed it, so a failover may still lose it).

`check` computes from them:

- ``lost``: acked jobs that neither succeeded nor are dead;
- ``dup_completions``: jobs with more than one accepted completion (``end`` ``succeeded``);
- ``extra_runs``: executions beyond the first, per job;
- ``live_overlap``: pairs of executions of one job that held a live lease at the same time.
  An execution holds one from each proof of life (its ``start``, each ``renewed`` line) for
  a lease length, and never after its ``end`` or its process's death. So the second started
  while the first's lease was live (its latest proof before that start + lease, before the
  first ended), or the first was still told "renewed" while the second ran (a renewal Redis
  should have refused);
- reclaim latency of the jobs in flight in a process the test killed: the kill to that job's
  next ``start``.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Ledger timestamps are the workers' `time.time()` taken around a Redis round trip; leases
# expire on Redis's clock. Both clocks are this machine's, but a proof of life is written a
# moment *after* Redis extended the lease, so a reclaim right on time can look a few
# milliseconds early. Overlaps shorter than this are not counted.
OVERLAP_SLACK_S = 0.2

TERMINAL = frozenset({"succeeded", "dead", "cancelled", "expired"})


# -- the witness ledger -----------------------------------------------------------------------


class LedgerReader:
    """Reads a ledger that worker processes are still appending to.

    Only whole lines are returned: a line being written while we read is kept for the next
    call. Lines that are not JSON objects are kept in `garbled` (a torn or foreign write is
    itself a finding).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.events: list[dict[str, Any]] = []
        self.garbled: list[str] = []

    def poll(self) -> list[dict[str, Any]]:
        """Read what was appended since the last call; answers the new events."""
        try:
            with self.path.open("rb") as ledger:
                ledger.seek(self._offset)
                chunk = ledger.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        fresh: list[dict[str, Any]] = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                event = json.loads(raw)
            except ValueError:
                self.garbled.append(raw.decode(errors="replace"))
                continue
            if not isinstance(event, dict) or "event" not in event or "job_id" not in event:
                self.garbled.append(raw.decode(errors="replace"))
                continue
            fresh.append(event)
        self.events.extend(fresh)
        return fresh

    def open_executions(self) -> dict[int, list[tuple[str, str]]]:
        """Executions started and not ended, by pid: ``{pid: [(job_id, token), ...]}``."""
        self.poll()
        running: dict[tuple[str, str], int] = {}
        for event in self.events:
            key = (event["job_id"], event.get("token", ""))
            if event["event"] == "start":
                running[key] = int(event["pid"])
            elif event["event"] == "end":
                running.pop(key, None)
        by_pid: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for key, pid in running.items():
            by_pid[pid].append(key)
        return dict(by_pid)

    def starts(self) -> list[dict[str, Any]]:
        self.poll()
        return [e for e in self.events if e["event"] == "start"]


def read_ledger(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every whole event in the ledger, and the lines that could not be read."""
    reader = LedgerReader(path)
    reader.poll()
    if reader._partial.strip():
        reader.garbled.append("(unterminated) " + reader._partial.decode(errors="replace"))
    return reader.events, reader.garbled


@dataclass
class Execution:
    """One attempt as the ledger saw it: a ``start`` and whatever followed under its token."""

    job_id: str
    token: str
    attempt: int | None
    pid: int
    worker_id: str | None
    started: float
    renewals: list[float] = field(default_factory=list)
    ended: float | None = None
    outcome: str | None = None
    died: float | None = None  # its process was killed (by the test) at this time

    def live(self, lease_seconds: float) -> list[tuple[float, float]]:
        """The intervals in which this execution held a live lease, merged and in order."""
        stop = min((t for t in (self.ended, self.died) if t is not None), default=math.inf)
        intervals: list[tuple[float, float]] = []
        for proof in sorted([self.started, *self.renewals]):
            begin, end = proof, min(proof + lease_seconds, stop)
            if begin >= end:
                continue
            if intervals and begin <= intervals[-1][1]:
                intervals[-1] = (intervals[-1][0], max(intervals[-1][1], end))
            else:
                intervals.append((begin, end))
        return intervals


@dataclass(frozen=True)
class Kill:
    """The test killed (or froze) `pid` at `ts`; these executions were open in it."""

    pid: int
    ts: float
    signal: str
    executions: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class JobState:
    """A job's final state as the API reports it (``missing``: the API answered 404)."""

    status: str
    attempts: int = 0
    view: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Overlap:
    job_id: str
    first: Execution
    second: Execution
    at: float  # when both held a live lease
    by: float  # for how long


@dataclass(frozen=True)
class Reclaim:
    job_id: str
    token: str
    killed_at: float
    restarted_at: float | None
    finished_before_kill: bool  # Redis took its completion just before the kill landed

    @property
    def latency(self) -> float | None:
        return None if self.restarted_at is None else self.restarted_at - self.killed_at


@dataclass
class Report:
    """The figures of one fault run. `summary()` is what a failing assert prints."""

    acked: int
    statuses: Counter[str]
    lost: list[str]
    dup_completions: dict[str, int]
    executions: int
    extra_runs: int
    extra_run_jobs: dict[str, int]
    live_overlaps: list[Overlap]
    reclaims: list[Reclaim]
    unwitnessed: list[str]  # acked jobs Redis says ran, with no `start` in the ledger
    anomalies: list[str]
    stale_writes: int | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def reclaim_latencies(self) -> list[float]:
        return sorted(r.latency for r in self.reclaims if r.latency is not None)

    @property
    def unreclaimed(self) -> list[Reclaim]:
        """Killed executions whose job never started again and did not finish before it."""
        return [r for r in self.reclaims if r.restarted_at is None and not r.finished_before_kill]

    @property
    def reclaim_p100(self) -> float | None:
        latencies = self.reclaim_latencies
        return latencies[-1] if latencies else None

    def figures(self) -> dict[str, Any]:
        """The headline numbers, for the test's own report line."""
        latencies = self.reclaim_latencies
        return {
            "acked": self.acked,
            "lost": len(self.lost),
            "dup_completions": len(self.dup_completions),
            "extra_runs": self.extra_runs,
            "live_overlap": len(self.live_overlaps),
            "executions": self.executions,
            "reclaimed": len(latencies),
            "reclaim_p50_s": _round(_percentile(latencies, 50)),
            "reclaim_p100_s": _round(latencies[-1] if latencies else None),
            "stale_writes": self.stale_writes,
            **self.notes,
        }

    def summary(self) -> str:
        lines = [
            "fault run figures: "
            + ", ".join(f"{k}={v}" for k, v in self.figures().items() if v is not None),
            "final statuses of acked jobs: " + _counts(self.statuses),
        ]
        if self.lost:
            lines.append(f"LOST ({len(self.lost)}): {_sample(self.lost)}")
        if self.dup_completions:
            lines.append(
                f"DUPLICATE COMPLETIONS ({len(self.dup_completions)}): "
                + _sample(f"{j}x{n}" for j, n in self.dup_completions.items())
            )
        for overlap in self.live_overlaps[:5]:
            first, second = overlap.first, overlap.second
            lines.append(
                f"LIVE OVERLAP job {overlap.job_id}: {first.token} (pid {first.pid}) and "
                f"{second.token} (pid {second.pid}) both held a live lease for "
                f"{overlap.by:.3f} s from ts {overlap.at:.3f}"
            )
        if self.unreclaimed:
            lines.append(
                "NEVER RESTARTED after a kill: "
                + _sample(f"{r.job_id} ({r.token})" for r in self.unreclaimed)
            )
        if self.extra_run_jobs:
            lines.append(
                "jobs run more than once: "
                + _sample(f"{j}x{n}" for j, n in self.extra_run_jobs.items())
            )
        if self.unwitnessed:
            lines.append(f"UNWITNESSED (ran, no ledger start): {_sample(self.unwitnessed)}")
        lines.extend(f"anomaly: {a}" for a in self.anomalies[:10])
        return "\n".join(lines)


# -- the checker ------------------------------------------------------------------------------


def executions_of(
    events: Iterable[Mapping[str, Any]], anomalies: list[str] | None = None
) -> list[Execution]:
    """The executions in ledger order of their `start`."""
    found = anomalies if anomalies is not None else []
    by_token: dict[tuple[str, str], Execution] = {}
    order: list[Execution] = []
    for event in events:
        kind, job_id, token = event["event"], event["job_id"], str(event.get("token", ""))
        key = (job_id, token)
        ts = float(event["ts"])
        if kind == "start":
            if key in by_token:
                found.append(f"token {token} of job {job_id} started twice")
                continue
            execution = Execution(
                job_id=job_id,
                token=token,
                attempt=event.get("attempt"),
                pid=int(event["pid"]),
                worker_id=event.get("worker_id"),
                started=ts,
            )
            by_token[key] = execution
            order.append(execution)
            continue
        current = by_token.get(key)
        if current is None:
            found.append(f"{kind} of job {job_id} token {token} without a start")
            continue
        if kind == "renewed":
            current.renewals.append(ts)
        elif kind == "end":
            if current.ended is not None:
                found.append(f"token {token} of job {job_id} ended twice")
            current.ended, current.outcome = ts, event.get("outcome")
        else:
            found.append(f"unknown event {kind!r}")
    return order


def check(
    *,
    acked: Iterable[str],
    final: Mapping[str, JobState],
    events: Sequence[Mapping[str, Any]],
    lease_seconds: float,
    kills: Sequence[Kill] = (),
    deaths: Mapping[int, float] | None = None,
    garbled: Sequence[str] = (),
    stale_writes: int | None = None,
) -> Report:
    """The figures of a run; `deaths` are other known process deaths (pid -> time)."""
    acked_ids = sorted(set(acked))
    anomalies = [f"unreadable ledger line: {line[:200]}" for line in garbled]
    executions = executions_of(events, anomalies)

    died: dict[int, float] = dict(deaths or {})
    for kill in kills:
        if kill.signal == "SIGKILL":
            died[kill.pid] = min(kill.ts, died.get(kill.pid, math.inf))
    for execution in executions:
        death = died.get(execution.pid)
        if death is not None and death >= execution.started:
            execution.died = death

    by_job: dict[str, list[Execution]] = defaultdict(list)
    for execution in executions:
        by_job[execution.job_id].append(execution)

    statuses: Counter[str] = Counter()
    lost: list[str] = []
    unwitnessed: list[str] = []
    for job_id in acked_ids:
        state = final.get(job_id, JobState("missing"))
        statuses[state.status] += 1
        if state.status not in ("succeeded", "dead"):
            lost.append(job_id)
        if state.status == "succeeded" and job_id not in by_job:
            unwitnessed.append(job_id)

    dup_completions: dict[str, int] = {}
    extra_run_jobs: dict[str, int] = {}
    overlaps: list[Overlap] = []
    for job_id, runs in by_job.items():
        accepted = sum(1 for r in runs if r.outcome == "succeeded")
        if accepted > 1:
            dup_completions[job_id] = accepted
        if len(runs) > 1:
            extra_run_jobs[job_id] = len(runs)
        runs.sort(key=lambda r: r.started)
        for i, first in enumerate(runs):
            for second in runs[i + 1 :]:
                shared = _shared(first.live(lease_seconds), second.live(lease_seconds))
                if shared is not None and shared[1] > OVERLAP_SLACK_S:
                    overlaps.append(Overlap(job_id, first, second, *shared))

    reclaims: list[Reclaim] = []
    for kill in kills:
        for job_id, token in kill.executions:
            # Runs after the kill, not counting the killed run itself (it may have started
            # between the harness's last look and the signal landing).
            later = [
                r.started
                for r in by_job.get(job_id, [])
                if r.started > kill.ts and r.token != token
            ]
            killed = next((r for r in by_job.get(job_id, []) if r.token == token), None)
            state = final.get(job_id, JobState("missing"))
            finished = (
                not later
                and state.status == "succeeded"
                and killed is not None
                and killed.attempt is not None
                and state.attempts == killed.attempt
            )
            reclaims.append(Reclaim(job_id, token, kill.ts, min(later, default=None), finished))

    return Report(
        acked=len(acked_ids),
        statuses=statuses,
        lost=lost,
        dup_completions=dup_completions,
        executions=len(executions),
        extra_runs=sum(n - 1 for n in extra_run_jobs.values()),
        extra_run_jobs=extra_run_jobs,
        live_overlaps=overlaps,
        reclaims=reclaims,
        unwitnessed=unwitnessed,
        anomalies=anomalies,
        stale_writes=stale_writes,
    )


def _shared(
    a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]
) -> tuple[float, float] | None:
    """Where two sets of intervals first intersect, and the longest intersection."""
    first: float | None = None
    longest = 0.0
    for a_begin, a_end in a:
        for b_begin, b_end in b:
            begin, end = max(a_begin, b_begin), min(a_end, b_end)
            if end > begin:
                first = begin if first is None else min(first, begin)
                longest = max(longest, end - begin)
    return None if first is None else (first, longest)


def _percentile(values: Sequence[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, math.ceil(pct / 100 * len(ordered)) - 1)
    return ordered[rank]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counter.items())) or "(none)"


def _sample(items: Iterable[str], limit: int = 8) -> str:
    listed = list(items)
    shown = ", ".join(listed[:limit])
    return shown + (f", ... ({len(listed) - limit} more)" if len(listed) > limit else "")
