"""Fixtures of the unit tests that drive the API: a memory-backed container, its backend, and
a test client over an app built on it. A module that needs other settings defines its own
`container`; `backend` and `client` then follow it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from domain.ports import Backend
from entrypoints.api.app import create_app
from entrypoints.container import Container, build_container
from entrypoints.settings import QueueBackend, Settings


@pytest.fixture
def container() -> Container:
    return build_container(Settings(queue_backend=QueueBackend.MEMORY))


@pytest.fixture
def backend(container: Container) -> Backend:
    memory: Backend = container.backend()
    return memory


@pytest.fixture
def client(container: Container) -> Iterator[TestClient[Litestar]]:
    with TestClient(create_app(container)) as test_client:
        yield test_client
