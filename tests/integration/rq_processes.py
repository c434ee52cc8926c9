"""The RQ backend on a real Redis, its jobs run by real `conveyor worker` processes
(QUEUE_BACKEND=rq): RQ's forking worker, its work-horses and its scheduler.

Each factory uses its own key prefix (`test-<uuid>`), so its RQ queues are its own, and
deletes its keys (and those of its jobs) afterwards.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

import redis
from rq.defaults import RQ_KEY_PREFIX

from adapters.rq import create_rq_redis
from adapters.rq.client import text
from domain.ports import Backend
from tests.contracts.driving import SETTLE_WITHIN, describe, settled
from tests.integration.processes import Conveyor
from tests.unit.rq_support import RqFactory


class RqRedisFactory(RqFactory):
    """Backends under a fresh prefix; `drain` starts real workers for the jobs' queues."""

    name = "rq on redis"

    def __init__(self, url: str, log_dir: Path, *, random: float = 0.0) -> None:
        super().__init__(f"test-{uuid.uuid4().hex[:16]}", random)
        self.url = url
        self.log_dir = log_dir
        self.workers: list[Conveyor] = []
        self._served: dict[Conveyor, set[str]] = {}

    def client(self) -> redis.Redis:
        return create_rq_redis(self.url, connect_timeout=2.0, socket_timeout=10.0)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "REDIS_URL": self.url,
            "QUEUE_BACKEND": "rq",
            "CONVEYOR_KEY_PREFIX": self.prefix,
            # The RQ namespace this test process loaded rq with (its backends are built here):
            # the workers must look where they write.
            "RQ_KEY_PREFIX": RQ_KEY_PREFIX,
            "LOG_FORMAT": "json",
            **extra,
        }

    def start_worker(self, queues: Sequence[str] = ("default",), **env: str) -> Conveyor:
        worker = Conveyor(
            ["worker"], self.env(CONVEYOR_WORKER_QUEUES=",".join(queues), **env), self.log_dir
        ).start()
        self.workers.append(worker)
        self._served[worker] = set(queues)
        return worker

    def stop_worker(self, worker: Conveyor) -> None:
        with suppress(Exception):
            worker.stop(timeout=15)
        self._served.pop(worker, None)

    def stop_workers(self) -> None:
        for worker in self.workers:
            self.stop_worker(worker)
        self.workers.clear()

    @property
    def served(self) -> set[str]:
        """The queues a running worker serves."""
        return set().union(*self._served.values())

    def logs(self) -> str:
        return "\n".join(worker.output()[-3000:] for worker in self.workers)

    async def drain(self, backend: Backend, job_ids: Sequence[str]) -> None:
        """Run the jobs with real workers until they have settled: those already started for
        their queues, and others started for the queues none serves, stopped afterwards (no
        job submitted after a drain runs)."""
        jobs = [await backend.store.get(job_id) for job_id in job_ids]
        unserved = sorted({job.queue for job in jobs if job is not None} - self.served)
        started = [self.start_worker(unserved)] if unserved else []
        deadline = time.monotonic() + SETTLE_WITHIN
        try:
            while not await settled(backend.store, job_ids):
                if time.monotonic() > deadline:
                    states = await describe(backend.store, job_ids)
                    raise AssertionError(f"not settled: {states}\n{self.logs()}")
                await asyncio.sleep(0.05)
        finally:
            for worker in started:
                self.stop_worker(worker)

    def cleanup(self) -> None:
        self.stop_workers()
        self.delete_keys()

    def delete_keys(self) -> None:
        client = self.client()
        try:
            doomed = set(client.scan_iter(match=f"*{self.prefix}*", count=1000))
            ids: set[str] = set()  # every job in our index, queues and registries
            for key in doomed:
                kind = client.type(key)
                if kind == b"zset":
                    ids |= {text(m).split(":")[0] for m in client.zrange(key, 0, -1)}
                elif kind == b"list":
                    ids |= {text(m) for m in client.lrange(key, 0, -1)}
            if ids:
                for key in client.scan_iter(match="rq:*", count=1000):
                    if any(job_id in text(key) for job_id in ids):
                        doomed.add(key)
            doomed_list = sorted(doomed)
            for start in range(0, len(doomed_list), 500):
                client.unlink(*doomed_list[start : start + 500])
        finally:
            client.close()
