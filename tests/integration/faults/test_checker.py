"""The checker on hand-written ledgers: each figure it computes, and the ledger reader.

No processes here; these run in milliseconds and pin down what each figure means.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.integration.faults.checker import (
    OVERLAP_SLACK_S,
    JobState,
    Kill,
    LedgerReader,
    check,
    read_ledger,
)

L = 5.0


def start(job: str, token: str, ts: float, pid: int = 1) -> dict[str, Any]:
    attempt = int(token.split(":")[1])
    return {"event": "start", "job_id": job, "token": token, "attempt": attempt, "pid": pid,
            "worker_id": f"w{pid}", "ts": ts}  # fmt: skip


def renewed(job: str, token: str, ts: float, pid: int = 1) -> dict[str, Any]:
    return {"event": "renewed", "job_id": job, "token": token, "pid": pid, "ts": ts}


def end(job: str, token: str, ts: float, outcome: str, pid: int = 1) -> dict[str, Any]:
    attempt = int(token.split(":")[1])
    return {"event": "end", "job_id": job, "token": token, "attempt": attempt, "pid": pid,
            "ts": ts, "outcome": outcome}  # fmt: skip


def test_a_clean_run_has_no_findings() -> None:
    events = [start("a", "1:1", 0.0), end("a", "1:1", 1.0, "succeeded")]
    report = check(
        acked=["a"], final={"a": JobState("succeeded", 1)}, events=events, lease_seconds=L
    )
    assert (report.lost, report.dup_completions, report.live_overlaps) == ([], {}, [])
    assert (report.extra_runs, report.executions, report.unwitnessed) == (0, 1, [])
    assert "lost=0" in report.summary()


def test_lost_is_acked_minus_succeeded_minus_dead() -> None:
    final = {
        "ok": JobState("succeeded", 1),
        "dead": JobState("dead", 3),
        "stuck": JobState("active", 1),
        "waiting": JobState("queued", 0),
    }
    report = check(
        acked=[*final, "gone"], final=final, events=[start("ok", "1:1", 0)], lease_seconds=L
    )
    assert report.lost == ["gone", "stuck", "waiting"]
    assert report.statuses["missing"] == 1
    assert "LOST (3)" in report.summary()


def test_two_accepted_completions_are_a_duplicate_and_an_extra_run() -> None:
    events = [
        start("a", "1:1", 0.0, pid=1),
        start("a", "2:2", 6.0, pid=2),
        end("a", "1:1", 8.0, "succeeded", pid=1),
        end("a", "2:2", 9.0, "succeeded", pid=2),
    ]
    report = check(acked=["a"], final={"a": JobState("succeeded", 2)}, events=events,
                   lease_seconds=L)  # fmt: skip
    assert report.dup_completions == {"a": 2}
    assert (report.extra_runs, report.extra_run_jobs) == (1, {"a": 2})
    assert report.live_overlaps == []  # the first's lease lapsed at 5.0


def test_a_second_start_inside_a_live_lease_is_an_overlap() -> None:
    events = [
        start("a", "1:1", 0.0, pid=1),
        renewed("a", "1:1", 1.7, pid=1),
        start("a", "2:2", 4.0, pid=2),  # the first's lease runs to 6.7
        end("a", "2:2", 5.0, "succeeded", pid=2),
        end("a", "1:1", 7.0, "lease_lost", pid=1),
    ]
    report = check(acked=["a"], final={"a": JobState("succeeded", 2)}, events=events,
                   lease_seconds=L)  # fmt: skip
    assert len(report.live_overlaps) == 1
    assert abs(report.live_overlaps[0].at - 4.0) < 1e-9
    assert abs(report.live_overlaps[0].by - 1.0) < 1e-9  # until the second ended at 5.0
    assert "LIVE OVERLAP" in report.summary()


def test_a_renewal_of_a_stale_holder_while_another_runs_is_an_overlap() -> None:
    stale_holder = [
        start("a", "1:1", 0.0, pid=1),
        start("a", "2:2", 6.0, pid=2),  # after the first's lease lapsed at 5.0: fine so far
        renewed("a", "1:1", 8.0, pid=1),  # but the stale holder is told it still holds it
        end("a", "2:2", 9.0, "succeeded", pid=2),
        end("a", "1:1", 9.5, "succeeded", pid=1),
    ]
    report = check(acked=["a"], final={"a": JobState("succeeded", 2)}, events=stale_holder,
                   lease_seconds=L)  # fmt: skip
    assert [(o.at, o.by) for o in report.live_overlaps] == [(8.0, 1.0)]
    # A stale holder that only comes back to be refused (an end, no renewal) overlaps nothing.
    refused = [*stale_holder[:2], end("a", "2:2", 9.0, "succeeded", pid=2),
               end("a", "1:1", 8.0, "lease_lost", pid=1)]  # fmt: skip
    report = check(acked=["a"], final={"a": JobState("succeeded", 2)}, events=refused,
                   lease_seconds=L)  # fmt: skip
    assert report.live_overlaps == []


def test_an_end_or_a_kill_closes_the_lease_early() -> None:
    ended = [
        start("a", "1:1", 0.0, pid=1),
        end("a", "1:1", 1.0, "retrying", pid=1),
        start("a", "2:2", 1.5, pid=2),
    ]
    killed = [start("b", "3:1", 0.0, pid=3), start("b", "4:2", 1.0, pid=4)]
    final = {"a": JobState("active", 2), "b": JobState("active", 2)}
    kill = Kill(pid=3, ts=0.5, signal="SIGKILL", executions=(("b", "3:1"),))
    report = check(acked=[], final=final, events=ended + killed, lease_seconds=L, kills=[kill])
    assert report.live_overlaps == []
    # A SIGSTOP does not end anything: the frozen process's lease is live until it lapses.
    frozen = Kill(pid=3, ts=0.5, signal="SIGSTOP", executions=(("b", "3:1"),))
    report = check(acked=[], final=final, events=killed, lease_seconds=L, kills=[frozen])
    assert [o.job_id for o in report.live_overlaps] == ["b"]


def test_overlaps_within_the_slack_are_not_counted() -> None:
    events = [start("a", "1:1", 0.0, pid=1), start("a", "2:2", L - OVERLAP_SLACK_S / 2, pid=2)]
    report = check(acked=[], final={}, events=events, lease_seconds=L)
    assert report.live_overlaps == []


def test_reclaim_latency_is_kill_to_next_start() -> None:
    events = [
        start("a", "1:1", 0.0, pid=1),
        start("b", "2:1", 0.0, pid=1),
        start("c", "3:1", 0.0, pid=1),
        start("a", "4:2", 3.5, pid=2),
        end("a", "4:2", 4.5, "succeeded", pid=2),
    ]
    final = {
        "a": JobState("succeeded", 2),
        "b": JobState("succeeded", 1),  # its completion landed just before the kill
        "c": JobState("active", 1),  # never came back
    }
    kill = Kill(1, 1.0, "SIGKILL", (("a", "1:1"), ("b", "2:1"), ("c", "3:1")))
    report = check(acked=list(final), final=final, events=events, lease_seconds=L, kills=[kill])
    assert report.reclaim_latencies == [2.5]
    assert [r.job_id for r in report.unreclaimed] == ["c"]
    assert [r.job_id for r in report.reclaims if r.finished_before_kill] == ["b"]
    assert report.lost == ["c"]
    assert "NEVER RESTARTED" in report.summary()


def test_jobs_that_ran_without_a_witness_and_odd_lines_are_reported() -> None:
    events = [end("x", "9:1", 1.0, "succeeded"), renewed("y", "8:1", 1.0)]
    report = check(
        acked=["a"],
        final={"a": JobState("succeeded", 1)},
        events=[start("z", "7:1", 0.0), start("z", "7:1", 0.1), *events],
        lease_seconds=L,
        garbled=["{not json"],
    )
    assert report.unwitnessed == ["a"]
    assert len(report.anomalies) == 4, report.anomalies


def test_the_reader_keeps_a_line_being_written_for_later(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    reader = LedgerReader(path)
    assert reader.poll() == []  # no file yet
    path.write_bytes(b'{"event": "start", "job_id": "a", "token": "1:1", "pid": 7, "ts": 1}\n{"ev')
    assert [e["job_id"] for e in reader.poll()] == ["a"]
    assert reader.open_executions() == {7: [("a", "1:1")]}
    with path.open("ab") as ledger:
        ledger.write(b'ent": "end", "job_id": "a", "token": "1:1", "pid": 7, "ts": 2}\nnot json\n')
    assert [e["event"] for e in reader.poll()] == ["end"]
    assert reader.open_executions() == {}
    assert reader.garbled == ["not json"]
    events, garbled = read_ledger(path)
    assert (len(events), garbled) == (2, ["not json"])
