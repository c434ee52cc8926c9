"""The Litestar application factory: `uvicorn --factory entrypoints.api.app:create_app`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Tag

from entrypoints.api.controllers import HealthController, JobsController, JobTypesController
from entrypoints.api.deps import CONTAINER_KEY, container_of, dependencies
from entrypoints.api.openapi import add_submission_schemas
from entrypoints.api.problems import problem_response
from entrypoints.container import Container, build_container
from entrypoints.logs import configure_logging
from entrypoints.settings import Settings
from entrypoints.startup import backend_is_safe

API_VERSION = "0.1.0"
log = logging.getLogger("conveyor.api")


def create_app(container: Container | None = None) -> Litestar:
    """The API over `container` (default: one built from the environment).

    Building the app connects to nothing: the queue's client connects on first use, and the
    lifespan closes it on shutdown. Without a container (how uvicorn's factory calls it), the
    settings and logging come from the environment.
    """
    if container is None:
        settings = Settings.from_env()
        configure_logging(settings.log_level, settings.log_format)
        # The API waits for Redis no longer than the configured timeout, so a dead Redis
        # answers 503 quickly instead of holding the client.
        container = build_container(settings, redis_socket_timeout=settings.redis_timeout)
    settings = container.settings()
    app = Litestar(
        route_handlers=[JobsController, JobTypesController, HealthController],
        dependencies=dependencies(),
        state=State({CONTAINER_KEY: container}),
        exception_handlers={Exception: problem_response},
        request_max_body_size=settings.max_body_bytes,
        lifespan=[_queue_lifespan],
        # Logging is the process's (structured, see entrypoints.logs), not Litestar's.
        logging_config=None,
        openapi_config=OpenAPIConfig(
            title="Conveyor",
            version=API_VERSION,
            description="Submit background jobs; workers run them. Errors are RFC 9457 "
            "`application/problem+json`.",
            tags=[
                Tag(name="jobs", description="Submit jobs and follow them."),
                Tag(name="job-types", description="What can be submitted."),
                Tag(name="health", description="Liveness and readiness probes."),
            ],
            path="/schema",
        ),
    )
    # Builds the document now (no I/O), with the job types' schemas in it.
    add_submission_schemas(app.openapi_schema, container.registry())
    return app


@asynccontextmanager
async def _queue_lifespan(app: Litestar) -> AsyncIterator[None]:
    # Resolving the queue at start-up surfaces a bad setting (no REDIS_URL) before the
    # first request; it does not connect.
    queue = container_of(app.state).job_queue()
    if not await backend_is_safe(queue, log):
        raise RuntimeError("refusing to start on a backend that could lose jobs (see above)")
    try:
        yield
    finally:
        await queue.close()
