"""TEST-ONLY patch (negative control): fencing disabled.

Loaded only by the worker processes of `test_negative_controls`, through PYTHONPATH. A worker
ignores what Redis says about its lease token: a renewal that Redis refused counts as held
(so a stale holder is never told to stop), and a success Redis refused to settle is written
anyway, unconditionally. In the W7 scenario the frozen holder's late completion is then
accepted on top of the new holder's, and the checker must report a duplicate completion.
"""

from __future__ import annotations

import os
from typing import Any, cast


def _report(line: str) -> None:
    path = os.environ.get("CONVEYOR_TEST_PATCH_REPORT")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{line} pid={os.getpid()}\n".encode())
        finally:
            os.close(fd)


def _apply() -> None:
    from adapters.redis_queue import RedisLeaseQueue
    from adapters.redis_queue.codec import encode_json
    from adapters.redis_queue.core import RedisCore
    from domain.jobs import AttemptOutcome, JobStatus

    renew, settle = RedisLeaseQueue.renew, RedisLeaseQueue.settle
    # The layout the forced write below relies on: a lease queue's core, its client, and
    # the keys of a queue.
    probe = RedisCore(
        cast(Any, None), prefix="probe", result_ttl=1, dead_ttl=1, idempotency_ttl=1, admission=None
    )
    keys = RedisLeaseQueue(probe)._core.keys("probe")
    _ = (probe.client, keys.job("probe"), keys.active)

    async def renew_ignoring_tokens(
        self: RedisLeaseQueue, leases: Any, lease_seconds: float
    ) -> set[str]:
        await renew(self, leases, lease_seconds)  # still extends the leases really held
        return {lease.job_id for lease in leases}

    async def settle_unfenced(self: RedisLeaseQueue, lease: Any, ending: Any) -> Any:
        status = await settle(self, lease, ending)
        if status is not None or ending.outcome is not AttemptOutcome.SUCCEEDED:
            return status
        core = self._core
        keys = core.keys(lease.job.queue)
        await core.client.hset(
            keys.job(lease.job_id),
            mapping={"status": "succeeded", "result": encode_json(ending.result)},
        )
        await core.client.zrem(keys.active, lease.job_id)
        _report(f"forced a refused completion of {lease.job_id} ({lease.token})")
        return JobStatus.SUCCEEDED

    RedisLeaseQueue.renew = renew_ignoring_tokens  # type: ignore[method-assign]
    RedisLeaseQueue.settle = settle_unfenced  # type: ignore[method-assign]


try:
    _apply()
except Exception as exc:  # reported, so the test fails loudly instead of testing nothing
    _report(f"FAILED no_fencing: {type(exc).__name__}: {exc}")
else:
    _report("applied no_fencing")
    # Worker processes are forked from a fork server that loaded this patch: each says so.
    os.register_at_fork(after_in_child=lambda: _report("applied no_fencing (forked)"))
