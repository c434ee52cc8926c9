"""Storing new jobs in Redis: all or nothing, with idempotency keys and admission limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import attrs

from adapters.redis_client import redis_errors
from adapters.redis_cluster import is_cluster
from adapters.redis_queue import submission
from adapters.redis_queue.core import RedisCore, Unconfirmed
from adapters.redis_queue.submission import Item
from domain.errors import (
    DomainError,
    IdempotencyConflictError,
    NotReplicatedError,
    PartialSubmissionError,
)
from domain.ports import JobSubmitter, NewJob, Submitted, SubmitTraits


class RedisJobSubmitter(JobSubmitter):
    """One SUBMIT script run stores the submissions of one event-loop tick (see
    `submission.py`), with admission checked in the same script that stores the jobs. The
    queues of that tick that this process has not registered lately are first admitted by
    the registry (the most queues, see `registry.py`).

    Memory admission reads ``used_memory`` from INFO inside the submitting script, so the
    check and the write are one atomic step; a server that refuses INFO to scripts
    (fakeredis does, an ACL may) cannot be checked, and a policy with `max_memory` then
    refuses every new job rather than admit it unchecked (`Connection.verify` warns of it).

    With `min_replicas` set on the core, a submission is answered once that many replicas
    confirmed the round trip that stored it, or raises NotReplicatedError. A repeat under an
    idempotency key waits too: the REGISTER call that follows every SUBMIT in the round
    trip writes, so its WAIT covers the first request's write as well.

    On Redis Cluster a submission spanning queues is stored queue by queue, each queue's
    part all or nothing (`_submit_per_queue`); with `min_replicas`, every primary written
    confirms its part with a WAIT of its own (see `core.py`).
    """

    traits = SubmitTraits(deadlines=True, priorities=True, unique_keys=True)

    def __init__(self, core: RedisCore) -> None:
        self._core = core
        self._cluster = is_cluster(core.client)
        if self._cluster:
            self.traits = attrs.evolve(self.traits, atomic_across_queues=False)

    async def submit(self, jobs: Sequence[NewJob]) -> Sequence[Submitted]:
        if not jobs:
            return []
        core = self._core
        legacy_keys = time.time() < core.legacy_idempotency_until
        items = submission.items_of(
            jobs,
            prefix=core.prefix,
            keys_of=core.keys,
            legacy_keys=legacy_keys,
            compact=core.compact_jobs,
        )
        group = submission.group_of(items)
        if self._cluster and group == submission.SHARED_GROUP:
            return await self._submit_per_queue(items)
        with redis_errors():
            answer = await core.submit(items, group)
        if isinstance(answer, Unconfirmed):
            # A refusal stored nothing and says so; anything else may be stored.
            submission.answer_of(answer.answer, items, core.admission)
            raise answer.error()
        return submission.answer_of(answer, items, core.admission)

    async def _submit_per_queue(self, items: Sequence[Item]) -> Sequence[Submitted]:
        """Each queue's part of the submission on its own (a script's keys are in one slot),
        all sent in one round trip. Raises what refused the parts when every part was
        refused the same way (nothing was stored), PartialSubmissionError when only some
        were stored."""
        places: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            places.setdefault(item.queue, []).append(index)
        # The queues it opens are admitted together first (whole or not at all, as on one
        # server): the parts then find them registered.
        registry = self._core.registry
        with redis_errors():
            if await registry.admit([list(places)]):
                raise registry.refusal(registry.first_new(items))
        parts = [[items[i] for i in indexes] for indexes in places.values()]
        answers = await asyncio.gather(
            *(self._submit_part(part) for part in parts), return_exceptions=True
        )
        # The parts of one tick share a round trip and its one count of replicas (the least
        # over its primaries): one unconfirmed part is the whole batch's answer. Every part
        # may be stored; a retry under the same keys stores none twice.
        unconfirmed = [a for a in answers if isinstance(a, NotReplicatedError)]
        if unconfirmed:
            raise unconfirmed[0]
        submitted: list[Submitted | None] = [None] * len(items)
        errors: list[DomainError | None] = [None] * len(items)
        for indexes, answer in zip(places.values(), answers, strict=True):
            if isinstance(answer, IdempotencyConflictError) and answer.index is not None:
                answer = IdempotencyConflictError(answer.key, indexes[answer.index])
            if isinstance(answer, BaseException):
                if not isinstance(answer, DomainError):
                    raise answer
                for index in indexes:
                    errors[index] = answer
                continue
            for index, one in zip(indexes, answer, strict=True):
                submitted[index] = one
        if all(error is None for error in errors):
            return [one for one in submitted if one is not None]
        if all(one is None for one in submitted):
            raise next(error for error in errors if error is not None)
        raise PartialSubmissionError([None if s is None else s.job_id for s in submitted], errors)

    async def _submit_part(self, part: Sequence[Item]) -> Any:
        core = self._core
        with redis_errors():
            answer = await core.submit(part, part[0].queue)
        if isinstance(answer, Unconfirmed):
            submission.answer_of(answer.answer, part, core.admission)  # raises a refusal
            raise answer.error()
        return submission.answer_of(answer, part, core.admission)
