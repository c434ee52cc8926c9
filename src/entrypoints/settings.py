"""Settings, read once from the environment into a frozen value.

A bad value stops start-up with a message that names the variable.
"""

from __future__ import annotations

import enum
import importlib.util
import os
from collections.abc import Callable, Mapping
from typing import TypeVar

import attrs

from domain.job_types.registry import JOB_TYPE_NAMES
from domain.limits import FlowLimits, parse_concurrency_limits, parse_rate_limits
from domain.ports import AdmissionPolicy, QueueLimits
from domain.schedules import ScheduleRequest
from entrypoints.redaction import redact_url
from entrypoints.setting_values import (
    parse_origins,
    parse_queue_limits,
    parse_schedules,
    parse_weighted_queues,
)

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


class QueueBackend(enum.StrEnum):
    """QUEUE_BACKEND: which technology keeps the jobs."""

    REDIS = "redis"
    MEMORY = "memory"
    RQ = "rq"


class LogFormat(enum.StrEnum):
    JSON = "json"
    CONSOLE = "console"


def _shown_url(url: str | None) -> str:
    return repr(url if url is None else redact_url(url))


@attrs.frozen(kw_only=True)
class Settings:
    # Its credentials never show, not even in a repr.
    redis_url: str | None = attrs.field(default=None, repr=_shown_url)
    queue_backend: QueueBackend = QueueBackend.REDIS
    key_prefix: str = "conveyor"
    lease_seconds: float = 30.0
    worker_concurrency: int = 10
    worker_processes: int = 1
    drain_grace_seconds: float = 30.0
    kill_grace_seconds: float = 5.0
    recover_interval_seconds: float = 1.0
    recycle_after_jobs: int = 0
    recycle_rss_mb: int = 0
    audit_log: str | None = None
    worker_queues: tuple[str, ...] = ("default",)
    # Claim from the queues in random order by these weights, one per queue; None: in order.
    worker_queue_weights: tuple[int, ...] | None = None
    claim_batch: int = 100
    max_body_bytes: int = 256 * 1024
    redis_timeout: float = 1.0
    result_ttl_seconds: float = 86_400.0
    dead_ttl_seconds: float = 7 * 86_400.0
    idempotency_ttl_seconds: float = 86_400.0
    # Replicas that must confirm a submission or a settlement before it is acknowledged
    # (Redis WAIT; native Redis backend only), and how long to wait for them; 0: off.
    min_replicas: int = 0
    replica_timeout_ms: int = 500
    admission: AdmissionPolicy = attrs.field(factory=AdmissionPolicy)
    # Rate and concurrency limits per job type, across every worker (`domain.limits`).
    flow_limits: FlowLimits = attrs.field(factory=FlowLimits)
    cancel_grace_seconds: float = 5.0
    wait_max_seconds: float = 30.0
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.CONSOLE
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # What a deployment offers that can harm its own workers.
    # `dummy`'s fault modes (crash, memory, hang, cpu): off unless asked for.
    dummy_faults: bool = False
    # Seconds a worker process may stop answering its supervisor before it is replaced; None:
    # the lease (`watchdog` says what applies), 0: never.
    watchdog_seconds: float | None = None
    # What callers can make the service hold: queue names, long polls waiting at once in one
    # API process, the size of a job's result (JSON bytes).
    max_queues: int = 1000
    max_waiters: int = 1000
    max_result_bytes: int = 1024 * 1024
    # What clients see: a failed attempt's traceback names server paths, so it is kept on
    # the job (and shown) only when an operator asks for it; the log always has it.
    expose_tracebacks: bool = False
    # What browsers may do: the origins (`https://host[:port]`) whose pages may make
    # state-changing requests. A request from any other page is refused; none by default.
    allowed_origins: frozenset[str] = frozenset()
    # Metrics: the port each `conveyor worker` serves Prometheus metrics on, on `api_host`;
    # None: not served (writing them costs each job a little). `api_metrics`: the API's
    # `GET /metrics` and the counts behind it (on by default).
    metrics_port: int | None = None
    api_metrics: bool = True
    # Tracing and logs. `tracing`: OpenTelemetry spans for submissions and attempts (needs
    # the `tracing` extra; the exporter, sampler and service name come from the standard
    # OTEL_* variables; OTEL_SDK_DISABLED=true turns it off). `access_log`: one line per
    # HTTP request from the API, in the process's log format.
    tracing: bool = False
    access_log: bool = False
    # Schedules declared at start-up (`CONVEYOR_SCHEDULES`): created, or replaced when their
    # definition changed. Read here for their shape; `entrypoints.scheduling` checks each
    # against the job types before the process serves.
    schedules: tuple[ScheduleRequest, ...] = ()
    # Whether this process runs the scheduler (the API and `conveyor worker`'s supervisor
    # do by default): any number may; each tick still makes one job.
    scheduler: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        read = _Reader(env)
        in_order: tuple[tuple[str, ...], tuple[int, ...] | None] = (("default",), None)
        queues, weights = read("CONVEYOR_WORKER_QUEUES", parse_weighted_queues, in_order)
        no_limits: dict[str, QueueLimits] = {}
        limits = dict(read("CONVEYOR_QUEUE_LIMITS", parse_queue_limits, no_limits))
        settings = cls(
            redis_url=read("REDIS_URL", _redis_url, None, secret=True),
            queue_backend=read("QUEUE_BACKEND", QueueBackend, QueueBackend.REDIS),
            key_prefix=read("CONVEYOR_KEY_PREFIX", _prefix, "conveyor"),
            lease_seconds=read("CONVEYOR_LEASE_SECONDS", _positive(float), 30.0),
            worker_concurrency=read("CONVEYOR_WORKER_CONCURRENCY", _positive(int), 10),
            worker_processes=read("CONVEYOR_WORKER_PROCESSES", _positive(int), 1),
            drain_grace_seconds=read("CONVEYOR_DRAIN_GRACE_SECONDS", _non_negative(float), 30.0),
            kill_grace_seconds=read("CONVEYOR_KILL_GRACE_SECONDS", _positive(float), 5.0),
            recover_interval_seconds=read(
                "CONVEYOR_RECOVER_INTERVAL_SECONDS", _positive(float), 1.0
            ),
            recycle_after_jobs=read("CONVEYOR_RECYCLE_AFTER_JOBS", _non_negative(int), 0),
            recycle_rss_mb=read("CONVEYOR_RECYCLE_RSS_MB", _non_negative(int), 0),
            audit_log=read("CONVEYOR_AUDIT_LOG", str, None),
            worker_queues=queues,
            worker_queue_weights=weights,
            claim_batch=read("CONVEYOR_CLAIM_BATCH", _positive(int), 100),
            max_body_bytes=read("CONVEYOR_MAX_BODY_BYTES", _positive(int), 256 * 1024),
            redis_timeout=read("CONVEYOR_REDIS_TIMEOUT", _positive(float), 1.0),
            result_ttl_seconds=read("CONVEYOR_RESULT_TTL_SECONDS", _positive(float), 86_400.0),
            dead_ttl_seconds=read("CONVEYOR_DEAD_TTL_SECONDS", _positive(float), 7 * 86_400.0),
            idempotency_ttl_seconds=read(
                "CONVEYOR_IDEMPOTENCY_TTL_SECONDS", _positive(float), 86_400.0
            ),
            min_replicas=read("CONVEYOR_MIN_REPLICAS", _non_negative(int), 0),
            replica_timeout_ms=read("CONVEYOR_REPLICA_TIMEOUT_MS", _positive(int), 500),
            admission=AdmissionPolicy(
                default=limits.pop("*", QueueLimits()),
                queues=limits,
                max_memory=read("CONVEYOR_ADMIT_MAX_MEMORY_BYTES", _positive(int), None),
                retry_after=read("CONVEYOR_ADMIT_RETRY_AFTER_SECONDS", _positive(float), 1.0),
            ),
            flow_limits=FlowLimits.of(
                read("CONVEYOR_RATE_LIMITS", _of_known_types(parse_rate_limits), {}),
                read("CONVEYOR_CONCURRENCY_LIMITS", _of_known_types(parse_concurrency_limits), {}),
            ),
            cancel_grace_seconds=read("CONVEYOR_CANCEL_GRACE_SECONDS", _positive(float), 5.0),
            wait_max_seconds=read("CONVEYOR_WAIT_MAX_SECONDS", _positive(float), 30.0),
            log_level=read("LOG_LEVEL", _log_level, "INFO"),
            log_format=read("LOG_FORMAT", LogFormat, LogFormat.CONSOLE),
            api_host=read("CONVEYOR_API_HOST", str, "127.0.0.1"),
            api_port=read("CONVEYOR_API_PORT", _port, 8000),
            dummy_faults=read("CONVEYOR_DUMMY_FAULTS", parse_flag, False),
            watchdog_seconds=read("CONVEYOR_WATCHDOG_SECONDS", _non_negative(float), None),
            max_queues=read("CONVEYOR_MAX_QUEUES", _positive(int), 1000),
            max_waiters=read("CONVEYOR_MAX_WAITERS", _non_negative(int), 1000),
            max_result_bytes=read("CONVEYOR_MAX_RESULT_BYTES", _positive(int), 1024 * 1024),
            expose_tracebacks=read("CONVEYOR_EXPOSE_TRACEBACKS", parse_flag, False),
            allowed_origins=read("CONVEYOR_ALLOWED_ORIGINS", parse_origins, frozenset()),
            metrics_port=read("CONVEYOR_METRICS_PORT", _optional_port, None),
            # Tracing and logs (see the fields).
            tracing=read("CONVEYOR_TRACING", _tracing, False)
            and not read("OTEL_SDK_DISABLED", parse_flag, False),
            access_log=read("CONVEYOR_ACCESS_LOG", parse_flag, False),
            api_metrics=read("CONVEYOR_API_METRICS", parse_flag, True),
            schedules=read("CONVEYOR_SCHEDULES", parse_schedules, ()),
            scheduler=read("CONVEYOR_SCHEDULER", parse_flag, True),
        )
        if settings.queue_backend is QueueBackend.RQ and settings.admission.enabled:
            raise SettingsError(
                "CONVEYOR_QUEUE_LIMITS and CONVEYOR_ADMIT_MAX_MEMORY_BYTES need a backend that"
                " checks them atomically with the enqueue; QUEUE_BACKEND=rq cannot"
            )
        if settings.queue_backend is QueueBackend.RQ and settings.flow_limits:
            raise SettingsError(
                "CONVEYOR_RATE_LIMITS and CONVEYOR_CONCURRENCY_LIMITS need a backend that checks"
                " them atomically with the claim; QUEUE_BACKEND=rq cannot"
            )
        sentinels = (settings.redis_url or "").lower().startswith("redis+sentinel://")
        if settings.queue_backend is QueueBackend.RQ and sentinels:
            raise SettingsError(
                "REDIS_URL names Sentinels (redis+sentinel://): only the native backend follows"
                " a failover; QUEUE_BACKEND=rq needs the primary's redis:// URL"
            )
        if settings.min_replicas and settings.queue_backend is not QueueBackend.REDIS:
            raise SettingsError(
                f"CONVEYOR_MIN_REPLICAS={settings.min_replicas} needs QUEUE_BACKEND=redis, which"
                f" confirms writes on replicas with WAIT; QUEUE_BACKEND={settings.queue_backend}"
                " cannot: set CONVEYOR_MIN_REPLICAS=0"
            )
        if settings.min_replicas and settings.replica_timeout_ms >= settings.redis_timeout * 1000:
            raise SettingsError(
                f"CONVEYOR_REPLICA_TIMEOUT_MS={settings.replica_timeout_ms} must be shorter than"
                f" CONVEYOR_REDIS_TIMEOUT ({settings.redis_timeout:g} s), or the API gives up on"
                " the reply before WAIT answers"
            )
        _check_cluster(settings)
        return settings

    @property
    def watchdog(self) -> float:
        """Seconds of silence after which a worker process is replaced (0: never)."""
        return self.lease_seconds if self.watchdog_seconds is None else self.watchdog_seconds

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise SettingsError(
                "REDIS_URL is not set: point it at a Redis server (redis://host:port/db), "
                "or use `conveyor dev`, which starts a local one"
            )
        return self.redis_url


def _check_cluster(settings: Settings) -> None:
    """Refuse what a Redis Cluster cannot do (see `adapters.redis_cluster`)."""
    if not (settings.redis_url or "").lower().startswith("redis+cluster://"):
        return
    if settings.queue_backend is QueueBackend.RQ:
        raise SettingsError(
            "REDIS_URL names a Redis Cluster (redis+cluster://): only the native backend"
            " spreads queues over a cluster; QUEUE_BACKEND=rq needs one server's redis:// URL"
        )


@attrs.frozen
class _Reader:
    env: Mapping[str, str]

    def __call__(
        self, name: str, parse: Callable[[str], T], default: T, *, secret: bool = False
    ) -> T:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        try:
            return parse(raw)
        except (ValueError, TypeError) as exc:
            shown = redact_url(raw) if secret else raw
            raise SettingsError(f"{name}={shown!r} is not valid: {exc}") from None


def _redis_url(raw: str) -> str:
    """A URL redis-py can read: checked by redis-py's own parser, so a typo stops start-up
    here, with a message that shows no credential, rather than at the first connection."""
    from redis.asyncio.connection import parse_url

    from adapters.redis_cluster import is_cluster_url, parse_cluster_url
    from adapters.redis_sentinel import is_sentinel_url, parse_sentinel_url

    if is_cluster_url(raw):
        parse_cluster_url(raw)  # its messages quote no credential
        return raw
    if is_sentinel_url(raw):
        parse_sentinel_url(raw)  # its messages quote no credential
        return raw
    try:
        parse_url(raw)
    except ValueError as exc:
        # redis-py's own messages name the scheme or a parameter; urllib's may quote a piece
        # of a mistyped password (an unencoded ':' makes the port unreadable).
        mine = str(exc).startswith(("Redis URL must specify", "Invalid value for"))
        raise ValueError(
            str(exc)
            if mine
            else "not a URL redis-py can read (is a ':', '/', '?', '#' or '@' in the password "
            "percent-encoded?)"
        ) from None
    return raw


def _of_known_types(parse: Callable[[str, frozenset[str]], T]) -> Callable[[str], T]:
    return lambda raw: parse(raw, JOB_TYPE_NAMES)


def _positive(kind: Callable[[str], T]) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        value = kind(raw)
        if not value > 0:  # type: ignore[operator]
            raise ValueError("must be greater than 0")
        return value

    return parse


def _non_negative(kind: Callable[[str], T]) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        value = kind(raw)
        if value < 0:  # type: ignore[operator]
            raise ValueError("must be 0 or more")
        return value

    return parse


def _port(raw: str) -> int:
    port = int(raw)
    if not 0 < port < 65536:
        raise ValueError("must be a TCP port (1-65535)")
    return port


def _optional_port(raw: str) -> int | None:
    return _port(raw) if raw.strip() else None


def _prefix(raw: str) -> str:
    if any(c in raw for c in "{}: \t"):
        raise ValueError("must not contain braces, colons or spaces")
    return raw


def parse_flag(raw: str) -> bool:
    """`1`, `true`, `yes` or `on` (any case) for on; `0`, `false`, `no` or `off` for off."""
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be 1 or 0")


def _tracing(raw: str) -> bool:
    on = parse_flag(raw)
    if on:
        try:
            found = importlib.util.find_spec("opentelemetry.sdk") is not None
        except ImportError:  # not even the `opentelemetry` namespace is installed
            found = False
        if not found:
            raise ValueError("tracing needs OpenTelemetry: install conveyor[tracing]")
    return on


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level
