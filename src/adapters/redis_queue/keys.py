"""The Redis keys of one queue (the layout is described in `scripts.py`)."""

from __future__ import annotations

import attrs

from domain.jobs import JobStatus


@attrs.frozen
class QueueKeys:
    """The keys of one queue; all share the hash tag ``{prefix:queue}``."""

    base: str
    ready: str
    active: str
    delayed: str
    marker: str
    tokens: str
    stale: str

    @classmethod
    def of(cls, prefix: str, queue: str) -> QueueKeys:
        if not queue or "{" in queue or "}" in queue:
            raise ValueError(f"invalid queue name {queue!r}")
        base = f"{{{prefix}:{queue}}}:"
        return cls(
            base=base,
            ready=base + "ready",
            active=base + "active",
            delayed=base + "delayed",
            marker=base + "marker",
            tokens=base + "tokens",
            stale=base + "stale",
        )

    def job(self, job_id: str) -> str:
        return self.base + "job:" + job_id

    def index(self, status: JobStatus) -> str:
        return self.base + "index:" + status.value
