"""The Redis keys of one queue (the layout is described in `scripts.py`)."""

from __future__ import annotations

import hashlib
from typing import Final

import attrs

from domain.jobs import JobStatus

# What follows the key base of a queue, for each of its keys. The scripts name each key by
# its suffix (``Q.active`` is the key base followed by ``active``; see `scripts.py`).
SUFFIXES: Final = {
    "queued": "queued",
    "active": "active",
    "delayed": "delayed",
    "deadlines": "deadlines",
    "cancelling": "cancelling",
    "marker": "marker",
    "paused": "paused",
    "seq": "seq",
    "tokens": "tokens",
    "stale": "stale",
    "workers": "workers",
    # The FIFO list of an earlier layout; claims drain what is left in it (see `scripts.py`).
    "legacy_ready": "ready",
}


@attrs.frozen
class QueueKeys:
    """The keys of one queue; all share the hash tag ``{prefix:queue}``."""

    base: str
    queued: str
    active: str
    delayed: str
    deadlines: str
    cancelling: str
    marker: str
    paused: str
    seq: str
    tokens: str
    stale: str
    workers: str
    legacy_ready: str

    @classmethod
    def of(cls, prefix: str, queue: str) -> QueueKeys:
        if not queue or "{" in queue or "}" in queue:
            raise ValueError(f"invalid queue name {queue!r}")
        base = f"{{{prefix}:{queue}}}:"
        return cls(base=base, **{name: base + suffix for name, suffix in SUFFIXES.items()})

    def job(self, job_id: str) -> str:
        return self.base + "job:" + job_id

    def index(self, status: JobStatus) -> str:
        return self.base + "index:" + status.value


def queues_key(prefix: str) -> str:
    """The set of every queue name used under `prefix`."""
    return f"{prefix}:queues"


def idempotency_key(prefix: str, key: str) -> str:
    """Where a client's idempotency key is held: hashed, so no client bytes name a key."""
    return f"{prefix}:idem:{hashlib.sha256(key.encode()).hexdigest()}"
