"""The Lua scripts, loaded from `lua/`: one file per script, shared fragments in `lua/lib/`.

Each script is atomic on the server and makes one of the job's moves; none reads state into
Python to write it back. A script file documents its KEYS, ARGV and reply at its top; two
header lines are read here as well:

- ``-- KEYS: queued active ...`` names the queue's fixed keys the script receives in KEYS,
  in order (``-- KEYS per queue: ...`` for SUBMIT: that group once per queue). The prelude
  binds them as ``Q.queued``, ``Q.active``, ...; `calls.py` passes them by these names, so
  the list is written once. Every ``Q.<name>`` the assembled script uses must be listed:
  each key a script touches is visible in KEYS and shares the queue's hash tag. A script of
  the registry of queue names says ``-- KEYS (registry): queues tags ...`` instead: its keys
  (`keys.REGISTRY_NAMES`) are bound as ``R.queues``, ..., without the queue's prelude. A
  script of the flow limits' own slot (Redis Cluster) says ``-- KEYS (limits): starts ...``:
  those keys (`keys.LIMIT_NAMES`) of each type it is given, in that order; it reads them
  from KEYS itself, and may use neither a queue's keys nor the registry's.
- ``-- Clock: caller`` (read-only scripts only) takes the time from the caller, in us, as
  its last ARGV, instead of asking Redis (TIME is one more command per call).
- ``-- Needs: wake order ...`` names the fragments of `lua/lib/` the body calls; a fragment
  names the fragments it calls the same way. A script is the clock, the prelude (a queue's
  scripts only), then every fragment it needs (each after the ones it needs), then its
  body: each function a script defines costs a closure on every run, and the hot scripts
  run thousands of times a second.

The status names, the sets of statuses each move starts from, the outcomes and the limits
are rendered into the scripts (``$NAME``) from the domain at import time: the state machine
and the settlement rule are defined once, in the domain, and this module refuses to load if
a move a script makes is not in `TRANSITIONS`.

Needs Redis 6.0 or later (BLPOP with a fractional timeout); the suite runs on 7.0.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from importlib import resources
from string import Template
from typing import Final

import attrs

from adapters.redis_queue.codec import FIELDS_WITH_TOKEN, encode_error
from adapters.redis_queue.keys import LIMIT_NAMES, NAMES, REGISTRY_NAMES
from domain.jobs import (
    HISTORY_LIMIT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    REQUEUABLE,
    TRANSITIONS,
    AttemptOutcome,
    JobStatus,
    can_transition,
    error_summary,
    sources_of,
)
from domain.rates import DRAIN_SECONDS, SHOW_SECONDS
from domain.settlement import FINISHED, RETRYABLE, Ending

S = JobStatus

# At most this many jobs are moved per kind of maintenance (deadlines, due jobs, lapsed
# leases, each retention) per call, so one call stays short however large a backlog is; the
# next call continues.
MAINTENANCE_BATCH: Final = 1000
# Index entries of expired results forgotten per success (each success adds one).
INDEX_TRIM_BATCH: Final = 10
# On Redis Cluster, what a claim's permits are called in the limits' keys (`lua/reserve.lua`;
# no job id or claim's start entry starts so), and how soon a claim that found the room held
# by other claims' permits looks again (they are converted within a round trip or two).
PERMIT_PREFIX: Final = "permit:"
PERMIT_RETRY_MS: Final = 20
# A priority's band of scores in `queued` is 2^45 wide (201 bands stay below 2^53).
_BAND: Final = 2**45
if (PRIORITY_MAX - PRIORITY_MIN + 1) * _BAND > 2**53:  # pragma: no cover - a domain change
    raise RuntimeError("the claim order's scores would not be exact in a double")

_WAITING: Final = frozenset(s for s in S if s.is_waiting)
_FROM_ACTIVE: Final = frozenset({S.ACTIVE})
# What `decide` may answer (see lua/lib/decide.lua), each reached from `active`.
_SETTLED: Final = frozenset({S.SUCCEEDED, S.CANCELLED, S.EXPIRED, S.QUEUED, S.FAILED, S.DEAD})
_SETTLES_FROM: Final = frozenset.intersection(_FROM_ACTIVE, *(sources_of(s) for s in _SETTLED))

# The moves the scripts make. Checked against the domain's state machine below.
_SCRIPTED_MOVES: Final = (
    *((s, S.QUEUED) for s in (S.FAILED, S.SCHEDULED)),  # maintenance: due
    *((s, S.EXPIRED) for s in _WAITING),  # maintenance, claim: past the deadline
    (S.QUEUED, S.ACTIVE),  # claim
    *((S.ACTIVE, s) for s in sorted(_SETTLED)),  # settle; maintenance: a lapsed lease
    *((s, S.CANCELLED) for s in _WAITING),  # cancel
    *((s, S.QUEUED) for s in sorted(REQUEUABLE)),  # requeue
)
for _source, _target in _SCRIPTED_MOVES:
    if not can_transition(_source, _target):  # pragma: no cover - guards a domain change
        raise RuntimeError(f"scripted move {_source} -> {_target} is not in TRANSITIONS")
if _SETTLES_FROM != _FROM_ACTIVE:  # pragma: no cover - guards a domain change
    raise RuntimeError("an active job can no longer reach every status a settlement gives")
# SETTLE leaves the `succeeded` history record implied (see lua/lib/settlement.lua): sound
# only while nothing can happen to a job after it succeeded.
if TRANSITIONS[S.SUCCEEDED]:  # pragma: no cover - guards a domain change
    raise RuntimeError("succeeded is no longer final: SETTLE must store its history record")


def _lua_set(values: Iterable[str]) -> str:
    return "{" + ", ".join(f"['{v}'] = true" for v in sorted(values)) + "}"


def _lua_string(text: str | bytes) -> str:
    """A Lua string literal of `text`'s UTF-8 bytes (decimal escapes outside printable ASCII)."""
    data = text.encode() if isinstance(text, str) else text
    return (
        '"'
        + "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\{b:03d}" for b in data)
        + '"'
    )


_LAPSE: Final = Ending.lease_expired()
if _LAPSE.error is None or _LAPSE.retry_in is None:  # pragma: no cover - a domain change
    raise RuntimeError("a lapsed lease must end with an error and a retry time")

_SUBSTITUTIONS: Final = {
    **{s.name: f"'{s.value}'" for s in JobStatus},
    "STATUS_LIST": "{" + ", ".join(f"'{s.value}'" for s in JobStatus) + "}",
    "FIELDS": ", ".join(f"'{f}'" for f in FIELDS_WITH_TOKEN),
    # Where each field sits in an HMGET of FIELDS (`STATUS_FIELD` ... `TOKEN_FIELD`).
    **{f"{name.upper()}_FIELD": str(n) for n, name in enumerate(FIELDS_WITH_TOKEN, 1)},
    # The same as a table from name to place, and a row of FIELDS with none of them set.
    "FIELD_PLACES": "{"
    + ", ".join(f"['{f}'] = {n}" for n, f in enumerate(FIELDS_WITH_TOKEN, 1))
    + "}",
    "NO_FIELDS": ", ".join("false" for _ in FIELDS_WITH_TOKEN),
    "MAINTENANCE_BATCH": str(MAINTENANCE_BATCH),
    "INDEX_TRIM_BATCH": str(INDEX_TRIM_BATCH),
    "PRIORITY_MIN": str(PRIORITY_MIN),
    "PRIORITY_MAX": str(PRIORITY_MAX),
    "BAND": str(_BAND),
    "HALF_BAND": str(_BAND // 2),
    # Which statuses each move may start from, per the domain.
    "WAITING": _lua_set(_WAITING),
    "FINISHED": _lua_set(FINISHED),
    "PROMOTABLE": _lua_set(sources_of(S.QUEUED) & _WAITING),
    "EXPIRABLE": _lua_set(sources_of(S.EXPIRED) & _WAITING),
    "CANCELLABLE": _lua_set(sources_of(S.CANCELLED) & _WAITING),
    "CLAIMABLE": _lua_set(sources_of(S.ACTIVE)),
    "SETTLES_FROM": _lua_set(_SETTLES_FROM),
    "STOPS_FROM": _lua_set(sources_of(S.CANCELLED) & _FROM_ACTIVE),
    "REQUEUABLE": _lua_set(REQUEUABLE),
    "HISTORY_LIMIT": str(HISTORY_LIMIT),
    # The rates' windows (`domain.rates`).
    "RATE_SHOW": repr(SHOW_SECONDS),
    "RATE_DRAIN": repr(DRAIN_SECONDS),
    # How attempts end, as the history records them, and which may be retried.
    **{f"OUT_{o.name}": f"'{o.value}'" for o in AttemptOutcome},
    "RETRYABLE": _lua_set(RETRYABLE),
    # How a lapsed lease ends its attempt.
    "LAPSE_OUTCOME": f"'{_LAPSE.outcome.value}'",
    "LAPSE_RETRY_IN": repr(_LAPSE.retry_in),
    "LAPSE_ERROR": _lua_string(encode_error(_LAPSE.error)),
    "LAPSE_SUMMARY": _lua_string(error_summary(_LAPSE.error)),
    "PERMIT": _lua_string(PERMIT_PREFIX),
    "PERMIT_LENGTH": str(len(PERMIT_PREFIX)),
    "PERMIT_RETRY_MS": str(PERMIT_RETRY_MS),
}

_KEYS_LINE: Final = re.compile(
    r"^-- KEYS( per queue| \(registry\)| \(limits\))?: ([a-z_ ]+)$", re.MULTILINE
)
_NEEDS_LINE: Final = re.compile(r"^-- Needs: ([a-z_ ]+)$", re.MULTILINE)
_CALLER_CLOCK: Final = re.compile(r"^-- Clock: caller$", re.MULTILINE)
_REDIS_TIME: Final = (
    "(function(t) return tonumber(t[1]) * 1000000 + tonumber(t[2]) end)(redis.call('TIME'))"
)
_CALLER_TIME: Final = "tonumber(ARGV[#ARGV])"
_USED_KEY: Final = re.compile(r"\bQ\.(\w+)")
_USED_REGISTRY_KEY: Final = re.compile(r"\bR\.(\w+)")
_COMMENT: Final = re.compile(r"--.*$", re.MULTILINE)
_BASE: Final = re.compile(r"\b(base|job_key|index_key)\b")


@attrs.frozen
class Script:
    name: str
    source: str
    sha: str
    keys: tuple[str, ...]  # the keys in KEYS, by name (`keys.NAMES` or `REGISTRY_NAMES`)
    per_queue: bool  # `keys` is one group per queue (SUBMIT)
    registry: bool = False  # `keys` are the registry's, not a queue's
    limits: bool = False  # `keys` are the flow limits', one group per type (Redis Cluster)


@functools.cache
def _read(*path: str) -> str:
    """A file under ``lua/``, read once: the fragments are shared by many scripts."""
    return resources.files("adapters.redis_queue").joinpath("lua", *path).read_text("utf-8")


def _needs(source: str) -> tuple[str, ...]:
    found = _NEEDS_LINE.search(source)
    return tuple(found.group(1).split()) if found else ()


def _fragments(needs: Iterable[str]) -> list[str]:
    """The fragments `needs` names and those they need in turn, each after its needs."""
    ordered: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise RuntimeError(f"Lua fragments need each other: {' -> '.join((*path, name))}")
        if name not in ordered:
            for need in _needs(_read("lib", f"{name}.lua")):
                visit(need, (*path, name))
            ordered.append(name)

    for name in needs:
        visit(name, ())
    return ordered


def load(name: str) -> Script:
    """The script of ``lua/<name>.lua``, assembled and rendered, with its checks made."""
    return assemble(name, _read(f"{name}.lua"))


def assemble(name: str, body: str) -> Script:
    """The script whose file ``lua/<name>.lua`` holds `body`: the prelude, the fragments it
    needs, then `body`, rendered. Raises RuntimeError when its header does not list its keys,
    or lists keys a queue does not have, or when the script uses a key it does not list."""
    declared = _KEYS_LINE.search(body)
    if declared is None:
        raise RuntimeError(f"lua/{name}.lua does not list its KEYS")
    keys = tuple(declared.group(2).split())
    if declared.group(1) == " (registry)":
        return _assemble_registry(name, body, keys)
    if declared.group(1) == " (limits)":
        return _assemble_limits(name, body, keys)
    per_queue = declared.group(1) is not None
    if not keys or not set(keys) <= set(NAMES):
        raise RuntimeError(f"lua/{name}.lua: unknown keys in {keys}")
    parts = [_read("lib", "clock.lua"), _read("lib", "prelude.lua")]
    parts += [_read("lib", f"{fragment}.lua") for fragment in _fragments(_needs(body))]
    queue_keys = ", ".join(f"{key} = KEYS[at + {n}]" for n, key in enumerate(keys, 1))
    source = Template("\n".join([*parts, body])).substitute(
        _SUBSTITUTIONS,
        QUEUE_KEYS="{" + queue_keys + "}",
        GROUP_SIZE=str(len(keys)),
        CLOCK=_clock(body),
    )
    code = _COMMENT.sub("", source)
    undeclared = set(_USED_KEY.findall(code)) - set(keys)
    if undeclared:
        raise RuntimeError(f"lua/{name}.lua uses keys it does not list: {sorted(undeclared)}")
    return _script(name, source, keys, per_queue=per_queue)


def _clock(body: str) -> str:
    return _CALLER_TIME if _CALLER_CLOCK.search(body) else _REDIS_TIME


def _assemble_limits(name: str, body: str, keys: tuple[str, ...]) -> Script:
    """A script of the flow limits' own slot: the clock and the fragments it needs, no
    queue's prelude; it may touch no key of a queue nor of the registry."""
    if not keys or not set(keys) <= set(LIMIT_NAMES):
        raise RuntimeError(f"lua/{name}.lua: unknown keys in {keys}")
    parts = [_read("lib", "clock.lua")]
    parts += [_read("lib", f"{fragment}.lua") for fragment in _fragments(_needs(body))]
    source = Template("\n".join([*parts, body])).substitute(_SUBSTITUTIONS, CLOCK=_clock(body))
    code = _COMMENT.sub("", source)
    if _USED_KEY.search(code) or _USED_REGISTRY_KEY.search(code) or _BASE.search(code):
        raise RuntimeError(f"lua/{name}.lua uses a key of a queue or of the registry")
    return _script(name, source, keys, per_queue=False, limits=True)


def _assemble_registry(name: str, body: str, keys: tuple[str, ...]) -> Script:
    if not keys or not set(keys) <= set(REGISTRY_NAMES) or _needs(body):
        raise RuntimeError(f"lua/{name}.lua: unknown keys in {keys}, or fragments it needs")
    bound = ", ".join(f"{key} = KEYS[{n}]" for n, key in enumerate(keys, 1))
    source = Template(f"local R = {{{bound}}}\n{body}").substitute(_SUBSTITUTIONS)
    code = _COMMENT.sub("", source)
    undeclared = set(_USED_REGISTRY_KEY.findall(code)) - set(keys)
    if undeclared or _USED_KEY.search(code):
        raise RuntimeError(f"lua/{name}.lua uses keys it does not list: {sorted(undeclared)}")
    return _script(name, source, keys, per_queue=False, registry=True)


def _script(
    name: str,
    source: str,
    keys: tuple[str, ...],
    *,
    per_queue: bool,
    registry: bool = False,
    limits: bool = False,
) -> Script:
    sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - how Redis names a script
    return Script(name, source, sha, keys, per_queue, registry, limits)


SUBMIT: Final = load("submit")
CLAIM: Final = load("claim")
RECOVER: Final = load("recover")
RENEW: Final = load("renew")
SET_PROGRESS: Final = load("set_progress")
SETTLE: Final = load("settle")
HELD_BY: Final = load("held_by")
REQUEUE: Final = load("requeue")
CANCEL: Final = load("cancel")
CANCEL_REQUESTED: Final = load("cancel_requested")
RESUME: Final = load("resume")
QUEUE_STATS: Final = load("queue_stats")
SITUATION: Final = load("situation")
HEARTBEAT: Final = load("heartbeat")
IDLE: Final = load("idle")
REGISTER: Final = load("register")
REGISTRY_SCAN: Final = load("registry_scan")
FORGET_QUEUES: Final = load("forget_queues")
WORKER_SEEN: Final = load("worker_seen")
# The flow limits on Redis Cluster (`permits.py`).
RESERVE: Final = load("reserve")
CONVERT: Final = load("convert")
EXTEND: Final = load("extend")
RELEASE: Final = load("release")
THROTTLED: Final = load("throttled")
WAKE_PARKED: Final = load("wake_parked")

ALL: Final = (
    SUBMIT,
    CLAIM,
    RECOVER,
    RENEW,
    SET_PROGRESS,
    SETTLE,
    HELD_BY,
    REQUEUE,
    CANCEL,
    CANCEL_REQUESTED,
    RESUME,
    QUEUE_STATS,
    SITUATION,
    HEARTBEAT,
    IDLE,
    REGISTER,
    REGISTRY_SCAN,
    FORGET_QUEUES,
    WORKER_SEEN,
    RESERVE,
    CONVERT,
    EXTEND,
    RELEASE,
    THROTTLED,
    WAKE_PARKED,
)
