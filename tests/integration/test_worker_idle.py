"""An idle worker process keeps quiet: what it asks Redis while its queue is empty.

Counted with MONITOR, over this test's own key prefix only (other tests may share the
server), by command, including those run inside Lua scripts (Redis counts those too). The
bounds are generous (about twice what the worker makes): they catch a timer that starts
polling, not a slow machine.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from adapters.redis_client import create_redis
from tests.integration.processes import Conveyor, service_env

SETTLE = 2.0  # start-up left out
WINDOW = 4.0  # seconds counted


async def _commands_under(redis_url: str, prefix: str, seconds: float) -> Counter[str]:
    client = create_redis(redis_url, connect_timeout=2.0, socket_timeout=seconds + 5.0)
    seen: Counter[str] = Counter()
    try:
        async with client.monitor() as monitor:
            until = time.monotonic() + seconds
            while (left := until - time.monotonic()) > 0:
                try:
                    entry = await asyncio.wait_for(monitor.next_command(), left)
                except TimeoutError:
                    break
                if prefix in entry["command"]:
                    seen[entry["command"].split(" ", 1)[0].upper()] += 1
    finally:
        await client.aclose()
    return seen


def test_an_idle_worker_process_makes_few_redis_commands(redis_url: str, tmp_path: Path) -> None:
    env = service_env(redis_url)
    prefix = env["CONVEYOR_KEY_PREFIX"]
    with Conveyor(["worker", "--processes", "1"], env, tmp_path) as worker:
        time.sleep(SETTLE)
        seen = asyncio.run(_commands_under(redis_url, prefix, WINDOW))
        assert worker.stop() == 0, worker.output()[-3000:]
    per_second = {command: count / WINDOW for command, count in seen.items()}
    total = sum(per_second.values())
    # Today: one claim and one blocking wait a second, a heartbeat every 2 s, a recovery
    # every 10 s (claims do its work meanwhile): about 19 commands a second, 2.6 scripts.
    assert per_second.get("EVALSHA", 0) <= 5, per_second
    assert per_second.get("BLPOP", 0) <= 2, per_second
    assert total <= 30, per_second
