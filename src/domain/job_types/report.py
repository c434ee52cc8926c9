"""`report`: a simulated long-running task that reports progress as it goes."""

from __future__ import annotations

import hashlib
import math
import time

from domain.errors import JobCancelledError
from domain.job_types import JobContext, JobType
from domain.jobs import JSONObject, JSONValue
from domain.retry import RetryPolicy
from domain.schema import Field, Kind, PayloadSchema

MAX_SECONDS = 3600.0
_STEP_SECONDS = 0.1
_MAX_STEPS = 100

SCHEMA = PayloadSchema(
    (
        Field(
            name="name",
            kind=Kind.STRING,
            required=True,
            min_length=1,
            max_length=200,
            description="Report name.",
        ),
        Field(
            name="rows",
            kind=Kind.INTEGER,
            required=True,
            minimum=0,
            maximum=10_000_000,
            description="Number of rows the simulated report covers.",
        ),
        Field(
            name="seconds",
            kind=Kind.NUMBER,
            default=2.0,
            minimum=0,
            maximum=MAX_SECONDS,
            description="Simulated duration in seconds.",
        ),
    )
)


def _checksum(name: str, rows: int) -> str:
    return hashlib.sha256(f"{name}\x00{rows}".encode()).hexdigest()[:16]


async def build_report(payload: JSONObject, context: JobContext) -> JSONValue:
    started = time.monotonic()
    seconds = float(payload["seconds"])
    steps = max(1, min(_MAX_STEPS, math.ceil(seconds / _STEP_SECONDS)))
    context.report_progress(0)
    for step in range(1, steps + 1):
        if context.cancel_requested:
            raise JobCancelledError(f"cancelled at step {step - 1} of {steps}")
        await context.sleep(seconds / steps)
        context.report_progress(step * 100 // steps)
    return {
        "name": payload["name"],
        "rows": payload["rows"],
        "checksum": _checksum(payload["name"], payload["rows"]),
        "elapsed": round(time.monotonic() - started, 3),
    }


def report_job_type() -> JobType:
    return JobType(
        name="report",
        description="Build a report (simulated: waits `seconds`, reporting progress 0-100).",
        schema=SCHEMA,
        handler=build_report,
        queue="default",
        retry=RetryPolicy(max_attempts=3, base=2.0, cap=120.0),
        timeout=MAX_SECONDS + 60.0,
        timeout_limit=2 * MAX_SECONDS,
    )
