"""Litestar dependencies, bridged from the dependency-injector container in `app.state`.

Each provider is a typed function (Litestar reads its signature) that asks the container at
request time, so a test's `container.<provider>.override(...)` takes effect, and nothing the
client sends can stand in for a dependency. A handler asks for the role it uses: the job
service for the use cases, the backend's connection for readiness.
"""

from __future__ import annotations

from typing import Any, Final, cast

from litestar import Request
from litestar.datastructures import State
from litestar.di import Provide

from domain.job_service import JobService
from domain.job_types import JobTypeRegistry
from domain.ports import Backend, Connection
from domain.scheduling import ScheduleService
from entrypoints.container import Container
from entrypoints.settings import Settings
from entrypoints.tracing import Tracing

CONTAINER_KEY: Final = "container"


def container_of(state: State) -> Container:
    # Instantiating a DeclarativeContainer yields a DynamicContainer, so no isinstance check.
    return cast(Container, state[CONTAINER_KEY])


def backend_of(state: State) -> Backend:
    backend: Backend = container_of(state).backend()
    return backend


def provide_job_service(state: State) -> JobService:
    service: JobService = container_of(state).job_service()
    return service


def provide_schedules(state: State) -> ScheduleService:
    service: ScheduleService = container_of(state).schedule_service()
    return service


def provide_connection(state: State) -> Connection:
    return backend_of(state).connection


def provide_registry(state: State) -> JobTypeRegistry:
    registry: JobTypeRegistry = container_of(state).registry()
    return registry


def provide_settings(state: State) -> Settings:
    settings: Settings = container_of(state).settings()
    return settings


def tracebacks_shown(request: Request[Any, Any, Any]) -> bool:
    """Whether answers show a failed attempt's traceback (`CONVEYOR_EXPOSE_TRACEBACKS`).

    Read off the request rather than injected: Litestar resolves and checks each injected
    dependency on every request, which costs a submission a fifth of its time.
    """
    return bool(container_of(request.app.state).settings().expose_tracebacks)


def job_service_of(request: Request[Any, Any, Any]) -> JobService:
    """The job service, read off the request as `tracebacks_shown` is, by `POST /jobs`:
    resolving an injected dependency cost a submission 4 % of its instructions."""
    service: JobService = container_of(request.app.state).job_service()
    return service


def tracing_of(request: Request[Any, Any, Any]) -> Tracing:
    """The process's tracing (`CONVEYOR_TRACING`), read off the request as `tracebacks_shown`
    is, so that with tracing off a submission pays nothing for it."""
    tracing: Tracing = container_of(request.app.state).tracing()
    return tracing


def dependencies() -> dict[str, Provide]:
    return {
        "settings": Provide(provide_settings, sync_to_thread=False),
        "jobs": Provide(provide_job_service, sync_to_thread=False),
        "schedules": Provide(provide_schedules, sync_to_thread=False),
        "connection": Provide(provide_connection, sync_to_thread=False),
        "job_types": Provide(provide_registry, sync_to_thread=False),
    }
