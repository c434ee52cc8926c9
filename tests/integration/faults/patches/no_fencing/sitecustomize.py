"""TEST-ONLY patch (negative control): fencing disabled.

Loaded only by the worker processes of `test_negative_controls`, through PYTHONPATH. A worker
ignores what Redis says about its lease token: a renewal that Redis refused counts as held
(so a stale holder is never told to stop), and a completion Redis refused is written anyway,
unconditionally. In the W7 scenario the frozen holder's late completion is then accepted on
top of the new holder's, and the checker must report a duplicate completion.
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
    from adapters.redis_queue import RedisJobQueue
    from adapters.redis_queue.codec import encode_json
    from adapters.redis_queue.keys import QueueKeys

    renew, complete = RedisJobQueue.renew, RedisJobQueue.complete
    QueueKeys.of("probe", "probe").job("probe")  # the key layout the write below relies on

    async def renew_ignoring_tokens(
        self: RedisJobQueue, leases: Any, lease_seconds: float
    ) -> set[str]:
        await renew(self, leases, lease_seconds)  # still extends the leases really held
        return {lease.job_id for lease in leases}

    async def complete_unfenced(self: RedisJobQueue, lease: Any, result: Any) -> bool:
        if await complete(self, lease, result):
            return True
        keys = self._keys_of(lease.job.queue)
        await self._client.hset(
            keys.job(lease.job_id), mapping={"status": "succeeded", "result": encode_json(result)}
        )
        await self._client.zrem(keys.active, lease.job_id)
        _report(f"forced a refused completion of {lease.job_id} ({lease.token})")
        return True

    RedisJobQueue.renew = renew_ignoring_tokens  # type: ignore[method-assign]
    RedisJobQueue.complete = complete_unfenced  # type: ignore[method-assign]


try:
    _apply()
except Exception as exc:  # reported, so the test fails loudly instead of testing nothing
    _report(f"FAILED no_fencing: {type(exc).__name__}: {exc}")
else:
    _report("applied no_fencing")
