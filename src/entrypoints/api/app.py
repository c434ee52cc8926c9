"""The Litestar application factory: `uvicorn --factory entrypoints.api.app:create_app`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, cast

from litestar import Litestar, Router
from litestar.datastructures import MutableScopeHeaders, State
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Tag
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from entrypoints.api.batch import BATCH_BODY_FACTOR, BatchController
from entrypoints.api.controllers import HealthController, JobsController, JobTypesController
from entrypoints.api.deps import CONTAINER_KEY, backend_of, container_of, dependencies
from entrypoints.api.guards import refuse_foreign_origin
from entrypoints.api.metrics import METRICS_KEY, STARTED, ApiMetrics, serve_metrics
from entrypoints.api.openapi import add_submission_schemas
from entrypoints.api.problems import problem_response
from entrypoints.api.queues import QueuesController
from entrypoints.api.schedules import SchedulesController, add_schedule_schemas
from entrypoints.collector import settle_collector
from entrypoints.container import Container, build_container
from entrypoints.logs import configure_logging
from entrypoints.redaction import url_secrets
from entrypoints.scheduling import (
    check_schedules,
    close_schedules,
    schedule,
)
from entrypoints.settings import Settings
from entrypoints.startup import backend_is_safe

API_VERSION = "0.2.0"
log = logging.getLogger("conveyor.api")


def create_app(container: Container | None = None) -> Litestar:
    """The API over `container` (default: one built from the environment).

    Building the app connects to nothing: the backend's client connects on first use, and the
    lifespan closes it on shutdown. Without a container (how uvicorn's factory calls it), the
    settings and logging come from the environment.
    """
    if container is None:
        settings = Settings.from_env()
        configure_logging(settings.log_level, settings.log_format, url_secrets(settings.redis_url))
        # The API waits for Redis no longer than the configured timeout, so a dead Redis
        # answers 503 quickly instead of holding the client.
        container = build_container(settings, redis_socket_timeout=settings.redis_timeout)
    settings = container.settings()
    check_schedules(container)  # a bad CONVEYOR_SCHEDULES stops start-up (SettingsError)
    container.tracing()  # built now, not by the first submission
    metrics = ApiMetrics() if settings.api_metrics else None
    batch = Router(
        path="/",
        route_handlers=[BatchController],
        request_max_body_size=settings.max_body_bytes * BATCH_BODY_FACTOR,
    )
    app = Litestar(
        route_handlers=[
            JobsController,
            batch,
            QueuesController,
            SchedulesController,
            JobTypesController,
            HealthController,
            *([serve_metrics] if metrics is not None else []),
        ],
        dependencies=dependencies(),
        state=State({CONTAINER_KEY: container, **({METRICS_KEY: metrics} if metrics else {})}),
        exception_handlers={Exception: problem_response},
        middleware=[_front_door(settings.allowed_origins, metered=metrics is not None)],
        before_send=[_before_send(metrics)],
        request_max_body_size=settings.max_body_bytes,
        lifespan=[_backend_lifespan, _scheduler_lifespan],
        # Logging is the process's (structured, see entrypoints.logs), not Litestar's.
        logging_config=None,
        openapi_config=OpenAPIConfig(
            title="Conveyor",
            version=API_VERSION,
            description="Submit background jobs; workers run them. Errors are RFC 9457 "
            "`application/problem+json`.",
            tags=[
                Tag(name="jobs", description="Submit jobs, follow, cancel and retry them."),
                Tag(name="queues", description="Queue figures; pause and resume."),
                Tag(
                    name="schedules",
                    description="Jobs submitted on a timetable (cron or a fixed interval).",
                ),
                Tag(name="job-types", description="What can be submitted."),
                Tag(name="health", description="Liveness and readiness probes."),
            ],
            path="/schema",
        ),
    )
    # Builds the document now (no I/O), with the job types' schemas in it.
    add_submission_schemas(app.openapi_schema, container.registry())
    add_schedule_schemas(app.openapi_schema, container.registry())
    return app


def _front_door(allowed_origins: frozenset[str], *, metered: bool) -> Callable[[ASGIApp], ASGIApp]:
    """The app's one middleware, before any handler runs: notes when the request arrived
    (the latency histogram, when `metered`), then refuses it if a page elsewhere made a
    browser send it (`guards`). One layer for both: each layer costs every request a
    coroutine."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            cast(dict[str, Any], scope)[STARTED] = time.perf_counter()
            refuse_foreign_origin(scope, allowed_origins)
            await app(scope, receive, send)

        async def unmetered(scope: Scope, receive: Receive, send: Send) -> None:
            refuse_foreign_origin(scope, allowed_origins)
            await app(scope, receive, send)

        return middleware if metered else unmetered

    return wrap


def _before_send(
    metrics: ApiMetrics | None,
) -> Callable[[Message, Scope], Coroutine[Any, Any, None]]:
    """The app's one `before_send` hook, which sees every answer, routed or not (a 404 never
    reaches a middleware): an OPTIONS answer completed and, with `metrics`, every answer
    counted. One hook for both, as with the middleware."""
    if metrics is None:

        async def unmetered(message: Message, scope: Scope) -> None:
            _allow_every_method(message, scope)

        return unmetered
    answered = metrics.answered

    async def metered(message: Message, scope: Scope) -> None:
        if message["type"] == "http.response.start" and scope["type"] == ScopeType.HTTP:
            answered(scope, message["status"])
        _allow_every_method(message, scope)

    return metered


def _allow_every_method(message: Message, scope: Scope) -> None:
    """Make the automatic answer to OPTIONS list every method of its path.

    Litestar 2 lists only some of them when several handlers share a path
    (litestar-org/litestar#4169), e.g. `GET, OPTIONS` for `/jobs`, which also takes POST.
    """
    if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
        return
    app = scope["app"]
    handler = scope.get("route_handler")
    if not isinstance(app, Litestar) or handler is None:
        return
    methods = {m for path in handler.paths for m in app.route_handler_method_map.get(path, {})}
    if methods:
        MutableScopeHeaders.from_message(message)["Allow"] = ", ".join(sorted(methods))


@asynccontextmanager
async def _backend_lifespan(app: Litestar) -> AsyncIterator[None]:
    # Resolving the backend at start-up surfaces a bad setting (no REDIS_URL) before the
    # first request; it does not connect.
    connection = backend_of(app.state).connection
    if not await backend_is_safe(connection, log):
        raise RuntimeError("refusing to start on a backend that could lose jobs (see above)")
    try:
        yield
    finally:
        await connection.close()


@asynccontextmanager
async def _scheduler_lifespan(app: Litestar) -> AsyncIterator[None]:
    # Every API process runs the scheduler (unless CONVEYOR_SCHEDULER=0): the store gives
    # each tick to one process, so more processes only make schedules harder to stop.
    container = container_of(app.state)
    if not container.settings().scheduler:
        yield
        return
    stop = asyncio.Event()
    task = asyncio.create_task(schedule(container, stop))
    try:
        yield
    finally:
        stop.set()
        await task
        await close_schedules(container)


def create_served_app() -> Litestar:
    """The app `conveyor api` serves: `create_app`, then the garbage collector is told to
    leave alone what start-up built (`settle_collector`). Tests and embedders that call
    `create_app` keep their collector as it was."""
    app = create_app()
    settle_collector()
    return app
