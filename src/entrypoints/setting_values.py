"""Parsers of the settings whose values have a structure of their own: weighted queue lists,
queue limits, origins and declared schedules. Each raises ValueError with a message that
`Settings.from_env` prefixes with the variable's name."""

from __future__ import annotations

import json
from typing import Any, Final
from urllib.parse import urlsplit

from domain.jobs import is_name
from domain.ports import QueueLimits
from domain.schedules import ScheduleRequest


def parse_weighted_queues(raw: str) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
    """`a,b` (strict order: a first) or `a:3,b:1` (random order by weight, per claim)."""
    names: list[str] = []
    weights: list[int] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, _, weight = item.partition(":")
        name = name.strip()
        if not is_name(name):
            raise ValueError(f"{name!r} is not a queue name (1-64 of a-z, 0-9, '_', '-')")
        if name in names:
            raise ValueError(f"queue {name!r} named twice")
        names.append(name)
        if weight.strip():
            value = int(weight)
            if not 1 <= value <= 1000:
                raise ValueError(f"weight of {name!r} must be 1-1000")
            weights.append(value)
    if not names:
        raise ValueError("name at least one queue")
    if weights and len(weights) != len(names):
        raise ValueError("give every queue a weight (a:3,b:1), or none for strict order")
    return tuple(names), tuple(weights) if weights else None


def parse_queue_limits(raw: str) -> dict[str, QueueLimits]:
    """JSON: queue name (or `*` for every other queue) -> {"max_depth": n, "max_age": s}."""
    document: Any = json.loads(raw)
    if not isinstance(document, dict):
        raise ValueError('expected an object like {"*": {"max_depth": 10000}}')
    limits: dict[str, QueueLimits] = {}
    for queue, spec in document.items():
        if queue != "*" and not is_name(queue):
            raise ValueError(f"{queue!r} is not a queue name")
        if not isinstance(spec, dict) or not set(spec) <= {"max_depth", "max_age"}:
            raise ValueError(f"{queue}: expected an object with max_depth and/or max_age")
        depth, age = spec.get("max_depth"), spec.get("max_age")
        if depth is not None and (
            isinstance(depth, bool) or not isinstance(depth, int) or depth < 0
        ):
            raise ValueError(f"{queue}.max_depth: expected an integer >= 0")
        if age is not None and (
            isinstance(age, bool) or not isinstance(age, int | float) or age <= 0
        ):
            raise ValueError(f"{queue}.max_age: expected seconds > 0")
        limits[queue] = QueueLimits(max_depth=depth, max_age=None if age is None else float(age))
    return limits


_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def parse_origin(text: str) -> str:
    """A web origin as browsers send it in `Origin`: `scheme://host[:port]`, lowercase, the
    scheme's default port left out. Raises ValueError for anything else."""
    parts = urlsplit(text.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{text!r} is not an origin like https://app.example.com[:port]")
    if parts.username is not None or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{text!r} is not an origin: no path, query or credentials")
    port = parts.port  # raises ValueError when it is not a port number
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    shown_port = "" if port is None or port == _DEFAULT_PORTS[scheme] else f":{port}"
    return f"{scheme}://{host}{shown_port}"


def parse_origins(raw: str) -> frozenset[str]:
    """`https://a.example.com, http://localhost:3000`: the origins allowed to change state."""
    origins = [item.strip() for item in raw.split(",") if item.strip()]
    for origin in origins:
        if origin in ("*", "null"):
            raise ValueError(f"{origin!r} would let any page change state: list origins")
    return frozenset(parse_origin(origin) for origin in origins)


SCHEDULE_FIELDS: Final = (
    "name",
    "cron",
    "timezone",
    "every",
    "type",
    "payload",
    "options",
    "misfire",
    "misfire_grace",
    "paused",
)


def parse_schedules(raw: str) -> tuple[ScheduleRequest, ...]:
    """JSON: a list of schedules, `[{"name": ..., "cron": "0 2 * * *", "timezone": ...,
    "type": ..., "payload": {...}}]` (or `"every": seconds` instead of cron). Only their shape
    is checked here; what they declare is checked against the job types at start-up."""
    document: Any = json.loads(raw)
    if not isinstance(document, list):
        raise ValueError('expected a list like [{"name": "nightly", "cron": "0 2 * * *", ...}]')
    requests: list[ScheduleRequest] = []
    names: set[str] = set()
    for index, item in enumerate(document):
        if not isinstance(item, dict):
            raise ValueError(f"[{index}]: expected an object")
        unknown = sorted(set(item) - set(SCHEDULE_FIELDS))
        if unknown:
            raise ValueError(f"[{index}].{unknown[0]}: unknown field")
        for required in ("name", "type", "payload"):
            if required not in item:
                raise ValueError(f"[{index}].{required}: field required")
        name = item["name"]
        if not isinstance(name, str) or not is_name(name):
            raise ValueError(f"[{index}].name: expected a name of 1-64 a-z, 0-9, '_' or '-'")
        if name in names:
            raise ValueError(f"[{index}].name: schedule {name!r} declared twice")
        names.add(name)
        requests.append(ScheduleRequest(**item))
    return tuple(requests)
