"""TEST-ONLY patch (negative control): a claim that takes jobs without a lease that can lapse.

Loaded only by the worker processes of `test_negative_controls`, through PYTHONPATH. It turns
the native queue into the BRPOP-style fetch of reliability.md §7.1: a claimed job is out of
the queue, held only in the worker's memory. Claims take a lease of ~11 days (the reaper never
sees it lapse), renewals are skipped, and `held_by` answers nothing (the supervisor cannot
settle what a dead child held). A worker killed mid-job must then lose it, and the checker
must say so.
"""

from __future__ import annotations

import os
from typing import Any


def _report(line: str) -> None:
    path = os.environ.get("CONVEYOR_TEST_PATCH_REPORT")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{line} pid={os.getpid()}\n".encode())
        finally:
            os.close(fd)


def _apply() -> None:
    import attrs

    from adapters.redis_queue import RedisLeaseQueue

    claim, held_by, renew = RedisLeaseQueue.claim, RedisLeaseQueue.held_by, RedisLeaseQueue.renew
    del held_by, renew  # present: checked by the attribute lookups above

    async def claim_without_lease(self: RedisLeaseQueue, request: Any) -> Any:
        return await claim(self, attrs.evolve(request, lease_seconds=1_000_000.0))

    async def renew_nothing(self: RedisLeaseQueue, leases: Any, lease_seconds: float) -> set[str]:
        return {lease.job_id for lease in leases}

    async def held_by_nobody(self: RedisLeaseQueue, worker_id: str, queues: Any) -> list[Any]:
        return []

    RedisLeaseQueue.claim = claim_without_lease  # type: ignore[method-assign]
    RedisLeaseQueue.renew = renew_nothing  # type: ignore[method-assign]
    RedisLeaseQueue.held_by = held_by_nobody  # type: ignore[method-assign]


try:
    _apply()
except Exception as exc:  # reported, so the test fails loudly instead of testing nothing
    _report(f"FAILED no_lease: {type(exc).__name__}: {exc}")
else:
    _report("applied no_lease")
    # Worker processes are forked from a fork server that loaded this patch: each says so.
    os.register_at_fork(after_in_child=lambda: _report("applied no_lease (forked)"))
