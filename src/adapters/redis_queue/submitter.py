"""Storing new jobs in Redis: all or nothing, with idempotency keys and admission limits."""

from __future__ import annotations

from collections.abc import Sequence

from adapters.redis_client import redis_errors
from adapters.redis_queue import submission
from adapters.redis_queue.core import RedisCore, Unconfirmed
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
    """

    traits = SubmitTraits(deadlines=True, priorities=True, unique_keys=True)

    def __init__(self, core: RedisCore) -> None:
        self._core = core

    async def submit(self, jobs: Sequence[NewJob]) -> Sequence[Submitted]:
        if not jobs:
            return []
        core = self._core
        items = submission.items_of(jobs, prefix=core.prefix, keys_of=core.keys)
        with redis_errors():
            answer = await core.submit(items, submission.group_of(items))
        if isinstance(answer, Unconfirmed):
            # A refusal stored nothing and says so; anything else may be stored.
            submission.answer_of(answer.answer, items, core.admission)
            raise answer.error()
        return submission.answer_of(answer, items, core.admission)
