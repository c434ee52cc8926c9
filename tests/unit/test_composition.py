"""The composition root: what the container builds for each backend, and what the native
worker accepts to run on."""

from __future__ import annotations

import logging

import attrs
import pytest
from dependency_injector import providers

from domain.errors import UnsupportedOperationError
from domain.job_service import JobService
from domain.ports import Backend
from domain.processing import JobProcessor
from entrypoints.container import Container, build_container, lease_queue
from entrypoints.settings import QueueBackend, Settings
from entrypoints.worker.main import native_roles, run_worker
from entrypoints.worker.supervisor import EXIT_CONFIG


@pytest.fixture
def container() -> Container:
    return build_container(Settings(queue_backend=QueueBackend.MEMORY))


def over(container: Container, backend: Backend) -> Container:
    container.backend.override(providers.Object(backend))
    return container


def test_the_container_builds_one_backend_and_the_use_cases_on_its_roles(
    container: Container,
) -> None:
    backend = container.backend()

    assert backend is container.backend()  # one per process
    assert backend.name == "memory"
    assert isinstance(container.job_service(), JobService)
    assert isinstance(container.job_processor(), JobProcessor)
    assert lease_queue(backend) is backend.leases


def test_a_backend_without_leases_has_no_processor_and_says_which_role_it_lacks(
    container: Container,
) -> None:
    over(container, attrs.evolve(container.backend(), leases=None))

    with pytest.raises(UnsupportedOperationError) as refused:
        container.job_processor()

    assert refused.value.capability == "worker_claims"
    assert isinstance(container.job_service(), JobService)  # the API side is unaffected


def test_the_native_worker_runs_on_a_shared_backend_with_leases(container: Container) -> None:
    backend = attrs.evolve(container.backend(), shared_across_processes=True)

    roles = native_roles(over(container, backend))

    assert roles is not None
    assert (roles.leases, roles.monitor, roles.connection) == (
        backend.leases,
        backend.monitor,
        backend.connection,
    )


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, "QUEUE_BACKEND=memory lives inside one process and cannot feed a separate worker"),
        (
            {"shared_across_processes": True, "leases": None},
            "QUEUE_BACKEND=memory hands out no leases, so the native worker cannot claim",
        ),
    ],
)
def test_the_native_worker_refuses_a_backend_it_cannot_run_on_saying_why(
    container: Container,
    caplog: pytest.LogCaptureFixture,
    changes: dict[str, object],
    reason: str,
) -> None:
    backend = attrs.evolve(container.backend(), **changes)

    with caplog.at_level(logging.ERROR, logger="conveyor.worker"):
        assert native_roles(over(container, backend)) is None

    assert reason in caplog.text


def test_conveyor_worker_on_the_memory_backend_exits_with_the_configuration_code(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(queue_backend=QueueBackend.MEMORY)

    with caplog.at_level(logging.ERROR, logger="conveyor.worker"):
        code = run_worker(settings, processes=1, concurrency=1, queues=("default",))

    assert code == EXIT_CONFIG
    assert "use QUEUE_BACKEND=redis" in caplog.text
