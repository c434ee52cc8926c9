"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# The contract suites are plain modules shared by several test files: let pytest explain
# their failed asserts as it does in test modules.
pytest.register_assert_rewrite("tests.contracts", "tests.unit.backends")

_INTEGRATION_DIR = Path(__file__).parent / "integration"

# The suite drives `dummy`'s fault modes (crash, memory, hang, cpu): on for every settings
# read from the environment here and every process the tests start (they inherit it). A
# test of the refusal sets it to 0 for the deployment it starts.
os.environ["CONVEYOR_DUMMY_FAULTS"] = "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration/ as ``integration``."""
    for item in items:
        if item.path.is_relative_to(_INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis: ``REDIS_URL`` if set, else a local server for this session.

    Fails (never skips) when no server can be started.
    """
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    # Imported lazily: collecting tests must not depend on (or start) anything.
    from entrypoints.local_redis import LocalRedis

    with LocalRedis(data_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server.url
