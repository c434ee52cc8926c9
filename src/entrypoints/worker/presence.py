"""A worker process saying it is alive (`QueueMonitor.heartbeat`), and that it has gone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from domain.errors import QueueUnavailableError
from domain.ports import QueueMonitor, WorkerLoad
from entrypoints.worker.config import WorkerConfig


class Presence:
    def __init__(
        self, monitor: QueueMonitor, config: WorkerConfig, load: Callable[[], WorkerLoad]
    ) -> None:
        self._monitor = monitor
        self._config = config
        self._load = load

    async def beat_forever(self) -> None:
        cfg = self._config
        ttl = cfg.heartbeat_interval * 3
        while True:
            with contextlib.suppress(QueueUnavailableError):
                # The claim loop reports outages; the next beat may get through.
                await self._monitor.heartbeat(cfg.worker_id, cfg.queues, ttl, self._load())
            await asyncio.sleep(cfg.heartbeat_interval)

    async def forget(self) -> None:
        """Stop counting as a live worker; if the backend cannot be told, the heartbeat lapses."""
        with contextlib.suppress(QueueUnavailableError, TimeoutError):
            await asyncio.wait_for(self._monitor.forget_worker(self._config.worker_id), 2.0)
