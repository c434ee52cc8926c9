"""Scheduled jobs count against admission, results and error messages have size caps
(issue 11, item 5).

Against real `conveyor api` and `conveyor worker` processes and a real Redis:

- `max_depth` 100 and 10,000 jobs with `delay` 3600: the first 100 are accepted, every one
  after gets a 429 (and nothing of them is stored);
- a result over `CONVEYOR_MAX_RESULT_BYTES` fails its attempt, not retried, with an error that
  names the limit;
- an exception with a 10 MB message (a test-only patch of the dummy type's `fail` mode) is
  stored and shown cut to 4,096 characters, saying how long it was.

The issue's figures, unscaled.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Final

import httpx
import redis

from domain.jobs import ERROR_MESSAGE_LIMIT
from tests.integration.hardening.streams import count_answers, post_json, timed_answers
from tests.integration.processes import Api, Conveyor, service_env, wait_for_job

DEPTH: Final = 100
SUBMITTED: Final = 10_000
HUGE: Final = 10 * 1024 * 1024
RESULT_LIMIT: Final = 1000
PATCH: Final = Path(__file__).parent / "patches" / "huge_error"


def later_job(n: int) -> bytes:
    body = {"type": "dummy", "payload": {"mode": "succeed", "result": n}, "delay": 3600}
    return post_json("/jobs", json.dumps(body).encode())


def test_scheduled_jobs_count_against_max_depth(redis_url: str, tmp_path: Path) -> None:
    limits = json.dumps({"*": {"max_depth": DEPTH}})
    env = service_env(redis_url, CONVEYOR_QUEUE_LIMITS=limits)
    with Api(env, tmp_path) as api:
        first = asyncio.run(
            timed_answers(api.port, [later_job(n) for n in range(DEPTH)], connections=1)
        )
        assert [status for status, _, _ in first] == [202] * DEPTH
        assert {json.loads(body)["status"] for _, _, body in first} == {"scheduled"}

        refusals: list[dict[str, Any]] = []

        def keep(status: int, body: bytes) -> None:
            if status == 429 and len(refusals) < 3:
                refusals.append(json.loads(body))

        rest = (later_job(n) for n in range(DEPTH, SUBMITTED))
        after = asyncio.run(count_answers(api.port, rest, connections=32, on_answer=keep))
        with api.client() as client:
            (stats,) = [client.get("/queues/default").json()]
    print(
        f"\nmax_depth {DEPTH}, {SUBMITTED} jobs with delay 3600: the first {DEPTH} answered"
        f" {sorted({s for s, _, _ in first})}, the other {SUBMITTED - DEPTH}: {dict(after)};"
        f" the queue holds {stats['counts']}"
    )
    assert after == {429: SUBMITTED - DEPTH}
    assert {r["type"] for r in refusals} == {"urn:conveyor:problem:over-limit"}
    assert "100" in refusals[0]["detail"]
    assert stats["counts"]["scheduled"] == DEPTH
    assert sum(stats["counts"].values()) == DEPTH


def test_a_result_over_the_limit_and_a_huge_error_message_are_bounded(
    redis_url: str, tmp_path: Path
) -> None:
    report = tmp_path / "patch.log"
    env = service_env(redis_url, CONVEYOR_MAX_RESULT_BYTES=str(RESULT_LIMIT))
    patched = {
        **env,
        "PYTHONPATH": str(PATCH) + ":" + env.get("PYTHONPATH", ""),
        "CONVEYOR_TEST_PATCH_REPORT": str(report),
    }
    with (
        Api(env, tmp_path) as api,
        Conveyor(["worker"], patched, tmp_path),
        api.client() as client,
    ):
        big = submit(client, {"mode": "succeed", "result": "r" * (2 * RESULT_LIMIT)})
        fits = submit(client, {"mode": "succeed", "result": "r" * (RESULT_LIMIT // 2)})
        failing = submit(client, {"mode": "fail"}, max_attempts=1)
        too_big = wait_for_job(client, big, {"dead"})
        assert wait_for_job(client, fits, {"succeeded"})["result"] == "r" * (RESULT_LIMIT // 2)
        failed = wait_for_job(client, failing, {"dead"})
        answer = client.get(f"/jobs/{failing}")
        key = f"{{{env['CONVEYOR_KEY_PREFIX']}:default}}:job:{failing}"
        stored_error = redis.Redis.from_url(redis_url).hget(key, "error") or b""
    assert "applied huge_error" in report.read_text()

    error = too_big["error"]
    print(
        f"\nresult of {2 * RESULT_LIMIT + 2} bytes, limit {RESULT_LIMIT}: {too_big['status']}"
        f" after {too_big['attempts']} attempt: {error['type']}: {error['message']}"
    )
    assert (too_big["attempts"], error["type"], error["kind"]) == (
        1,
        "ResultTooLargeError",
        "non_retryable",
    )
    assert str(RESULT_LIMIT) in error["message"]
    assert "CONVEYOR_MAX_RESULT_BYTES" in error["message"]

    message = failed["error"]["message"]
    print(
        f"a {HUGE}-character exception message: stored {len(stored_error)} bytes of error,"
        f" shown {len(message)} characters ({len(answer.content)} bytes for the whole job),"
        f" ending {message[-40:]!r}"
    )
    assert len(message) <= ERROR_MESSAGE_LIMIT
    assert message.startswith("dummy failure on attempt 1 xxx")
    assert message.endswith(f"[cut from {HUGE} characters]")
    assert len(stored_error) < 4 * ERROR_MESSAGE_LIMIT + 4096  # the traceback's tail beside it
    assert len(answer.content) < 64 * 1024


def submit(client: httpx.Client, payload: dict[str, Any], **options: Any) -> str:
    response = client.post("/jobs", json={"type": "dummy", "payload": payload, **options})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id
