"""`conveyor schedules` on the memory backend."""

from __future__ import annotations

import json
from typing import Any

import pytest

from entrypoints.cli import main
from entrypoints.container import Container, build_container
from entrypoints.settings import QueueBackend, Settings

EMAIL = json.dumps({"to": "ops@example.com", "subject": "Nightly", "body": "done"})


@pytest.fixture
def conveyor(capsys: pytest.CaptureFixture[str]) -> Any:
    container: Container = build_container(Settings(queue_backend=QueueBackend.MEMORY))

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv), container=container)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_add_list_pause_resume_and_remove(conveyor: Any) -> None:
    code, out, _ = conveyor(
        "schedules", "add", "nightly", "--cron", "0 2 * * *", "--timezone", "Europe/Paris",
        "--type", "email", "--payload", EMAIL, "--misfire", "skip",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out)["misfire"] == "skip"
    code, out, _ = conveyor("schedules", "list")
    assert code == 0
    assert "nightly" in out
    assert "0 2 * * * (Europe/Paris)" in out
    assert json.loads(conveyor("schedules", "pause", "nightly")[1])["paused"] is True
    assert json.loads(conveyor("schedules", "resume", "nightly")[1])["paused"] is False
    assert conveyor("schedules", "remove", "nightly")[0] == 0
    code, _, err = conveyor("schedules", "show", "nightly")
    assert code == 1
    assert "no schedule named 'nightly'" in err


def test_add_names_every_bad_field_and_exits_2(conveyor: Any) -> None:
    code, _, err = conveyor(
        "schedules", "add", "bad", "--cron", "61 * * * *", "--timezone", "Nowhere/X",
        "--type", "email", "--payload", "{}",
    )  # fmt: skip
    assert code == 2
    assert "cron:" in err
    assert "timezone:" in err
    assert "payload.to:" in err
    assert conveyor("schedules", "list")[0] == 0
