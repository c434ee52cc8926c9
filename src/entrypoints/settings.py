"""Settings, read once from the environment into a frozen value.

A bad value stops start-up with a message that names the variable.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Mapping
from typing import TypeVar

import attrs

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


class Backend(enum.StrEnum):
    REDIS = "redis"
    MEMORY = "memory"
    RQ = "rq"


class LogFormat(enum.StrEnum):
    JSON = "json"
    CONSOLE = "console"


@attrs.frozen(kw_only=True)
class Settings:
    redis_url: str | None = None
    queue_backend: Backend = Backend.REDIS
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
    claim_batch: int = 100
    max_body_bytes: int = 256 * 1024
    redis_timeout: float = 1.0
    result_ttl_seconds: float = 86_400.0
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.CONSOLE
    api_host: str = "127.0.0.1"
    api_port: int = 8000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        read = _Reader(env)
        return cls(
            redis_url=read("REDIS_URL", str, None),
            queue_backend=read("QUEUE_BACKEND", Backend, Backend.REDIS),
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
            worker_queues=read("CONVEYOR_WORKER_QUEUES", parse_queues, ("default",)),
            claim_batch=read("CONVEYOR_CLAIM_BATCH", _positive(int), 100),
            max_body_bytes=read("CONVEYOR_MAX_BODY_BYTES", _positive(int), 256 * 1024),
            redis_timeout=read("CONVEYOR_REDIS_TIMEOUT", _positive(float), 1.0),
            result_ttl_seconds=read("CONVEYOR_RESULT_TTL_SECONDS", _positive(float), 86_400.0),
            log_level=read("LOG_LEVEL", _log_level, "INFO"),
            log_format=read("LOG_FORMAT", LogFormat, LogFormat.CONSOLE),
            api_host=read("CONVEYOR_API_HOST", str, "127.0.0.1"),
            api_port=read("CONVEYOR_API_PORT", _port, 8000),
        )

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise SettingsError(
                "REDIS_URL is not set: point it at a Redis server (redis://host:port/db), "
                "or use `conveyor dev`, which starts a local one"
            )
        return self.redis_url


@attrs.frozen
class _Reader:
    env: Mapping[str, str]

    def __call__(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        try:
            return parse(raw)
        except (ValueError, TypeError) as exc:
            raise SettingsError(f"{name}={raw!r} is not valid: {exc}") from None


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


def _prefix(raw: str) -> str:
    if any(c in raw for c in "{}: \t"):
        raise ValueError("must not contain braces, colons or spaces")
    return raw


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def parse_queues(raw: str) -> tuple[str, ...]:
    queues = tuple(q.strip() for q in raw.split(",") if q.strip())
    if not queues:
        raise ValueError("name at least one queue")
    return queues
