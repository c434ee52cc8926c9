"""The composition root: what depends on what, built once per process.

`backend` is the one switch: QUEUE_BACKEND picks which technology plays the roles (a
`domain.ports.Backend`), and everything else is built on whatever roles it plays. Nothing
here asks what a backend can do: a role it lacks is None, and what needs it says so.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import redis
import redis.asyncio

from adapters.console_email import ConsoleEmailSender
from adapters.redis_client import create_redis
from adapters.system_clock import SystemClock
from domain.errors import UnsupportedOperationError
from domain.job_service import JobService
from domain.job_types.registry import default_registry
from domain.limits import FlowLimits
from domain.ports import ROLE_NAMES, AdmissionPolicy, Backend, Clock, LeaseQueue
from domain.processing import JobProcessor
from domain.waiting import Waiters
from entrypoints.injection import containers, providers
from entrypoints.rq_keys import use_rq_key_prefix
from entrypoints.settings import QueueBackend, Settings
from entrypoints.tracing import tracing_from

if TYPE_CHECKING:
    from domain.job_types import JobTypeRegistry
    from domain.ports.schedules import ScheduleStore
    from domain.schedules import CronParser
    from domain.scheduling import Scheduler, ScheduleService


def _redis_url(settings: Settings) -> str:
    return settings.require_redis_url()


def _admission(settings: Settings) -> AdmissionPolicy | None:
    return settings.admission if settings.admission.enabled else None


# The backends are imported when chosen: a process on one backend never loads the others'
# packages (RQ's are the heavier), and a worker child, forked from a process that has loaded
# what it needs, starts sooner for each module left out (see `entrypoints.worker.preload`).


def _redis_backend(
    client: redis.asyncio.Redis,
    *,
    prefix: str,
    result_ttl: float,
    dead_ttl: float,
    idempotency_ttl: float,
    admission: AdmissionPolicy | None,
    max_queues: int,
    max_result_bytes: int,
    limits: FlowLimits,
    min_replicas: int,
    replica_timeout_ms: int,
) -> Backend:
    from adapters.redis_queue import redis_backend

    return redis_backend(
        client,
        prefix=prefix,
        result_ttl=result_ttl,
        dead_ttl=dead_ttl,
        idempotency_ttl=idempotency_ttl,
        admission=admission,
        max_queues=max_queues,
        max_result_bytes=max_result_bytes,
        limits=limits,
        min_replicas=min_replicas,
        replica_timeout_ms=replica_timeout_ms,
    )


def _flow_limits(settings: Settings) -> FlowLimits:
    return settings.flow_limits


def _rq_redis(url: str, *, connect_timeout: float, socket_timeout: float) -> redis.Redis:
    from adapters.rq import create_rq_redis

    return create_rq_redis(url, connect_timeout=connect_timeout, socket_timeout=socket_timeout)


def _rq_backend(
    client: redis.Redis,
    *,
    prefix: str,
    result_ttl: float,
    dead_ttl: float,
    idempotency_ttl: float,
    admission: AdmissionPolicy | None,
    max_queues: int,
) -> Backend:
    from adapters.rq import rq_backend

    return rq_backend(
        client,
        prefix=prefix,
        result_ttl=result_ttl,
        dead_ttl=dead_ttl,
        idempotency_ttl=idempotency_ttl,
        admission=admission,
        max_queues=max_queues,
    )


def _memory_backend(
    clock: Clock,
    *,
    result_ttl: float,
    dead_ttl: float,
    idempotency_ttl: float,
    admission: AdmissionPolicy | None,
    max_queues: int,
    max_result_bytes: int,
    limits: FlowLimits,
) -> Backend:
    from adapters.memory import memory_backend

    return memory_backend(
        clock,
        result_ttl=result_ttl,
        dead_ttl=dead_ttl,
        idempotency_ttl=idempotency_ttl,
        admission=admission,
        max_queues=max_queues,
        max_result_bytes=max_result_bytes,
        limits=limits,
    )


def _redis_schedules(client: redis.asyncio.Redis, *, prefix: str) -> ScheduleStore:
    from adapters.redis_schedules import RedisScheduleStore

    return RedisScheduleStore(client, prefix=prefix)


def _memory_schedules() -> ScheduleStore:
    from adapters.memory.schedules import MemoryScheduleStore

    return MemoryScheduleStore()


# Schedules, and the cron arithmetic (cronsim, the zone database) they use, are loaded when
# first asked for: a worker's children never fire one, so they never load them.
def _cron_parser() -> CronParser:
    from adapters.cron import CronsimParser

    return CronsimParser()


def _schedule_service(
    *, store: ScheduleStore, registry: JobTypeRegistry, cron: CronParser, clock: Clock
) -> ScheduleService:
    from domain.scheduling import ScheduleService

    return ScheduleService(store=store, registry=registry, cron=cron, clock=clock)


def _scheduler(
    *,
    store: ScheduleStore,
    jobs: JobService,
    cron: CronParser,
    clock: Clock,
    idempotency_ttl: float,
) -> Scheduler:
    from domain.scheduling import Scheduler

    return Scheduler(
        store=store, jobs=jobs, cron=cron, clock=clock, idempotency_ttl=idempotency_ttl
    )


def lease_queue(backend: Backend) -> LeaseQueue:
    """The backend's LeaseQueue: what the native worker claims from and settles through."""
    if backend.leases is None:
        raise UnsupportedOperationError(
            "work", ROLE_NAMES[LeaseQueue], f"the {backend.name} backend hands out no leases"
        )
    return backend.leases


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)
    config = providers.Configuration()
    # How long one Redis call may take before the caller gives up. The API keeps it short so a
    # dead Redis gives a quick 503; the worker raises it above its blocking claim wait.
    redis_socket_timeout = providers.Object(1.0)

    clock = providers.Singleton(SystemClock)
    email_sender = providers.Singleton(ConsoleEmailSender)
    registry = providers.Singleton(
        default_registry, email_sender=email_sender, dummy_faults=config.dummy_faults
    )

    redis_client = providers.Singleton(
        create_redis,
        url=providers.Callable(_redis_url, settings),
        connect_timeout=config.redis_timeout,
        socket_timeout=redis_socket_timeout,
    )
    # rq cannot use redis.asyncio (nor decoded responses): its own synchronous, bytes-mode client.
    rq_redis_client = providers.Singleton(
        _rq_redis,
        url=providers.Callable(_redis_url, settings),
        connect_timeout=config.redis_timeout,
        socket_timeout=redis_socket_timeout,
    )
    admission = providers.Callable(_admission, settings)
    flow_limits = providers.Callable(_flow_limits, settings)
    backend = providers.Selector(
        config.queue_backend,
        redis=providers.Singleton(
            _redis_backend,
            client=redis_client,
            prefix=config.key_prefix,
            result_ttl=config.result_ttl_seconds,
            dead_ttl=config.dead_ttl_seconds,
            idempotency_ttl=config.idempotency_ttl_seconds,
            admission=admission,
            max_queues=config.max_queues,
            max_result_bytes=config.max_result_bytes,
            limits=flow_limits,
            min_replicas=config.min_replicas,
            replica_timeout_ms=config.replica_timeout_ms,
        ),
        memory=providers.Singleton(
            _memory_backend,
            clock=clock,
            result_ttl=config.result_ttl_seconds,
            dead_ttl=config.dead_ttl_seconds,
            idempotency_ttl=config.idempotency_ttl_seconds,
            admission=admission,
            max_queues=config.max_queues,
            max_result_bytes=config.max_result_bytes,
            limits=flow_limits,
        ),
        rq=providers.Singleton(
            _rq_backend,
            client=rq_redis_client,
            prefix=config.key_prefix,
            result_ttl=config.result_ttl_seconds,
            dead_ttl=config.dead_ttl_seconds,
            idempotency_ttl=config.idempotency_ttl_seconds,
            # RQ cannot check limits atomically: configured limits stop start-up with a
            # message rather than being ignored.
            admission=admission,
            max_queues=config.max_queues,
        ),
    )
    # The long polls this process holds at once, shared by every request's JobService.
    waiters = providers.Singleton(Waiters, limit=config.max_waiters)
    job_service = providers.Factory(
        JobService, backend=backend, registry=registry, clock=clock, waiters=waiters
    )
    # Schedules live beside the jobs: in the same Redis (for either Redis backend, RQ's
    # included: its scheduler submits through the job service), or in memory.
    cron_parser = providers.Singleton(_cron_parser)
    schedule_store = providers.Selector(
        config.queue_backend,
        redis=providers.Singleton(_redis_schedules, client=redis_client, prefix=config.key_prefix),
        rq=providers.Singleton(_redis_schedules, client=redis_client, prefix=config.key_prefix),
        memory=providers.Singleton(_memory_schedules),
    )
    schedule_service = providers.Factory(
        _schedule_service,
        store=schedule_store,
        registry=registry,
        cron=cron_parser,
        clock=clock,
    )
    scheduler = providers.Factory(
        _scheduler,
        store=schedule_store,
        jobs=job_service,
        cron=cron_parser,
        clock=clock,
        idempotency_ttl=config.idempotency_ttl_seconds,
    )
    # Spans for submissions and attempts; with tracing off, spans that do nothing.
    tracing = providers.Singleton(tracing_from, settings)
    # Only for a backend that hands out leases (see `lease_queue`).
    job_processor = providers.Factory(
        JobProcessor,
        reporter=providers.Callable(lease_queue, backend),
        registry=registry,
        random=providers.Object(random.random),
        clock=clock,
        expose_tracebacks=config.expose_tracebacks,
    )


def build_container(settings: Settings, *, redis_socket_timeout: float | None = None) -> Container:
    if settings.queue_backend is QueueBackend.RQ:
        # Its own RQ namespace, or SettingsError if rq was loaded with another deployment's.
        use_rq_key_prefix(settings)
    container = Container(settings=settings)
    container.config.from_dict(
        {
            "queue_backend": str(settings.queue_backend),
            "key_prefix": settings.key_prefix,
            "result_ttl_seconds": settings.result_ttl_seconds,
            "dead_ttl_seconds": settings.dead_ttl_seconds,
            "idempotency_ttl_seconds": settings.idempotency_ttl_seconds,
            "redis_timeout": settings.redis_timeout,
            "dummy_faults": settings.dummy_faults,
            "max_queues": settings.max_queues,
            "max_waiters": settings.max_waiters,
            "max_result_bytes": settings.max_result_bytes,
            "expose_tracebacks": settings.expose_tracebacks,
            "min_replicas": settings.min_replicas,
            "replica_timeout_ms": settings.replica_timeout_ms,
        }
    )
    container.redis_socket_timeout.override(
        providers.Object(
            settings.redis_timeout if redis_socket_timeout is None else redis_socket_timeout
        )
    )
    return container
