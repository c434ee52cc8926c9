"""The composition root: what depends on what, built once per process."""

from __future__ import annotations

import random

from dependency_injector import containers, providers

from adapters.console_email import ConsoleEmailSender
from adapters.memory_queue import InMemoryJobQueue
from adapters.redis_client import create_redis
from adapters.redis_queue import RedisJobQueue
from adapters.rq_queue import RqJobQueue, create_rq_redis
from adapters.system_clock import SystemClock
from domain.job_types.registry import default_registry
from domain.ports import AdmissionPolicy
from domain.services import JobProcessor, JobService
from entrypoints.settings import Settings


def _redis_url(settings: Settings) -> str:
    return settings.require_redis_url()


def _admission(settings: Settings) -> AdmissionPolicy | None:
    return settings.admission if settings.admission.enabled else None


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)
    config = providers.Configuration()
    # How long one Redis call may take before the caller gives up. The API keeps it short so a
    # dead Redis gives a quick 503; the worker raises it above its blocking claim wait.
    redis_socket_timeout = providers.Object(1.0)

    clock = providers.Singleton(SystemClock)
    email_sender = providers.Singleton(ConsoleEmailSender)
    registry = providers.Singleton(default_registry, email_sender=email_sender)

    redis_client = providers.Singleton(
        create_redis,
        url=providers.Callable(_redis_url, settings),
        connect_timeout=config.redis_timeout,
        socket_timeout=redis_socket_timeout,
    )
    # rq cannot use redis.asyncio (nor decoded responses): its own synchronous, bytes-mode client.
    rq_redis_client = providers.Singleton(
        create_rq_redis,
        url=providers.Callable(_redis_url, settings),
        connect_timeout=config.redis_timeout,
        socket_timeout=redis_socket_timeout,
    )
    admission = providers.Callable(_admission, settings)
    job_queue = providers.Selector(
        config.queue_backend,
        redis=providers.Singleton(
            RedisJobQueue,
            client=redis_client,
            prefix=config.key_prefix,
            result_ttl=config.result_ttl_seconds,
            dead_ttl=config.dead_ttl_seconds,
            idempotency_ttl=config.idempotency_ttl_seconds,
            admission=admission,
        ),
        memory=providers.Singleton(
            InMemoryJobQueue,
            clock=clock,
            result_ttl=config.result_ttl_seconds,
            dead_ttl=config.dead_ttl_seconds,
            idempotency_ttl=config.idempotency_ttl_seconds,
            admission=admission,
        ),
        rq=providers.Singleton(
            RqJobQueue,
            client=rq_redis_client,
            registry=registry,
            prefix=config.key_prefix,
            result_ttl=config.result_ttl_seconds,
            dead_ttl=config.dead_ttl_seconds,
            idempotency_ttl=config.idempotency_ttl_seconds,
            # RQ cannot check limits atomically: configured limits stop start-up with a
            # message rather than being ignored.
            admission=admission,
        ),
    )
    job_service = providers.Factory(JobService, queue=job_queue, registry=registry, clock=clock)
    job_processor = providers.Factory(
        JobProcessor,
        queue=job_queue,
        registry=registry,
        random=providers.Object(random.random),
        clock=clock,
    )


def build_container(settings: Settings, *, redis_socket_timeout: float | None = None) -> Container:
    container = Container(settings=settings)
    container.config.from_dict(
        {
            "queue_backend": str(settings.queue_backend),
            "key_prefix": settings.key_prefix,
            "result_ttl_seconds": settings.result_ttl_seconds,
            "dead_ttl_seconds": settings.dead_ttl_seconds,
            "idempotency_ttl_seconds": settings.idempotency_ttl_seconds,
            "redis_timeout": settings.redis_timeout,
        }
    )
    container.redis_socket_timeout.override(
        providers.Object(
            settings.redis_timeout if redis_socket_timeout is None else redis_socket_timeout
        )
    )
    return container
