"""The Lua scripts as the loader assembles them, and the calls `calls.py` builds for them."""

from __future__ import annotations

import re
from importlib import resources
from typing import Final

import attrs
import pytest
from redis.crc import key_slot

from adapters.redis_queue import calls, scripts
from adapters.redis_queue.calls import Grant, Retention, ScriptCall
from adapters.redis_queue.keys import (
    QueueKeys,
    RegistryKeys,
    idempotency_digest,
    idempotency_key,
    legacy_idempotency_key,
)
from adapters.redis_queue.limits import LimitArgs
from adapters.redis_queue.submission import group_of, items_of
from domain.jobs import Job, JobError, Lease
from domain.limits import FlowLimits, RateLimit
from domain.ports import AdmissionPolicy, NewJob, QueueLimits
from domain.settlement import Ending
from tests.contracts.builders import new_job

LUA: Final = resources.files("adapters.redis_queue").joinpath("lua")
KEYS: Final = QueueKeys.of("p", "mail")
RETENTION: Final = Retention(1000, 2000)
REGISTRY: Final = RegistryKeys.of("p")
# `email` has a rate and a concurrency, `report` a concurrency, `sms` a rate.
RATES: Final = {"email": RateLimit(5, 1.0), "sms": RateLimit(2, 1.0)}
LIMITS: Final = LimitArgs.of("p", FlowLimits.of(RATES, {"email": 2, "report": 1}))


def fragment_names() -> list[str]:
    return sorted(f.name.removesuffix(".lua") for f in LUA.joinpath("lib").iterdir())


def lease(job: Job | None = None) -> Lease:
    return Lease(job or new_job(queue="mail"), "7:1")


def one_call_per_script() -> list[ScriptCall]:
    """A call of every script but SUBMIT, on queue `mail`, with one lease where it takes
    leases."""
    held = [lease()]
    return [
        calls.claim(KEYS, limit=5, lease_ms=1000, worker_id="w1", retention=RETENTION),
        calls.recover(KEYS, RETENTION),
        calls.renew(KEYS, 1000, held),
        calls.set_progress(KEYS, held[0], 50),
        calls.settle(KEYS, RETENTION, [calls.attempt("a" * 32, "7:1", Ending.released())]),
        calls.held_by(KEYS, "w1"),
        calls.requeue(KEYS, "a" * 32),
        calls.cancel(KEYS, "a" * 32, RETENTION),
        calls.cancel_requested(KEYS, held),
        calls.resume(KEYS),
        calls.queue_stats(KEYS),
        calls.situation(KEYS, "a" * 32, 1_700_000_000_000_000),
        calls.heartbeat(KEYS, "w1", 1000),
        calls.idle(KEYS, RETENTION),
        calls.wake_parked(KEYS, ["a" * 32]),
    ]


def one_call_per_limits_script() -> list[ScriptCall]:
    """A call of every script of the limits' own slot (Redis Cluster), for a claim on queue
    `mail` that started one `email` and one `report`."""
    email, report = new_job(queue="mail", type="email"), new_job(queue="mail", type="report", n=1)
    held = [Lease(email, "7:1"), Lease(report, "8:1"), Lease(new_job(queue="mail", n=2), "9:1")]
    granted = [Grant("email", 2, -1), Grant("report", 1, -1), Grant("sms", 0, 300)]
    extended = calls.extend(LIMITS, 1000, held)
    assert extended is not None
    return [
        calls.reserve(LIMITS, most=5, lease_ms=1000, reservation="r1"),
        calls.convert(
            LIMITS,
            reservation="r1",
            lease_ms=1000,
            granted=granted,
            started={"email": [email.id.encode()], "report": [report.id.encode()]},
        ),
        extended,
        calls.release(LIMITS, [("email", email.id), ("report", report.id)]),
        calls.throttled(LIMITS.types[0], 1_700_000_000_000_000),
    ]


def one_call_per_registry_script() -> list[ScriptCall]:
    return [
        calls.register(REGISTRY, [[("mail", "0a1b2c3d", False)]], max_queues=5, strict=True),
        calls.registry_scan(REGISTRY, "0", 100),
        calls.forget_queues(REGISTRY, [("mail", "0a1b2c3d", b"1 1")], grace_ms=1000),
        calls.worker_seen(REGISTRY, "w1", b'{"host": "h"}', 1000),
    ]


def test_every_script_defines_each_fragment_function_it_calls() -> None:
    defined_by_fragments = {
        name
        for fragment in fragment_names()
        for name in re.findall(
            r"local function (\w+)", LUA.joinpath("lib", f"{fragment}.lua").read_text()
        )
    }
    assert len(scripts.ALL) == 25
    for script in scripts.ALL:
        defined = set(re.findall(r"local function (\w+)", script.source))
        called = {name for name in defined_by_fragments if re.search(rf"\b{name}\(", script.source)}
        assert called <= defined, (script.name, sorted(called - defined))


def test_every_fragment_is_needed_by_a_script_and_every_script_has_a_file() -> None:
    used = {
        name
        for script in scripts.ALL
        for name in fragment_names()
        if f"\n-- {name}: " in "\n" + script.source
    }
    assert used == set(fragment_names())
    files = {f.name.removesuffix(".lua") for f in LUA.iterdir() if f.name.endswith(".lua")}
    assert files == {script.name for script in scripts.ALL}


def test_a_script_that_uses_a_key_it_does_not_list_does_not_load() -> None:
    body = "-- KEYS: active\nredis.call('INCR', Q.stale)\n"
    with pytest.raises(RuntimeError, match=r"uses keys it does not list: \['stale'\]"):
        scripts.assemble("probe", body)
    assert scripts.assemble("probe", body.replace("KEYS: active", "KEYS: active stale"))


def test_a_script_must_list_its_keys_and_only_keys_a_queue_has() -> None:
    with pytest.raises(RuntimeError, match="does not list its KEYS"):
        scripts.assemble("probe", "return 1\n")
    with pytest.raises(RuntimeError, match="unknown keys"):
        scripts.assemble("probe", "-- KEYS: active elsewhere\nreturn 1\n")


def test_every_call_passes_the_keys_its_script_lists_all_in_the_queues_hash_tag() -> None:
    for call in one_call_per_script():
        keys = [k.encode() if isinstance(k, str) else k for k in call.keys]
        assert keys == [(KEYS.base + name).encode() for name in call.script.keys], call
        assert {key_slot(k) for k in keys} == {key_slot(b"{p:mail}")}, call
        # Nothing the script could name a key with comes in ARGV.
        args = [a.encode() if isinstance(a, str) else a for a in call.args]
        assert not any(isinstance(a, bytes) and a.startswith(b"{p:") for a in args), call


def test_every_limits_call_passes_its_scripts_keys_per_type_all_in_the_limits_slot() -> None:
    for call in one_call_per_limits_script():
        assert call.script.limits
        names = call.script.keys
        assert call.keys, call
        assert len(call.keys) % len(names) == 0, call
        keys = [k.encode() if isinstance(k, str) else k for k in call.keys]
        for n, key in enumerate(keys):
            assert key.startswith(f"{{p}}:limit:{names[n % len(names)]}:".encode()), call
        assert {key_slot(k) for k in keys} == {key_slot(b"{p}")}, call


def key_types(call: ScriptCall, every: int = 1) -> list[str]:
    """The job types `call`'s keys are of, one key in `every`."""
    return [str(k, "utf-8") if isinstance(k, bytes) else k for k in call.keys][::every]


def test_a_limits_call_passes_only_the_types_it_concerns() -> None:
    reserve, convert, extend, release, throttled = one_call_per_limits_script()
    assert len(reserve.keys) == 3 * 3  # every limited type
    assert [k.split(":")[-1] for k in key_types(convert, 3)] == ["email", "report"]  # granted
    assert list(convert.args[2:]) == [2, 2, 2, 1, convert.args[6], 1, 1, 1, convert.args[10]]
    assert [k.split(":")[-1] for k in key_types(extend)] == ["email", "report"]  # no `dummy`
    assert list(release.args[::2]) == [1, 2]
    assert throttled.args[:3] == (5, 1000, 2)
    assert calls.extend(LIMITS, 1000, [Lease(new_job(queue="mail"), "7:1")]) is None


def test_a_limits_script_may_use_no_key_of_a_queue() -> None:
    body = "-- KEYS (limits): slots\nreturn redis.call('ZCARD', KEYS[1])\n"
    assert scripts.assemble("probe", body).limits
    for uses in ("redis.call('INCR', Q.stale)", "redis.call('GET', job_key('x'))"):
        with pytest.raises(RuntimeError, match="a key of a queue"):
            scripts.assemble("probe", body + uses + "\n")
    with pytest.raises(RuntimeError, match="unknown keys"):
        scripts.assemble("probe", "-- KEYS (limits): slots queued\nreturn 1\n")


def test_every_registry_call_passes_the_keys_its_script_lists_all_in_one_slot() -> None:
    for call in one_call_per_registry_script():
        assert call.script.registry
        assert list(call.keys) == [getattr(REGISTRY, name) for name in call.script.keys]
        assert {key_slot(str(k).encode()) for k in call.keys} == {key_slot(b"p:queues")}, call


def test_a_registry_script_that_uses_a_key_it_does_not_list_does_not_load() -> None:
    body = "-- KEYS (registry): queues\nredis.call('SCARD', R.tags)\n"
    with pytest.raises(RuntimeError, match=r"uses keys it does not list: \['tags'\]"):
        scripts.assemble("probe", body)
    assert scripts.assemble("probe", body.replace("registry): queues", "registry): queues tags"))
    with pytest.raises(RuntimeError, match="uses keys it does not list"):
        scripts.assemble("probe", "-- KEYS (registry): queues\nredis.call('GET', Q.paused)\n")


def test_a_submission_passes_each_queues_keys_once_then_each_idempotency_key_once() -> None:
    jobs = [new_job(queue="mail"), new_job(queue="sms"), new_job(queue="mail")]
    items = items_of(
        [
            NewJob(job=jobs[0], idempotency_key="k1", fingerprint="f"),
            NewJob(job=jobs[1]),
            NewJob(job=jobs[2], idempotency_key="k1", fingerprint="f"),
        ],
        prefix="p",
        keys_of=lambda queue: QueueKeys.of("p", queue),
    )
    policy = AdmissionPolicy(queues={"sms": QueueLimits(max_depth=5)})
    call = calls.submit([items], idempotency_ttl_ms=1000, admission=policy)
    mail, sms = QueueKeys.of("p", "mail"), QueueKeys.of("p", "sms")
    group = scripts.SUBMIT.keys
    digest = idempotency_digest("k1")
    assert list(call.keys) == [
        *mail.named(group),
        *sms.named(group),
        # Under the queue's tag; then, read-only, where an older Conveyor held it.
        idempotency_key(mail, digest),
        legacy_idempotency_key("p", digest),
    ]
    # The retention, no memory limit, two queues (mail unlimited, sms at most 5 queued).
    assert list(call.args[:7]) == [1000, "", 2, "", "", 5, ""]
    at_key = 2 * len(group) + 1
    first, third = call.args[9 : 9 + 5], call.args[-len(items[2].fields) - 10 :][:5]
    assert list(first) == [1, jobs[0].id, at_key, at_key + 1, "f"]
    assert list(third) == [1, jobs[2].id, at_key, at_key + 1, "f"]


def test_on_a_cluster_an_idempotency_key_is_one_per_queue_and_has_no_older_key() -> None:
    jobs = [new_job(queue="mail"), new_job(queue="sms")]
    items = items_of(
        [NewJob(job=job, idempotency_key="k1", fingerprint="f") for job in jobs],
        prefix="p",
        keys_of=lambda queue: QueueKeys.of("p", queue),
        legacy_keys=False,
    )
    digest = idempotency_digest("k1")
    assert [item.key_name for item in items] == [
        "{p:mail}:idem:" + digest,
        "{p:sms}:idem:" + digest,
    ]
    assert [item.legacy_key_name for item in items] == [None, None]


# The values each script takes per lease or attempt (one that did not succeed), after its
# fixed arguments.
_PER_ITEM: Final = {"renew": 2, "settle": 6, "cancel_requested": 2, "wake_parked": 1}


def test_each_builder_passes_as_many_arguments_as_its_script_documents() -> None:
    for call in one_call_per_script():
        header = LUA.joinpath(f"{call.script.name}.lua").read_text()
        fixed = max((int(n) for n in re.findall(r"^-- ARGV\[(\d+)\]", header, re.M)), default=0)
        items = 1 if call.script.name in _PER_ITEM else 0
        assert len(call.args) == fixed + items * _PER_ITEM.get(call.script.name, 0), (
            call.script.name
        )


def test_a_settled_attempt_carries_its_outcome_and_result_or_error_and_retry_time() -> None:
    boom = JobError("boom", "ValueError")
    assert calls.attempt("j", "t", Ending.failed(boom, 2.5)) == (
        "j",
        "t",
        b"failed",
        b'{"message":"boom","type":"ValueError"}',
        b"2.5",
        "ValueError: boom",
    )
    assert calls.attempt("j", "t", Ending.failed(boom, None))[4] == b""
    assert calls.attempt("j", "t", Ending.released()) == ("j", "t", b"released", b"", b"", b"")
    # A success, the hot path, sends four values.
    assert calls.attempt("j", "t", Ending.succeeded([1, "x"])) == (
        "j",
        "t",
        b"succeeded",
        b'[1,"x"]',
    )
    with pytest.raises(ValueError, match="finite"):
        calls.attempt("j", "t", Ending.failed(boom, float("inf")))


def test_on_a_cluster_every_script_call_keeps_its_keys_in_one_hash_slot() -> None:
    """What Redis Cluster needs of each script call: every key in KEYS, all in one slot.

    Built for three queues as the adapter builds them on a cluster: SUBMIT per queue (a
    batch spanning queues is split), with idempotency keys and unique keys, and no older
    prefix-wide keys; every other script of a queue; the registry's scripts."""
    prefix = "p"
    queues = ["mail", "sms", "reports"]

    def keys_of(queue: str) -> QueueKeys:
        return QueueKeys.of(prefix, queue)

    built: list[ScriptCall] = []
    for queue in queues:
        jobs = [
            NewJob(job=new_job(queue=queue, n=0), idempotency_key="k1", fingerprint="f"),
            NewJob(job=attrs.evolve(new_job(queue=queue, n=1), unique_key="u")),
        ]
        items = items_of(jobs, prefix=prefix, keys_of=keys_of, legacy_keys=False)
        assert group_of(items) == queue  # batched with its queue's submissions only
        policy = AdmissionPolicy(default=QueueLimits(max_depth=10))
        built.append(calls.submit([items], idempotency_ttl_ms=1000, admission=policy))
        keys = keys_of(queue)
        held = [Lease(new_job(queue=queue), "7:1")]
        built += [
            calls.claim(keys, limit=5, lease_ms=1000, worker_id="w1", retention=RETENTION),
            calls.recover(keys, RETENTION),
            calls.renew(keys, 1000, held),
            calls.set_progress(keys, held[0], 50),
            calls.settle(keys, RETENTION, [calls.attempt("a" * 32, "7:1", Ending.released())]),
            calls.held_by(keys, "w1"),
            calls.requeue(keys, "a" * 32),
            calls.cancel(keys, "a" * 32, RETENTION),
            calls.cancel_requested(keys, held),
            calls.resume(keys),
            calls.queue_stats(keys),
            calls.situation(keys, "a" * 32, 1_700_000_000_000_000),
            calls.heartbeat(keys, "w1", 1000),
            calls.idle(keys, RETENTION),
            # With flow limits: the claim takes the permits granted, and no limit key.
            calls.claim(
                keys,
                limit=5,
                lease_ms=1000,
                worker_id="w1",
                retention=RETENTION,
                limits=LIMITS.names_only(),
                grants=[Grant("email", 2, -1)],
            ),
            calls.recover(keys, RETENTION, LIMITS.names_only()),
            calls.wake_parked(keys, ["a" * 32]),
        ]
    built += one_call_per_registry_script()
    built += one_call_per_limits_script()
    assert {call.script.name for call in built} == {script.name for script in scripts.ALL}
    slots: dict[str, set[int]] = {}
    for call in built:
        assert call.keys, call.script.name
        slot = {key_slot(k.encode() if isinstance(k, str) else k) for k in call.keys}
        assert len(slot) == 1, (call.script.name, call.keys)
        slots.setdefault(call.script.name, set()).update(slot)
    # Each queue in its own slot (these three names hash apart), the registry in its own.
    by_queue = {key_slot(f"{{{prefix}:{queue}}}".encode()) for queue in queues}
    assert len(by_queue) == 3
    assert slots["submit"] == slots["claim"] == by_queue
    assert slots["register"] == {key_slot(b"p:queues")}
    assert slots["reserve"] == slots["convert"] == slots["release"] == {key_slot(b"{p}")}
    assert key_slot(b"{p}") not in by_queue | slots["register"]
    for line in sorted(f"{q} -> slot {key_slot(f'{{p:{q}}}'.encode())}" for q in queues):
        print(line)
