"""`conveyor dev --topology`: what it refuses before it starts anything."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from entrypoints.cli import main as cli_main


@pytest.fixture
def process_logging() -> Iterator[None]:
    """`main` configures the root logger as a process would; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("process_logging")
@pytest.mark.parametrize("topology", ["sentinel", "cluster"])
def test_dev_refuses_a_local_topology_when_redis_url_is_set(
    topology: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")

    assert cli_main(["dev", "--topology", topology]) == 2

    assert f"--topology {topology} starts a local Redis" in capsys.readouterr().err


def test_dev_refuses_an_unknown_topology(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main(["dev", "--topology", "ring"])

    assert exited.value.code == 2
    assert "invalid choice: 'ring'" in capsys.readouterr().err
