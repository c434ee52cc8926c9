"""Tracing and logs as an operator runs them: real `conveyor api` and `conveyor worker`
processes configured only by environment variables (CONVEYOR_TRACING=1 and the standard
OTEL_* ones) export their spans over OTLP/HTTP to a collector this test runs, and write one
JSON log format, uvicorn's start-up and access lines included."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.integration.processes import Api, Conveyor, service_env, wait_for_job

CLIENT_TRACE = "5b8efff798038103d269b633813fc60c"
CLIENT_SPAN = "eee19b7ec3c1b174"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


class Collector:
    """An OTLP/HTTP trace receiver: keeps every span it is sent, with its service's name."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        collector = self

        class Receive(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    resource = {
                        a.key: a.value.string_value for a in resource_spans.resource.attributes
                    }
                    for scope in resource_spans.scope_spans:
                        for span in scope.spans:
                            collector.add(resource, span)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Receive)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def add(self, resource: dict[str, str], span: Any) -> None:
        attributes = {a.key: _value(a.value) for a in span.attributes}
        with self._lock:
            self.spans.append(
                {
                    "service": resource.get("service.name"),
                    "name": span.name,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "attributes": attributes,
                }
            )

    def of_trace(self, trace_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def __enter__(self) -> Collector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector() as running:
        yield running


def json_lines(output: str) -> list[dict[str, Any]]:
    """The process's log lines; each must be JSON (spans go to the collector, not here)."""
    lines = [line for line in output.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def test_real_processes_export_one_trace_over_otlp_and_log_in_one_json_format(
    redis_url: str, collector: Collector, tmp_path: Path
) -> None:
    env = service_env(
        redis_url,
        CONVEYOR_TRACING="1",
        CONVEYOR_ACCESS_LOG="1",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    began = time.monotonic()
    with (
        Api(env, tmp_path) as api,
        Conveyor(["worker", "--processes", "1", "--concurrency", "4"], env, tmp_path) as worker,
        api.client() as client,
    ):
        answer = client.post(
            "/jobs",
            json={"type": "dummy", "payload": {"mode": "fail", "times": 1}},
            headers={"traceparent": TRACEPARENT},
        )
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        view = wait_for_job(client, job_id, {"succeeded", "dead"})
        assert (view["status"], view["attempts"]) == ("succeeded", 2)
        deadline = time.monotonic() + 15
        while len(collector.of_trace(CLIENT_TRACE)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        took = time.monotonic() - began
        assert worker.stop() == 0
        assert api.stop() == 0

    spans = collector.of_trace(CLIENT_TRACE)
    (post,) = [s for s in spans if s["name"] == "POST /jobs"]
    attempts = sorted(
        (s for s in spans if s["name"] == "process default"),
        key=lambda s: s["attributes"]["conveyor.job.attempt"],
    )
    assert post["parent_span_id"] == CLIENT_SPAN
    assert [s["parent_span_id"] for s in attempts] == [post["span_id"]] * 2
    assert [s["attributes"]["conveyor.job.outcome"] for s in attempts] == ["failed", "succeeded"]
    assert {s["service"] for s in spans} == {"conveyor"}

    api_lines = json_lines(api.output())
    events = [(line["logger"], line["event"]) for line in api_lines]
    assert any(lg == "uvicorn.error" and e.startswith("Uvicorn running on") for lg, e in events)
    (access,) = [
        line
        for line in api_lines
        if line["logger"] == "uvicorn.access" and line.get("path") == "/jobs"
    ]
    assert (access["method"], access["status"]) == ("POST", 202)
    job_lines = [line for line in json_lines(worker.output()) if line.get("job_id") == job_id]
    assert [line["event"] for line in job_lines] == [
        "job claimed",
        "job failed, will retry",
        "job claimed",
        "job succeeded",
    ]
    for line in job_lines:
        assert (line["type"], line["queue"], line["trace_id"]) == ("dummy", "default", CLIENT_TRACE)
    assert [line["attempt"] for line in job_lines] == [1, 1, 2, 2]

    print(
        f"\nOTLP collector got {len(spans)} spans of trace {CLIENT_TRACE} from 2 processes;"
        f" {len(api_lines)} API log lines, all JSON (access: {access['event']!r});"
        f" {len(job_lines)} worker lines with trace_id; {took:.1f} s"
    )
