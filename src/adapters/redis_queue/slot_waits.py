"""Waiting claims on Redis Cluster, where BLPOP takes the keys of one hash slot only."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from redis.crc import key_slot

from adapters.redis_queue.keys import QueueKeys


class SlotWaits:
    """One BLPOP per hash slot of a claim's queues, each with a stop list of its own."""

    def __init__(self, client: Any, kept: int) -> None:
        self._client = client
        self._kept = kept  # worker and queue sets remembered, at most
        self._cache: dict[tuple[str, frozenset[str]], list[tuple[list[str], str]]] = {}

    async def wait(
        self,
        worker_id: str,
        queues: Sequence[str],
        keys: Sequence[QueueKeys],
        block: float,
        stop: str,
    ) -> Any:
        """One BLPOP per slot of the queues, all at once, until the first one answers; the
        others are cancelled (redis-py drops their connections). Answers what the first
        popped, `stop` (the stop list's name for the queues as a whole) if it was a stop."""
        waits = [
            asyncio.ensure_future(self._client.blpop([*markers, own_stop], timeout=block))
            for markers, own_stop in self.groups(worker_id, queues, keys)
        ]
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        answers = [wait.result() for wait in done if wait.exception() is None]
        errors = [wait.exception() for wait in done if wait.exception() is not None]
        if errors and not any(answers):
            raise errors[0]
        popped = [answer for answer in answers if answer is not None]
        stopped = b":stop:" + worker_id.encode()
        if any(key.endswith(stopped) for key, _ in popped if isinstance(key, bytes)):
            return stop.encode(), b"1"
        return popped[0] if popped else None

    def groups(
        self, worker_id: str, queues: Sequence[str], keys: Sequence[QueueKeys]
    ) -> list[tuple[list[str], str]]:
        """The markers of `queues` by hash slot, each group with its stop list (under the
        tag of the group's first queue by name); remembered per worker and set of queues."""
        group = (worker_id, frozenset(queues))
        found = self._cache.get(group)
        if found is None:
            by_slot: dict[int, list[tuple[str, QueueKeys]]] = defaultdict(list)
            for queue, queue_keys in zip(queues, keys, strict=True):
                by_slot[key_slot(queue_keys.marker.encode())].append((queue, queue_keys))
            found = [
                ([k.marker for _, k in members], f"{min(members)[1].base}stop:{worker_id}")
                for members in by_slot.values()
            ]
            if len(self._cache) >= self._kept:
                self._cache.clear()
            self._cache[group] = found
        return found
