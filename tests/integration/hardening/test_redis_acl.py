"""Conveyor runs as a Redis ACL user limited to its own keys and the commands it needs.

The rule below is the one the README's "Deploying safely" section gives (for the prefix
`acme`): its keys are `{acme:<queue>}:...` (each queue's keys share one hash tag) and
`acme:...` (the queue registry and idempotency keys); its one channel is `acme:finished`
(where scripts publish the jobs they finish, so API processes wake long polls); its commands
are those its Lua scripts call (a script runs with its caller's permissions, keys included)
and those it sends itself.
The API and a worker run as that user, over TLS (`rediss://`, the server's certificate
checked against a CA of the test's own), and drive jobs through every path; Redis's ACL log
must then hold no denial, and the user can reach neither another prefix's keys nor admin
commands.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from entrypoints.local_redis import find_server_binary
from tests.integration.processes import Api, Conveyor, free_port, service_env, wait_for_job

PREFIX = "acme"
PASSWORD = "s3cret-for-tests"
# What the README prints, with `acme` for the prefix.
COMMANDS = (
    # what the service sends itself (INFO: only with CONVEYOR_ADMIT_MAX_MEMORY_BYTES)
    "+ping +evalsha +script|load +blpop +smembers +sadd +set +zrem +hmget +zrevrangebyscore"
    " +info +subscribe +unsubscribe +hget +hlen +scard +mget +hgetall +multi +exec"
    # what its Lua scripts call (src/adapters/redis_queue/lua, redis_schedules/lua)
    " +decrby +del +exists +get +hdel +hexists +hset +incr +incrby +llen +persist +pexpire"
    " +pttl +publish +rpush +srem +sismember +sscan +time +zadd +zcard +zcount +zpopmin +zrange"
    " +zrangebyscore +zrank +zremrangebyscore +zscore"
)
RULE = (
    f"on >{PASSWORD} resetkeys resetchannels ~{{{PREFIX}:* ~{{{PREFIX}}}:* ~{PREFIX}:*"
    f" &{PREFIX}:finished"
    f" -@all {COMMANDS}"
)
# redis-py names its library on connect (CLIENT SETINFO, Redis 7.2+; a refusal is ignored, but
# logged as a denial): granted where the server has the command.
CLIENT_SETINFO = "+client|setinfo"
TERMINAL = {"succeeded", "dead", "cancelled", "expired"}


def submit(client: httpx.Client, body: dict[str, Any], **headers: str) -> str:
    response = client.post("/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A Redis that speaks TLS only, with a certificate for 127.0.0.1 signed by a CA made
    here: its base URL (`rediss://127.0.0.1:PORT/0?ssl_ca_certs=...`) and the CA file."""
    certs = tmp_path / "certs"
    certs.mkdir()
    ca, key, cert = certs / "ca.pem", certs / "server.key", certs / "server.pem"

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=certs, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        str(ca),
        "-days",
        "2",
        "-subj",
        "/CN=conveyor-test-ca",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (certs / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        str(ca),
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "2",
        "-extfile",
        "san.cnf",
    )
    port = free_port()
    server = subprocess.Popen(
        [
            str(find_server_binary()),
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(ca),
            "--tls-auth-clients",
            "no",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    try:
        deadline = time.monotonic() + 10
        while True:
            assert server.poll() is None, "the Redis server would not start with TLS"
            try:
                redis.Redis.from_url(url, socket_timeout=1).ping()
                break
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "the TLS Redis never answered"
                time.sleep(0.05)
        yield url, ca
    finally:
        server.kill()
        server.wait()


def test_the_service_runs_every_path_as_an_acl_user_limited_to_its_prefix_over_tls(
    tmp_path: Path, tls_redis: tuple[str, Path]
) -> None:
    base, _ = tls_redis
    admin = redis.Redis.from_url(base)
    acl: Any = admin.execute_command  # redis-py's is untyped
    acl("ACL", "SETUSER", "conveyor", *RULE.split())
    with contextlib.suppress(redis.exceptions.ResponseError):  # before 7.2: never sent
        acl("ACL", "SETUSER", "conveyor", CLIENT_SETINFO)
    acl("ACL", "LOG", "RESET")
    url = base.replace("rediss://", f"rediss://conveyor:{PASSWORD}@")
    plain = refused_plain(url.replace("rediss://", "redis://").split("?")[0])
    env = {
        **service_env(
            url,
            CONVEYOR_LEASE_SECONDS="5",
            # Admission checks run in the submit script (INFO for the memory watermark).
            CONVEYOR_ADMIT_MAX_MEMORY_BYTES=str(2**30),
            CONVEYOR_QUEUE_LIMITS='{"*": {"max_depth": 100000}}',
            # The limits' keys have a hash tag of their own ({acme}:limit:...).
            CONVEYOR_RATE_LIMITS='{"dummy": "100/s"}',
            CONVEYOR_CONCURRENCY_LIMITS='{"report": 5}',
        ),
        "CONVEYOR_KEY_PREFIX": PREFIX,
    }
    with (
        Api(env, tmp_path) as api,
        Conveyor(["worker", "--queues", "default,bulk"], env, tmp_path) as worker,
        api.client() as client,
    ):
        paths = drive(client)
        time.sleep(1.5)  # a few maintenance ticks and heartbeats more, as the user
        api_log, worker_log = api.output(), worker.output()
    denials = acl("ACL", "LOG")
    user = redis.Redis.from_url(url)
    try:
        foreign = refused(lambda: user.get("{other:default}:queued"))
        admin_command = refused(lambda: user.flushall())
        config = refused(lambda: user.config_get("requirepass"))
        own = user.exists(f"{PREFIX}:queues")
    finally:
        user.close()
        admin.close()
    print(f"[redis acl] paths={paths} denials={len(denials)} own_keys_readable={own}")
    print(f"[redis acl] over TLS; a plain-text connection refused={plain}")
    print(f"[redis acl] refused: other prefix={foreign} flushall={admin_command} config={config}")
    # CONFIG is left out on purpose (CONFIG GET reads every setting, passwords included): the
    # start-up check of maxmemory-policy and appendonly is then refused, and only warns.
    assert {d[b"object"] for d in denials} <= {b"config|get"}, denials
    assert "could not check the Redis configuration" in api_log + worker_log
    assert "NOPERM" not in api_log + worker_log
    assert (foreign, admin_command, config) == (True, True, True)
    assert own == 1
    assert plain
    assert all(paths.values()), paths


def refused_plain(url: str) -> bool:
    """Whether the server refuses to talk without TLS on its port."""
    try:
        redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).ping()
    except redis.exceptions.ConnectionError:
        return True
    return False


def refused(call: Any) -> bool:
    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    return False


def drive(client: httpx.Client) -> dict[str, bool]:
    """Every path once: submit (single, batch, idempotent, scheduled, with a deadline),
    claim, progress, retry after a failure, dead and retried by hand, cancel (waiting and
    running), pause and resume, long-poll, list, queue figures, health; then a schedule."""
    seen: dict[str, bool] = {}
    email = {"type": "email", "payload": {"to": "a@example.com", "subject": "Hi", "body": "."}}
    done = submit(client, email)
    again = submit(client, email, **{"Idempotency-Key": "order-42"})
    seen["idempotent"] = submit(client, email, **{"Idempotency-Key": "order-42"}) == again
    batch = client.post(
        "/jobs/batch",
        json={"jobs": [{"type": "dummy", "payload": {"mode": "succeed"}, "queue": "bulk"}] * 3},
    )
    seen["batch"] = batch.status_code == 202
    flaky = submit(client, {"type": "dummy", "payload": {"mode": "fail", "times": 1}})
    fatal = submit(client, {"type": "dummy", "payload": {"mode": "fatal"}})
    later = submit(client, {"type": "dummy", "payload": {"mode": "succeed"}, "delay": 1})
    waiting = submit(client, {"type": "dummy", "payload": {"mode": "succeed"}, "delay": 300})
    report = submit(
        client,
        {
            "type": "report",
            "payload": {"name": "q3", "rows": 10, "seconds": 1},
            "deadline": 120,
        },
    )
    running = submit(client, {"type": "report", "payload": {"name": "x", "rows": 1, "seconds": 60}})
    # Woken by the job's end (the subscription, under the ACL user). The client's timeout
    # outlasts the wait, so a worker slow to start on a busy machine is not a failure.
    polled = client.get(f"/jobs/{done}", params={"wait": 15}, timeout=20.0)
    seen["long_poll"] = polled.json()["status"] == "succeeded"
    seen["cancel_waiting"] = client.post(f"/jobs/{waiting}/cancel").status_code == 200
    wait_for_job(client, running, {"active"})
    seen["cancel_running"] = client.post(f"/jobs/{running}/cancel").status_code == 202
    seen["cancelled"] = wait_for_job(client, running, TERMINAL)["status"] == "cancelled"
    flaky_view = wait_for_job(client, flaky, TERMINAL)
    seen["retry_after_failure"] = (flaky_view["status"], flaky_view["attempts"]) == (
        "succeeded",
        2,
    )
    seen["dead"] = wait_for_job(client, fatal, TERMINAL)["status"] == "dead"
    seen["retry_by_hand"] = client.post(f"/jobs/{fatal}/retry").status_code == 202
    seen["dead_again"] = wait_for_job(client, fatal, TERMINAL)["attempts"] == 1
    seen["scheduled"] = wait_for_job(client, later, TERMINAL)["status"] == "succeeded"
    seen["progress_and_deadline"] = wait_for_job(client, report, TERMINAL)["progress"] == 100
    seen["pause"] = client.post("/queues/bulk/pause").status_code == 200
    parked = client.post(
        "/jobs", json={"type": "dummy", "payload": {"mode": "succeed"}, "queue": "bulk"}
    ).json()["id"]
    time.sleep(1.0)
    parked_view = client.get(f"/jobs/{parked}").json()
    seen["paused_holds"] = (parked_view["status"], parked_view["waiting_reason"]["kind"]) == (
        "queued",
        "queue_paused",
    )
    seen["resume"] = client.post("/queues/bulk/resume").status_code == 200
    seen["resumed_runs"] = wait_for_job(client, parked, TERMINAL)["status"] == "succeeded"
    listed = client.get("/jobs", params={"status": "succeeded", "limit": 50}).json()
    seen["list"] = done in str(listed)
    queues = client.get("/queues").json()
    seen["stats"] = "default" in str(queues) and "bulk" in str(queues)
    seen["queue"] = client.get("/queues/default").status_code == 200
    seen["ready"] = client.get("/health/ready").status_code == 200
    seen.update(drive_schedule(client))
    return seen


def drive_schedule(client: httpx.Client) -> dict[str, bool]:
    """An interval schedule: created, fired (its job run), listed, paused, resumed, removed."""
    seen: dict[str, bool] = {}
    body = {"name": "tick", "every": 1, "type": "dummy", "payload": {"mode": "succeed"}}
    seen["schedule_created"] = client.post("/schedules", json=body).status_code == 201
    deadline = time.monotonic() + 30
    fired = None
    while fired is None and time.monotonic() < deadline:
        fired = client.get("/schedules/tick").json().get("last_job_id")
        time.sleep(0.2)
    seen["schedule_fired"] = fired is not None
    if fired is not None:
        seen["scheduled_job_ran"] = wait_for_job(client, fired, TERMINAL)["status"] == "succeeded"
    seen["schedules_listed"] = "tick" in str(client.get("/schedules").json())
    seen["schedule_paused"] = client.post("/schedules/tick/pause").status_code == 200
    seen["schedule_resumed"] = client.post("/schedules/tick/resume").status_code == 200
    seen["schedule_removed"] = client.delete("/schedules/tick").status_code == 204
    return seen
