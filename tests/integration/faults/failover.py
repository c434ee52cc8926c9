"""Failover under load, as the Sentinel and the cluster failover tests both make it.

While jobs are submitted at a steady rate and drained by a worker pool, the links of the
primary to its replicas are cut (`ReplicasCut`) until they are behind, the primary is
SIGKILLed, and the run goes on until a replica is promoted and the load has run on it for a
while. On loopback a replica is never more than a moment behind, so a kill alone loses
nothing either way: the cut makes the window real. The topology says how it is cut, killed
and seen promoted (`Failover`); the run answers what happened to every job (`FailoverRun`).

A loaded machine can make the topology fail over again after the promotion (a promoted
primary that stalls past the down-after time is failed over in turn, and takes the writes of
the clients still connected to it until it is made a replica, seconds later). The run
watches which node serves and whether one it replaced still acts as a primary, keeps the
load on until a single primary is left, and judges losses up to then.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from entrypoints.local_topologies import LocalTopologyError
from entrypoints.local_topologies.nodes import ask
from tests.integration.faults.checker import TERMINAL, JobState, LedgerReader, Report
from tests.integration.faults.harness import (
    Evidence,
    Load,
    Pool,
    Sent,
    print_figures,
    wait_settled,
)
from tests.integration.processes import Api

CUT_AFTER_S = 3.0  # the replicas' links are cut from then on, for at least
CUT_FOR_S = 1.0
LINK_LAG_S = 0.5  # how far behind a loaded replica may be when its link is cut
AFTER_S = 2.0  # load kept on the promoted primary at least this long
WATCH_EVERY_S = 0.05  # how often the run asks which node serves


class ReplicasCut:
    """Cuts a primary's links to its replicas every 20 ms, from a thread, until closed,
    and refuses their PSYNC meanwhile."""

    def __init__(self, primary: int, replicas: Sequence[int]) -> None:
        self._primary = redis.Redis(host="127.0.0.1", port=primary, socket_timeout=2)
        self._replicas = [redis.Redis(host="127.0.0.1", port=p, socket_timeout=2) for p in replicas]
        self._command: Any = self._primary.execute_command  # redis-py's is untyped
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.began = 0.0
        self.began_at = 0.0  # time.time()

    def __enter__(self) -> ReplicasCut:
        # A cut replica reconnects at once; refused PSYNC, it tries again a second later.
        self._command("ACL", "SETUSER", "default", "-psync", "-sync")
        self.began, self.began_at = time.monotonic(), time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(redis.RedisError):  # the primary is usually dead by now
            self._command("ACL", "SETUSER", "default", "+psync", "+sync")
        for client in (self._primary, *self._replicas):
            client.close()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self._command("CLIENT", "KILL", "TYPE", "replica")
            except redis.RedisError:
                return  # the primary is gone

    def until_behind(self, at_least: float, within: float = 10.0) -> None:
        """Wait `at_least` s of cutting, then until no replica is connected and every one is
        behind the primary's replication offset (so a kill now loses what they lack)."""
        time.sleep(max(0.0, self.began + at_least - time.monotonic()))
        deadline = time.monotonic() + within
        while True:
            primary = self._primary.info("replication")
            offsets = [int(r.info("replication")["slave_repl_offset"]) for r in self._replicas]
            offset = int(primary["master_repl_offset"])
            if primary["connected_slaves"] == 0 and all(o < offset for o in offsets):
                return
            assert time.monotonic() < deadline, (primary, offsets)
            time.sleep(0.01)


@dataclass(frozen=True)
class Failover:
    """How a topology is failed over: its primary and that primary's replicas when the cut
    begins, how the primary is killed (answering the port killed), and how to wait (raising
    past a bound) until a replica serves in the killed one's place."""

    primary_and_replicas: Callable[[], tuple[int, Sequence[int]]]
    kill: Callable[[int], int]
    wait_promoted: Callable[[int], object]
    serving: Callable[[], int]  # the port of the primary serving now (may raise meanwhile)


class ServingWatch:
    """Polls, from a thread until closed, which node serves as the primary, recording each
    change as (time.time(), port), and whether a node that served before it still takes
    writes: a failover does not reach a primary it replaced that is alive (one promoted by
    an earlier failover) until it makes it a replica, and clients still connected to it write
    there until then."""

    def __init__(self, serving: Callable[[], int]) -> None:
        self._serving = serving
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.changes: list[tuple[float, int]] = []
        self.stale_until = 0.0  # until when an earlier one answered as a primary, time.time()

    def __enter__(self) -> ServingWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def alone_since(self, promoted: float) -> float:
        """Since when the node serving now has been the only primary (at least `promoted`)."""
        last = self.changes[-1][0] if self.changes else promoted
        return max(promoted, last, self.stale_until + WATCH_EVERY_S if self.stale_until else 0)

    def _run(self) -> None:
        while not self._stop.wait(WATCH_EVERY_S):
            try:
                port = self._serving()
            except (redis.RedisError, LocalTopologyError, OSError):
                continue  # between primaries: asked again in a moment
            if not self.changes or self.changes[-1][1] != port:
                self.changes.append((time.time(), port))
            for earlier in {p for _, p in self.changes} - {port}:
                try:
                    role = ask(earlier, "ROLE", timeout=0.2)[0]
                except (redis.RedisError, OSError):
                    continue  # dead (the killed one) or too slow to say
                if role == "master":
                    self.stale_until = time.time()


@dataclass
class FailoverRun:
    report: Report
    sent: list[Sent]
    final: dict[str, JobState]  # what the API says of each acknowledged job at the end
    cut: float  # when the replicas' links began to be cut, time.time()
    killed: float
    promoted: float  # when a replica was first seen serving in the killed one's place
    # Every node other than the killed one seen serving until the jobs were settled, with
    # when it was first seen: more than one is a failover after the failover.
    serving: list[tuple[float, int]]
    alone_since: float  # since when the node that served to the end was the only primary
    started_after_promotion: int  # attempts the workers began on the promoted primary
    unconfirmed: set[str]  # jobs with a completion the replicas did not confirm

    def acked_between(self, start: float, end: float, queue: str | None = None) -> set[str]:
        """The jobs answered 202 between `start` and `end` (time.time()); with `queue`, only
        those the API says are in that queue."""
        return {
            s.job_id
            for s in self.sent
            if s.status == 202
            and s.job_id is not None
            and start <= s.received <= end
            and (queue is None or self.queue_of(s.job_id) == queue)
        }

    def queue_of(self, job_id: str) -> str | None:
        state = self.final.get(job_id)
        return None if state is None or state.view is None else str(state.view["queue"])

    def check_confirmed(self, jobs: int, acked_at_least: int) -> None:
        """With replicas confirming writes: no acknowledged job lost, each succeeded, and a
        job completed twice only after a completion the replicas did not confirm."""
        report, summary = self.report, self.report.summary()
        assert len(self.sent) >= jobs, summary
        assert report.acked >= acked_at_least, summary  # the seconds before the cut
        assert report.lost == [], summary
        assert report.statuses == {"succeeded": report.acked}, summary
        # A job completes twice only when the replicas did not confirm its first completion
        # (the worker logged and counted it), and the failover lost that one: it ran again.
        assert set(report.dup_completions) <= self.unconfirmed, summary
        assert report.live_overlaps == [], summary
        self.check_answers_and_promotion()

    def check_lost_only_the_window(self, jobs: int) -> set[str]:
        """Without confirmation (the negative control): a loss is seen, only of what was
        answered from just before the cut (still in the links it dropped) and sent before the
        node that served to the end was the only primary (a later failover loses what the
        primary it replaced took until it was made a replica; a write it took just before
        may be answered just after, on a loaded machine). Answers the jobs sent after that,
        none of which may be lost."""
        report, summary = self.report, self.report.summary()
        assert len(self.sent) >= jobs, summary
        assert report.acked > jobs // 2, summary
        assert report.lost, (
            f"a failover after a cut lost nothing: the test cannot see a loss; {summary}"
        )
        alone = self.alone_since
        window = {
            s.job_id
            for s in self.sent
            if s.status == 202 and s.received >= self.cut - LINK_LAG_S and s.sent <= alone
        }
        outside = set(report.lost) - window
        assert not outside, (
            f"lost after one primary was left; serving (s after the kill, port): "
            f"{self.serving_since_kill()}, alone from {round(alone - self.killed, 3)} s; "
            "(sent, answered) s after that: "
            + str(
                [
                    (round(s.sent - alone, 3), round(s.received - alone, 3))
                    for s in self.sent
                    if s.job_id in outside
                ][:20]
            )
        )
        assert set(report.statuses) <= {"succeeded", "missing"}, summary
        assert report.statuses["succeeded"] + len(report.lost) == report.acked, summary
        after = {
            s.job_id
            for s in self.sent
            if s.status == 202 and s.job_id is not None and s.sent > alone
        }
        assert after, summary
        assert after.isdisjoint(report.lost), summary  # what came after it is all there
        self.check_answers_and_promotion()
        return after

    def check_answers_and_promotion(self) -> None:
        """Every answer a 202 or a 503, and the API and the workers followed the promoted
        primary without a restart: what was submitted after it (stored, if not confirmed)
        ran."""
        assert {s.status for s in self.sent} <= {202, 503}, [
            s for s in self.sent if s.status not in (202, 503)
        ]
        assert self.started_after_promotion > 0, self.report.summary()

    def serving_since_kill(self) -> list[tuple[float, int]]:
        return [(round(at - self.killed, 3), port) for at, port in self.serving]


def failover_under_load(
    failover: Failover,
    env: dict[str, str],
    tmp_path: Path,
    name: str,
    body: Callable[[int], Mapping[str, Any]],
    *,
    jobs: int,
    rate: float,
    senders: int,
    load_within: float,
    settle_within: float,
    queues: str | None = None,
    **settings: str,
) -> FailoverRun:
    """Submit at least `jobs` jobs (`body(n)` each) at `rate` and drain them with a pool of
    2 processes (on `queues`); `CUT_AFTER_S` in, cut the replicas' links, and kill the
    primary once they are behind. Sending ends within `load_within` s, every acknowledged
    job is settled within `settle_within` s. `env` writes its ledger to
    ``tmp_path / "ledger.jsonl"``; `settings` are printed with the figures."""
    ledger_path = tmp_path / "ledger.jsonl"
    with Api(env, tmp_path) as api, api.client() as client, ServingWatch(failover.serving) as watch:
        with Pool(env, tmp_path, processes=2, concurrency=8, queues=queues) as pool:
            pool.wait_children(2)
            with Load(api.base, body, rate=rate, senders=senders) as load:
                time.sleep(CUT_AFTER_S)
                primary, replicas = failover.primary_and_replicas()
                with ReplicasCut(primary, replicas) as cut:
                    cut.until_behind(at_least=CUT_FOR_S)
                    killed_port = failover.kill(primary)
                    killed = time.time()
                failover.wait_promoted(killed_port)
                promoted = time.time()
                # At least `jobs` in all, and a few seconds' worth on the promoted primary
                # once it is the only one.
                deadline = time.monotonic() + load_within
                while len(load.sent) < jobs or time.time() < watch.alone_since(promoted) + AFTER_S:
                    assert time.monotonic() < deadline, f"{len(load.sent)} sent"
                    time.sleep(0.05)
                load.stop()
            # A job the promoted primary does not have will not come back: missing is final.
            statuses = TERMINAL | {"missing"}
            final = wait_settled(client, load.acked, within=settle_within, statuses=statuses)
            assert pool.proc is not None
            assert pool.proc.poll() is None, pool.output()[-3000:]
            ledger = LedgerReader(ledger_path)
            starts = ledger.starts()
            pool.remember(int(e["pid"]) for e in starts)
    serving = [(at, port) for at, port in watch.changes if port != killed_port]
    sent = load.sent
    codes = sorted({s.status for s in sent}, key=str)
    report = Evidence(ledger_path).report(
        load.acked,
        final,
        requests=len(sent),
        codes=codes,
        failover_s=round(promoted - killed, 2),
        failovers_after=max(0, len(serving) - 1),
    )
    print_figures(name, report, **settings)
    after = sum(1 for e in starts if e["ts"] > promoted)
    unconfirmed = {
        e["job_id"] for e in ledger.events if e["event"] == "end" and e.get("unreplicated")
    }
    return FailoverRun(
        report,
        sent,
        final,
        cut.began_at,
        killed,
        promoted,
        serving,
        watch.alone_since(promoted),
        after,
        unconfirmed,
    )
