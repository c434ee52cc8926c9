"""`dummy`'s fault modes: refused (422 naming the setting, nothing stored) where a deployment
has not turned them on; where it has, a storm of crashing jobs cannot starve other work or
take the supervisor down."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.integration.faults.harness import Pool, fault_env, wait_settled
from tests.integration.processes import Api, service_env

CRASHERS = 1000
EMAILS = 100
EMAIL_WITHIN_S = 60.0
PROCESSES, CONCURRENCY = 2, 10


def test_a_fault_mode_is_refused_naming_the_setting_and_nothing_is_stored(
    redis_url: str, tmp_path: Path
) -> None:
    env = service_env(redis_url, CONVEYOR_DUMMY_FAULTS="0")
    crash = {"type": "dummy", "payload": {"mode": "crash", "how": "segfault"}}
    prefix = env["CONVEYOR_KEY_PREFIX"]
    with Api(env, tmp_path) as api, api.client() as client:
        started = _keys(redis_url, prefix)  # what start-up wrote, before any submission
        one = client.post("/jobs", json=crash)
        batch = client.post(
            "/jobs/batch",
            json={"jobs": [{"type": "dummy", "payload": {"mode": "succeed"}}, crash]},
        )
        others = {
            mode: client.post(
                "/jobs", json={"type": "dummy", "payload": {"mode": mode}}
            ).status_code
            for mode in ("memory", "hang", "cpu")
        }
        listed = client.get("/jobs").json()
        schema = client.get("/schema/openapi.json").json()
    keys = _keys(redis_url, prefix)
    mode_schema = schema["components"]["schemas"]["DummyJobSubmission"]["properties"]["payload"][
        "properties"
    ]["mode"]
    problem = one.json()
    print(
        f"[faults off] crash={one.status_code} batch={batch.status_code} others={others} "
        f"jobs listed={len(listed['jobs'])} keys={keys} detail={problem['detail']!r}"
    )
    assert one.status_code == 422
    assert one.headers["content-type"].startswith("application/problem+json")
    assert "CONVEYOR_DUMMY_FAULTS=1" in problem["detail"]
    assert [e["path"] for e in problem["errors"]] == ["payload.mode"]
    assert batch.status_code == 422
    assert "jobs[1].payload.mode" in batch.text
    assert others == {"memory": 422, "hang": 422, "cpu": 422}
    assert listed["jobs"] == []
    assert keys == started  # not a job, not a queue, not an index entry
    assert not any(":job:" in key or "queued" in key for key in started), started
    assert "crash" not in mode_schema["enum"]
    assert "CONVEYOR_DUMMY_FAULTS=1" in mode_schema["description"]


# Alone: its bound is a time (every email within 60 s), and its pace is that of starting
# new worker processes, which other tests' processes slow by half on 2 cores.
@pytest.mark.alone
def test_a_storm_of_crashing_jobs_starves_no_other_work_and_the_supervisor_stays_up(
    redis_url: str, tmp_path: Path
) -> None:
    """1,000 segfaulting jobs (25 attempts each) submitted first, then 100 emails behind them
    in the same queue: every email succeeds within 60 s, on its first attempt (no neighbour's
    crash is charged to it), while the crashing jobs go on killing worker processes."""
    env = fault_env(redis_url, tmp_path / "audit.jsonl", CONVEYOR_DUMMY_FAULTS="1")
    crash = {
        "type": "dummy",
        "payload": {"mode": "crash", "how": "segfault"},
        "max_attempts": 25,
    }
    emails = [
        {"type": "email", "payload": {"to": f"user{n}@example.com", "subject": "Hi", "body": "."}}
        for n in range(EMAILS)
    ]
    timeout = httpx.Timeout(30.0)
    with Api(env, tmp_path) as api, httpx.Client(base_url=api.base, timeout=timeout) as client:
        with Pool(env, tmp_path, processes=PROCESSES, concurrency=CONCURRENCY) as pool:
            pool.wait_children(PROCESSES)
            started = time.monotonic()
            crashers = client.post("/jobs/batch", json={"jobs": [crash] * CRASHERS})
            assert crashers.status_code == 202, crashers.text
            sent = client.post("/jobs/batch", json={"jobs": emails})
            assert sent.status_code == 202, sent.text
            submitted = time.monotonic()
            email_ids = [item["id"] for item in sent.json()["jobs"]]
            done_at: dict[str, float] = {}
            pending = set(email_ids)
            while pending and time.monotonic() - submitted < EMAIL_WITHIN_S + 30:
                states = wait_settled(client, pending, within=0.0)
                for job_id, state in states.items():
                    if state.status == "succeeded":
                        done_at[job_id] = time.monotonic() - submitted
                pending -= set(done_at)
                time.sleep(0.25)
            final = wait_settled(client, email_ids, within=0.0)
            supervisor_up = pool.proc is not None and pool.proc.poll() is None
            children = len(pool.children())
            crashed = client.get("/jobs", params={"type": "dummy", "limit": 200}).json()["jobs"]
            storm_s = time.monotonic() - started
            output = pool.output()
    deaths = output.count('"child died"')
    attempts = sorted({state.attempts for state in final.values()})
    slowest = max(done_at.values(), default=None)
    print(
        f"[crash storm] crashers={CRASHERS}x25 emails={EMAILS} processes={PROCESSES} "
        f"concurrency={CONCURRENCY} emails_succeeded={len(done_at)} "
        f"slowest_email_s={None if slowest is None else round(slowest, 1)} "
        f"email_attempts={attempts} child_deaths={deaths} "
        f"({deaths / storm_s:.1f}/s over {storm_s:.0f} s) supervisor_up={supervisor_up} "
        f"children={children} crash_attempts_seen={sum(j['attempts'] for j in crashed)}"
    )
    assert len(done_at) == EMAILS, f"{EMAILS - len(done_at)} emails not done"
    assert slowest is not None
    assert slowest <= EMAIL_WITHIN_S
    assert attempts == [1]
    assert supervisor_up
    assert deaths > 0


def _keys(redis_url: str, prefix: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        return sorted(k.decode() for k in client.scan_iter(match=f"*{prefix}*", count=1000))
    finally:
        client.close()
