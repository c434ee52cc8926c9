"""An append-only record of executions, kept outside Redis.

Each worker process appends one JSON line per event with a single `write` on a file opened
with O_APPEND, so lines from many processes never interleave and a line written before a
crash survives it. Operators get an audit trail that a Redis fault cannot erase; the fault
tests use it as their witness of what really ran.

Each line holds its attempt's lease token, which fences that attempt's writes: the file is
created readable by its owner only (0600), and one found readable by others is made so.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from typing import Any

from domain.jobs import Lease
from entrypoints.worker.observers import AttemptEnd, AttemptObserver

log = logging.getLogger("conveyor.worker")

PRIVATE = 0o600


class AuditLog(AttemptObserver):
    def __init__(self, path: str, worker_id: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE)
        mode = stat.S_IMODE(os.fstat(self._fd).st_mode)
        if mode & 0o077:  # made by an older version, or by hand
            try:
                os.fchmod(self._fd, mode & PRIVATE)
            except OSError as exc:
                log.warning(
                    "the audit log is readable by others and cannot be made private: %s", exc
                )
        self._worker_id = worker_id
        self._pid = os.getpid()

    def _write(self, event: str, lease: Lease, **fields: Any) -> None:
        line = {
            "event": event,
            "job_id": lease.job_id,
            "attempt": lease.attempt,
            "token": lease.token,
            "pid": self._pid,
            "worker_id": self._worker_id,
            "ts": time.time(),
            **fields,
        }
        os.write(self._fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())

    def started(self, lease: Lease) -> None:
        # When the claim started it, on the backend's clock: what limits are enforced on.
        started_at = lease.job.started_at
        if started_at is None:  # pragma: no cover - a claim always sets it
            self._write("start", lease)
        else:
            self._write("start", lease, started_at=started_at.timestamp())

    def renewed(self, lease: Lease) -> None:
        self._write("renewed", lease)

    def ended(self, lease: Lease, end: AttemptEnd) -> None:
        """The attempt is over. Its `outcome` is the status its settlement stored
        (`succeeded` only when the backend accepted the result under this lease's token),
        `released` when a stopping worker handed the job back, `lease_lost` when the backend
        refused the write, or `left_to_lease` when it could not be told (see
        `worker.endings`). `handler_ended`, when known, is when its handler was done: before
        the settlement was stored, which is what frees the job's concurrency slot.
        `unreplicated` marks a settlement fewer replicas than `CONVEYOR_MIN_REPLICAS`
        confirmed: a failover may still lose it, and the job then runs again."""
        more: dict[str, Any] = {}
        if end.handler_ended is not None:
            more["handler_ended"] = end.handler_ended
        if end.unreplicated:  # stored on the primary, not confirmed by its replicas
            more["unreplicated"] = True
        self._write("end", lease, outcome=end.outcome, **more)

    def close(self) -> None:
        os.close(self._fd)
