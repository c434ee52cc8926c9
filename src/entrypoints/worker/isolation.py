"""Jobs that have killed a worker process before, started so they cannot take others down.

When a job's handler crashes its process (a segfault, `os._exit`, the OOM killer), the jobs
that were only waiting beside it go back to the queue uncharged. But a job whose handler had
just finished has its outcome still on its way to Redis (outcomes are sent in batches, once
per turn of the event loop), and a crash in the same turn loses it: that job runs again, and
again each time a crashing job lands next to it in a claim. During a storm of crashing jobs
a finished job could be re-run, and never recorded, for as long as the storm lasts.

So a job whose last attempt was lost with its worker (`worker_lost`) is started only once the
jobs running beside it have finished and sent their outcomes, or a moment has passed. A job
that crashes for the first time still costs the finished jobs of its own turn a re-run; it
is the repeat offenders that would otherwise keep doing it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final

from domain.jobs import ErrorKind, Lease

# The longest a suspect waits for the jobs beside it (a long job is not waited for).
ISOLATION_WAIT: Final = 0.1


def killed_a_worker(lease: Lease) -> bool:
    """Whether the job's last attempt ended with its worker process dying under it."""
    error = lease.job.error
    return error is not None and error.kind is ErrorKind.WORKER_LOST


async def isolate(running: Sequence[asyncio.Task[Any]]) -> None:
    """Wait until `running` are done (their outcomes sent), or `ISOLATION_WAIT` passed."""
    if running:
        await asyncio.wait(running, timeout=ISOLATION_WAIT)
