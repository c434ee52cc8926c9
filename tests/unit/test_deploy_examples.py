"""The examples in `deploy/` (scrape config, alert rules, Grafana dashboard) are valid and use
only metrics Conveyor exposes.

`promtool` checks the config and rules and runs the rules' unit tests when it is on PATH
(Debian's `prometheus` package has it); the checks below run in any case: the rules parsed
and held to Prometheus's rule-file shape, the dashboard held to a JSON Schema of the parts
Grafana reads, and every metric named in either one Conveyor serves.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client import Metric

from domain.jobs import JobStatus
from domain.ports import QueueStats
from entrypoints.api.metrics import ApiMetrics, QueueFigures
from entrypoints.worker.metrics import WorkerMetrics

DEPLOY = Path(__file__).parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "conveyor-dashboard.json"
DASHBOARD_SCHEMA = Path(__file__).with_name("grafana_dashboard.schema.json")
# Series names in PromQL: a metric is an identifier not followed by `(` (a function) and not
# a label name (followed by `=`, `!=`, `=~`, or inside `by (...)`).
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def exposed() -> set[str]:
    """Every sample name the API and a worker can serve."""
    families: list[Metric] = [*ApiMetrics().registry.collect()]
    stats = QueueStats(
        name="q", counts=dict.fromkeys(JobStatus, 1), oldest_queued_age=1.0, paused=False, workers=1
    )
    families += QueueFigures([stats]).collect()
    worker = WorkerMetrics()
    names = {family.name for family in families}
    names |= {m._name for m in vars(worker).values() if hasattr(m, "_name")}
    names.add("conveyor_jobs_in_flight")
    return {name + suffix for name in names for suffix in ("", *_SUFFIXES)}


def metrics_in(expr: str) -> set[str]:
    """The metric names an expression reads (`conveyor_*`, and Prometheus's own `up`)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_strings)
    names = set()
    for match in _NAME.finditer(without_groupings):
        rest = without_groupings[match.end() :].lstrip()
        if rest.startswith("(") or re.match(r"(=~|!=|!~|=)", rest):
            continue
        names.add(match.group())
    return {n for n in names if n.startswith("conveyor_") or n == "up"}


def rules() -> Iterator[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        yield from group["rules"]


def dashboard_exprs(document: dict[str, Any]) -> Iterator[str]:
    for panel in document["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]


def test_the_alert_rules_cover_what_operators_must_hear_of() -> None:
    names = {rule["alert"] for rule in rules()}

    assert {
        "ConveyorQueueWaitTooLong",
        "ConveyorDeadLetterGrowing",
        "ConveyorNoLiveWorkers",
        "ConveyorRedisDown",
    } <= names


def test_the_alert_rules_load_and_their_unit_tests_pass() -> None:
    promtool = shutil.which("promtool")
    if promtool is not None:
        for args in (["check", "config", str(CONFIG)], ["test", "rules", str(RULE_TESTS)]):
            done = subprocess.run([promtool, *args], capture_output=True, text=True, check=False)
            assert done.returncode == 0, done.stdout + done.stderr
    # Prometheus's rule-file shape, checked with or without promtool.
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"[A-Z][A-Za-z]+", rule["alert"])
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


def test_the_rules_and_the_dashboard_read_only_metrics_conveyor_serves() -> None:
    known = exposed() | {"up"}
    document = json.loads(DASHBOARD.read_text())
    exprs = [rule["expr"] for rule in rules()] + list(dashboard_exprs(document))
    read = set().union(*(metrics_in(expr) for expr in exprs))

    assert read - known == set()
    # And the dashboard shows every family a worker or the API serves.
    families = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in read}
    assert {"conveyor_jobs", "conveyor_job_run_seconds", "conveyor_queue_jobs"} <= families


def test_the_dashboard_is_valid_against_the_schema_of_what_grafana_reads() -> None:
    document = json.loads(DASHBOARD.read_text())
    schema = json.loads(DASHBOARD_SCHEMA.read_text())

    jsonschema_rs.validate(schema, document)
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))


def test_the_schema_refuses_a_panel_without_a_query_expression() -> None:
    document = json.loads(DASHBOARD.read_text())
    schema = json.loads(DASHBOARD_SCHEMA.read_text())
    broken = next(p for p in document["panels"] if p["type"] == "timeseries")
    del broken["targets"][0]["expr"]

    with pytest.raises(jsonschema_rs.ValidationError):
        jsonschema_rs.validate(schema, document)


def test_the_scrape_config_loads_the_rules_and_scrapes_the_api_and_workers() -> None:
    config = yaml.safe_load(CONFIG.read_text())

    assert config["rule_files"] == [RULES.name]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"conveyor-api", "conveyor-worker"}
    assert all(job["metrics_path"] == "/metrics" for job in jobs.values())


def test_a_metric_nobody_serves_is_caught_and_label_names_are_not_taken_for_metrics() -> None:
    expr = 'sum by (queue) (rate(conveyor_jobz_total{queue="a", outcome!="dead"}[5m])) > 0'

    assert metrics_in(expr) == {"conveyor_jobz_total"}
    assert metrics_in(expr) - exposed() == {"conveyor_jobz_total"}
