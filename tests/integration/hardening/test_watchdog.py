"""The supervisor's watchdog: a worker process whose event loop a handler blocks is replaced
within lease + kill grace, and the job it was running runs again exactly once.

Without the watchdog the process would stay stuck for the whole block (300 s here), holding
its slot; with one process nothing else would run, and nobody would even reclaim the job
(each worker process reclaims lapsed leases from its own event loop).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil

from tests.integration.faults.harness import Pool, fault_env, submit, wait_settled
from tests.integration.processes import Api

LEASE_S = 5.0
KILL_GRACE_S = 3.0
BLOCK_S = 300.0
PATCH = Path(__file__).parent / "patches" / "block_loop"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return lines


def test_a_worker_whose_event_loop_is_blocked_is_replaced_and_its_job_runs_again_once(
    redis_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "audit.jsonl"
    patch_report = tmp_path / "patch.txt"
    api_env = fault_env(redis_url, ledger, CONVEYOR_KILL_GRACE_SECONDS=str(KILL_GRACE_S))
    pool_env = {
        **api_env,
        "PYTHONPATH": f"{PATCH}:{api_env.get('PYTHONPATH', '')}".rstrip(":"),
        "CONVEYOR_TEST_PATCH_REPORT": str(patch_report),
        "CONVEYOR_TEST_BLOCK_SECONDS": str(BLOCK_S),
    }
    assert float(api_env["CONVEYOR_LEASE_SECONDS"]) == LEASE_S
    blocker = {
        "type": "dummy",
        "payload": {"mode": "succeed", "result": "block-the-loop"},
        "max_attempts": 3,
    }
    with Api(api_env, tmp_path) as api, api.client() as client:
        with Pool(pool_env, tmp_path, processes=1, concurrency=4) as pool:
            (stuck,) = pool.wait_children(1)
            job_id = submit(client, blocker)
            deadline = time.monotonic() + 15
            while not any(e["job_id"] == job_id for e in read_jsonl(ledger)):
                assert time.monotonic() < deadline, "the blocking job never started"
                time.sleep(0.05)
            # Work queued behind the stuck process: only its replacement can run it.
            others = [
                submit(client, {"type": "dummy", "payload": {"mode": "sleep", "seconds": 0.1}})
                for _ in range(3)
            ]
            final = wait_settled(client, [job_id, *others], within=LEASE_S + KILL_GRACE_S + 15)
            pool.remember(int(e["pid"]) for e in read_jsonl(ledger))
            children_after = [c.pid for c in pool.children()]
            supervisor_log = pool.output()
        view = client.get(f"/jobs/{job_id}").json()

    events = read_jsonl(ledger)
    runs = [e for e in events if e["job_id"] == job_id and e["event"] == "start"]
    ends = [e for e in events if e["job_id"] == job_id and e["event"] == "end"]
    first = runs[0]
    replacement = [e for e in events if e["pid"] != first["pid"]]
    replaced_after = replacement[0]["ts"] - first["ts"] if replacement else None
    rerun_after = runs[1]["ts"] - first["ts"] if len(runs) > 1 else None
    kills = [
        line
        for line in (json.loads(x) for x in supervisor_log.splitlines() if x.startswith("{"))
        if line.get("event") == "child stopped answering; killing it"
    ]
    print(
        f"[watchdog] lease={LEASE_S} kill_grace={KILL_GRACE_S} block={BLOCK_S} "
        f"silent_when_killed_s={[k.get('silent_s') for k in kills]} "
        f"replaced_after_s={None if replaced_after is None else round(replaced_after, 2)} "
        f"rerun_after_s={None if rerun_after is None else round(rerun_after, 2)} "
        f"runs={len(runs)} attempts={view['attempts']} status={view['status']} "
        f"others={sorted({s.status for s in (final[o] for o in others)})}"
    )
    assert patch_report.read_text().startswith("applied block_loop"), patch_report.read_text()
    assert [(r["attempt"], r["pid"] == stuck.pid) for r in runs] == [(1, True), (2, False)]
    assert [(e["attempt"], e["outcome"]) for e in ends] == [(2, "succeeded")]
    assert (view["status"], view["attempts"]) == ("succeeded", 2)
    assert view["history"][0]["outcome"] == "worker_lost"
    # The watchdog waits as long as the lease by default, so the lease lapses about when the
    # child is killed: whichever is recorded first explains the lost attempt.
    error = view["history"][0]["error"]
    assert "stopped answering" in error or "the worker stopped renewing it" in error, error
    assert len(kills) == 1
    assert replaced_after is not None
    assert replaced_after <= LEASE_S + KILL_GRACE_S
    assert all(final[o].status == "succeeded" for o in others)
    assert stuck.pid not in children_after
    assert len(children_after) == 1


def test_a_supervisor_killed_outright_takes_its_fork_server_and_workers_with_it(
    redis_url: str, tmp_path: Path
) -> None:
    """The other direction. A pool's first workers are the supervisor's own children, which
    the kernel's parent-death signal stops; a replacement is forked by the fork server, so
    that signal follows the server, not the supervisor: it learns from its heartbeat's
    broken pipe that the supervisor is gone, drains and exits, and the fork server follows
    once no worker holds it open. One worker of each kind here."""
    env = fault_env(redis_url, tmp_path / "audit.jsonl", CONVEYOR_DRAIN_GRACE_SECONDS="2")
    with Pool(env, tmp_path, processes=2, concurrency=2) as pool:
        first = pool.wait_children(2)
        assert all(child.ppid() == pool.pid for child in first)
        first[0].kill()  # its replacement comes from the fork server
        deadline = time.monotonic() + 20
        while first[0].pid in {c.pid for c in pool.children()} or len(pool.children()) != 2:
            assert time.monotonic() < deadline, pool.output()[-3000:]
            time.sleep(0.05)
        replacement = next(c for c in pool.children() if c.pid != first[1].pid)
        assert replacement.ppid() != pool.pid
        descendants = psutil.Process(pool.pid).children(recursive=True)
        pool.remember(p.pid for p in descendants)
        assert pool.proc is not None
        killed = time.monotonic()
        pool.proc.kill()
        pool.proc.wait()
        alive = descendants
        while alive and time.monotonic() - killed < 15:
            alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            time.sleep(0.1)
        gone_after = time.monotonic() - killed
    print(
        f"[supervisor killed] descendants={len(descendants)} left={len(alive)} "
        f"gone_after_s={gone_after:.1f}"
    )
    assert len(descendants) >= 3  # the fork server and two workers
    assert alive == []
