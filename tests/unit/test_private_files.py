"""Files a worker writes that hold lease tokens or job ids are its owner's alone."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoints.worker.audit import AuditLog
from entrypoints.worker.board import Board


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The loosest umask: whatever stays private is private by the code's own doing."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
def test_the_audit_log_is_created_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"

    AuditLog(str(path), "host:1/0.1").close()

    assert mode(path) == 0o600


@pytest.mark.usefixtures("open_umask")
def test_an_audit_log_readable_by_others_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"event": "start"}\n')
    path.chmod(0o644)

    AuditLog(str(path), "host:1/0.1").close()

    assert mode(path) == 0o600
    assert path.read_text() == '{"event": "start"}\n'  # appended to, never truncated


@pytest.mark.usefixtures("open_umask")
def test_a_worker_board_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "w.board"

    Board(path, threads=2).mark_loop("0" * 32)

    assert mode(path) == 0o600
