"""`dummy`: drives the machinery on demand (success, failures, timeouts, crashes, memory).

Tests and operators use it to watch retries, dead letters, timeouts and worker isolation
happen for real. The fault modes (`crash`, `memory`, `hang`, `cpu`) harm the process that
runs them on purpose, so a deployment offers them only when its operator says so
(`CONVEYOR_DUMMY_FAULTS=1`, on in `conveyor dev` and the test suite): otherwise a client could
kill worker processes by the thousand or have each job take gigabytes. Without it they are
refused when submitted (a 422 naming the setting), and a worker dead-letters one already
stored without running it (its payload is validated again before it runs).
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final, NoReturn

from domain.errors import FieldError, NonRetryableError
from domain.job_types import JobContext, JobType
from domain.jobs import JSONObject, JSONValue
from domain.retry import RetryPolicy
from domain.schema import Field, Kind, PayloadSchema


class Mode(enum.StrEnum):
    SUCCEED = "succeed"
    FAIL = "fail"
    FATAL = "fatal"
    SLEEP = "sleep"
    HANG = "hang"
    CPU = "cpu"
    CRASH = "crash"
    MEMORY = "memory"


# What may harm the worker running it: a crash, gigabytes, or a thread that never returns.
FAULT_MODES: Final = (Mode.CRASH, Mode.MEMORY, Mode.HANG, Mode.CPU)
FAULTS_SETTING: Final = "CONVEYOR_DUMMY_FAULTS=1"


class Crash(enum.StrEnum):
    EXIT = "exit"
    SEGFAULT = "segfault"
    ABORT = "abort"


class DummyFailureError(Exception):
    """The failure the `fail` mode asks for."""


# Which optional fields each mode understands; any other optional field is an error.
_FIELDS_BY_MODE: Mapping[Mode, frozenset[str]] = {
    Mode.SUCCEED: frozenset({"result"}),
    Mode.FAIL: frozenset({"times"}),
    Mode.FATAL: frozenset(),
    Mode.SLEEP: frozenset({"seconds"}),
    Mode.HANG: frozenset({"seconds"}),
    Mode.CPU: frozenset({"seconds"}),
    Mode.CRASH: frozenset({"how"}),
    Mode.MEMORY: frozenset({"mb"}),
}
_OPTIONAL = frozenset().union(*_FIELDS_BY_MODE.values())


# Per mode, the optional fields it does not use, in the order errors name them.
_UNUSED_BY_MODE: Mapping[str, tuple[str, ...]] = {
    mode.value: tuple(sorted(_OPTIONAL - fields)) for mode, fields in _FIELDS_BY_MODE.items()
}


def _fields_fit_mode(payload: Mapping[str, Any]) -> Sequence[FieldError]:
    mode = payload["mode"]
    return [
        FieldError(name, f"not used by mode {mode}")
        for name in _UNUSED_BY_MODE[mode]
        if name in payload
    ]


def _mode_rules(modes: Sequence[Mode]) -> dict[str, Any]:
    """`_fields_fit_mode` as JSON Schema: an optional field, unless null, needs a mode that
    uses it (one only fault modes use must be null when they are off)."""
    rules: dict[str, Any] = {}
    for name in sorted(_OPTIONAL):
        users = [m.value for m in modes if name in _FIELDS_BY_MODE[m]]
        null: dict[str, Any] = {"properties": {name: {"type": "null"}}}
        rules[name] = (
            {"anyOf": [null, {"properties": {"mode": {"enum": users}}}]} if users else null
        )
    return {"dependentSchemas": rules}


def dummy_schema(*, faults: bool) -> PayloadSchema:
    """The payload schema, with the fault modes offered (`faults`) or refused."""
    modes = tuple(Mode) if faults else tuple(m for m in Mode if m not in FAULT_MODES)
    faulty = ", ".join(FAULT_MODES)
    refusal = f"is off in this deployment: {faulty} need {FAULTS_SETTING}"
    where = "" if faults else f" (needs {FAULTS_SETTING})"
    return PayloadSchema(
        (
            Field(
                name="mode",
                kind=Kind.STRING,
                required=True,
                choices=modes,
                refused={} if faults else {m.value: f"mode {m} {refusal}" for m in FAULT_MODES},
                description="What the job does: "
                + ", ".join(modes)
                + "."
                + (
                    f" The fault modes {faulty} are on ({FAULTS_SETTING})."
                    if faults
                    else f" The fault modes {faulty} are off: they need {FAULTS_SETTING}."
                ),
            ),
            Field(name="result", kind=Kind.ANY, description="succeed: the result to return."),
            Field(
                name="times",
                kind=Kind.INTEGER,
                minimum=0,
                maximum=1000,
                description="fail: fail the first N attempts, then succeed (absent: always fail).",
            ),
            Field(
                name="seconds",
                kind=Kind.NUMBER,
                minimum=0,
                maximum=3600,
                description="sleep, hang, cpu: how long (default 1; hang defaults to 3600)."
                + ("" if faults else f" hang and cpu need {FAULTS_SETTING}."),
            ),
            Field(
                name="how",
                kind=Kind.STRING,
                choices=tuple(Crash),
                description="crash: exit (os._exit(13)), segfault (SIGSEGV) or abort (SIGABRT)"
                + where
                + ".",
            ),
            Field(
                name="mb",
                kind=Kind.INTEGER,
                minimum=1,
                maximum=4096,
                description=f"memory: MiB to allocate and touch (default 64){where}.",
            ),
        ),
        cross_checks=(_fields_fit_mode,),
        rules=_mode_rules(modes),
    )


def _busy(seconds: float) -> int:
    deadline = time.monotonic() + seconds
    spins = 0
    while time.monotonic() < deadline:
        spins += 1
    return spins


def _hang(seconds: float) -> None:
    # A blocking sleep in a thread: nothing the event loop does can interrupt it.
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))


def _crash(how: Crash) -> NoReturn:
    match how:
        case Crash.EXIT:
            os._exit(13)
        case Crash.ABORT:
            os.abort()
        case Crash.SEGFAULT:
            import ctypes  # only here: a worker process would load it for nothing

            ctypes.string_at(0)
    raise AssertionError("unreachable")  # pragma: no cover


def _allocate(mb: int) -> int:
    block = bytearray(mb * 1024 * 1024)
    for offset in range(0, len(block), 4096):  # touch every page so it is really resident
        block[offset] = 1
    return len(block)


async def run_dummy(payload: JSONObject, context: JobContext) -> JSONValue:
    mode = Mode(payload["mode"])
    match mode:
        case Mode.SUCCEED:
            return payload.get("result", {"ok": True})
        case Mode.FAIL:
            times = payload.get("times")
            if times is None or context.attempt <= times:
                raise DummyFailureError(f"dummy failure on attempt {context.attempt}")
            return {"ok": True, "attempt": context.attempt}
        case Mode.FATAL:
            raise NonRetryableError("dummy fatal error")
        case Mode.SLEEP:
            await context.sleep(payload.get("seconds", 1.0))
            return {"slept": payload.get("seconds", 1.0)}
        case Mode.HANG:
            await context.run_blocking(_hang, payload.get("seconds", 3600.0))
            return {"hung": payload.get("seconds", 3600.0)}
        case Mode.CPU:
            spins = await context.run_blocking(_busy, payload.get("seconds", 1.0))
            return {"spins": spins}
        case Mode.CRASH:
            _crash(Crash(payload.get("how", Crash.EXIT)))
        case Mode.MEMORY:
            size = await context.run_blocking(_allocate, payload.get("mb", 64))
            return {"allocated": size}


def dummy_job_type(*, faults: bool = False) -> JobType:
    """The `dummy` type; its fault modes only with `faults` (see the module's docstring)."""
    return JobType(
        name="dummy",
        description="Exercise the machinery: succeed, fail, sleep; with "
        f"{FAULTS_SETTING}, also hang, burn CPU, crash, allocate memory.",
        schema=dummy_schema(faults=faults),
        handler=run_dummy,
        queue="default",
        retry=RetryPolicy(max_attempts=3, base=0.5, cap=10.0),
        timeout=60.0,
        timeout_limit=3600.0,
    )
