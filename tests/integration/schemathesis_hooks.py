"""Schemathesis hooks for `test_schemathesis.py`: the API's rules that a JSON Schema cannot state.

They touch only the cases schemathesis generates as valid ("positive"), and only values whose
validity depends on something outside the request:

- the clock: a job's `run_at` and `deadline` may lie at most a year ahead, and its deadline must
  fall after the job may start. Generated times are moved into that window, keeping their kind
  (RFC 3339 text stays text, seconds stay seconds).
- earlier requests: an idempotency key names one body, so the API refuses (422) a key reused
  for another one. A valid case's key is derived from its body, so two bodies never share one.
- the payload: `unique_for` may name only fields the payload gives (an optional one left out
  has no value to key on), and not go with `unique_key`. Names the payload lacks are dropped,
  and `unique_for` with them when none is left or a `unique_key` is given.
- what a schedule's timetable means: a cron expression and a time zone are strings the
  document cannot tell valid ones of, and exactly one of `cron` and `every` is given. A
  valid case gets a real expression and zone, or keeps its interval.

Loaded by path through SCHEMATHESIS_HOOKS, in schemathesis' own process.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis

from domain.submission import MAX_SCHEDULE_AHEAD

# Well inside the year the API allows, so a slow run cannot push a time out of it.
_HORIZON = MAX_SCHEDULE_AHEAD / 2
_SUBMISSIONS = {"/jobs", "/jobs/batch"}


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return case
    if case.method.upper() == "POST" and case.operation.path == "/schedules":
        if isinstance(case.body, dict):
            _fit_timetable(case.body)
        return case
    if case.method.upper() != "POST" or case.operation.path not in _SUBMISSIONS:
        return case
    body = case.body
    if case.operation.path == "/jobs" and isinstance(body, dict):
        _fit_times(body)
        _fit_unique(body)
        headers = case.headers  # a mapping, not always a dict
        if headers is not None and "Idempotency-Key" in headers:
            headers["Idempotency-Key"] = _key_for(body)
    elif isinstance(body, dict) and isinstance(body.get("jobs"), list):
        for item in body["jobs"]:
            if isinstance(item, dict):
                _fit_times(item)
                _fit_unique(item)
                if isinstance(item.get("idempotency_key"), str):
                    item["idempotency_key"] = _key_for(
                        {k: v for k, v in item.items() if k != "idempotency_key"}
                    )
    return case


def _key_for(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _fit_times(item: dict[str, Any]) -> None:
    """Move `delay`, `run_at` and `deadline` into the window the API accepts now."""
    now = datetime.now(UTC)
    delay = item.get("delay")
    if isinstance(delay, int | float) and not isinstance(delay, bool) and delay > _HORIZON:
        item["delay"] = delay = 60.0
    run_at = item.get("run_at")
    start = now
    if isinstance(run_at, str):
        moment = _parse(run_at)
        if moment is None or moment > now + timedelta(seconds=_HORIZON):
            moment = now + timedelta(minutes=5)
            item["run_at"] = moment.isoformat()
        start = max(now, moment)
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        start = now + timedelta(seconds=delay)
    deadline = item.get("deadline")
    lead = (start - now).total_seconds()
    if isinstance(deadline, str):
        moment = _parse(deadline)
        if moment is None or not start + timedelta(minutes=1) < moment < now + timedelta(
            seconds=_HORIZON
        ):
            item["deadline"] = (start + timedelta(hours=1)).isoformat()
    elif (
        isinstance(deadline, int | float)
        and not isinstance(deadline, bool)
        and not lead + 60 < deadline < _HORIZON
    ):
        item["deadline"] = lead + 3600


def _fit_unique(item: dict[str, Any]) -> None:
    """Keep `unique_for` to the fields the payload gives, alone of the unique options."""
    names = item.get("unique_for")
    if not isinstance(names, list):
        return
    payload = item.get("payload")
    given = [n for n in names if isinstance(payload, dict) and payload.get(n) is not None]
    if not given or item.get("unique_key") is not None:
        del item["unique_for"]
    else:
        item["unique_for"] = given


def _parse(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        return None
    return moment if moment.utcoffset() is not None else None


def _fit_timetable(body: dict[str, Any]) -> None:
    """A real cron expression and time zone, or an interval alone."""
    every = body.get("every")
    if isinstance(every, int | float) and not isinstance(every, bool):
        body.pop("cron", None)
        body.pop("timezone", None)
        return
    body.pop("every", None)
    body["cron"] = "*/5 * * * *"
    if body.get("timezone") is not None:
        body["timezone"] = "Europe/Paris"
