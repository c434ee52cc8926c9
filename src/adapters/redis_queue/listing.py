"""Listing jobs newest first from the per-status index zsets, with an opaque cursor.

Each index zset scores a job by the microsecond (Redis clock) it entered that status, so a
listing is ordered by (score, job id), both descending, merged over every (queue, status)
index the query covers. The cursor is the position of the last job a page returned.

Cost: K = (queues searched) x (statuses searched) zsets. Each chunk of candidates takes two
round trips: one pipeline reading at most `chunk` entries from each of the K zsets
(O(K log N + K chunk)), then one pipeline of HMGETs for the `chunk` best merged entries.
Without a type filter one chunk fills a page. With one, chunks repeat until the page fills
or `SCAN_LIMIT` candidates were examined; then the page may be short (even empty) and its
cursor goes on from where the scan stopped: follow `next_cursor` until it is None.

A job that changes status while a client pages moves to the front of the listing (it is the
newest in its new status), so older cursors do not see it again; within one page a job is
never listed twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol

import attrs
from redis.asyncio.client import Pipeline

from adapters.redis_queue.codec import FIELDS, RawFields
from adapters.redis_queue.keys import QueueKeys
from domain.jobs import Job, JobStatus, is_job_id
from domain.ports import JobPage, JobQuery

SCAN_LIMIT: Final = 2000  # candidates examined per call at most
# Entries of one index sharing one microsecond that paging past them handles (a claim
# moves at most its `limit` jobs to active in the same microsecond).
TIE_LIMIT: Final = 10_000

PipelineRunner = Callable[[Callable[[Pipeline], None]], Awaitable[list[Any]]]


class Decoder(Protocol):
    """A job from its FIELDS, given what its key says; None when there is none."""

    def __call__(self, raw: RawFields, *, job_id: str, queue_name: str) -> Job | None: ...


@attrs.frozen(order=True)
class Position:
    """Where a listing stands: index score (us), then job id."""

    score: int
    member: bytes

    def encode(self) -> str:
        return f"{self.score}-{self.member.decode()}"

    @classmethod
    def decode(cls, cursor: str | None) -> Position | None:
        score, _, member = (cursor or "").partition("-")
        if not score.isdigit() or not is_job_id(member):
            return None  # like the memory queue: an unreadable cursor starts over
        return cls(int(score), member.encode())


@attrs.frozen
class _Candidate:
    position: Position
    keys: QueueKeys
    status: JobStatus


async def list_jobs(
    query: JobQuery,
    *,
    queues: Sequence[QueueKeys],
    pipeline: PipelineRunner,
    decode: Decoder,
) -> JobPage:
    statuses = [query.status] if query.status is not None else list(JobStatus)
    sources = [(keys, status) for keys in queues for status in statuses]
    after = Position.decode(query.cursor)
    chunk = query.limit + 1 if query.type is None else max(query.limit + 1, 200)
    page: list[Job] = []
    seen: set[str] = set()
    last: Position | None = None
    scanned = 0
    while True:
        candidates = await _index_slice(pipeline, sources, after, chunk)
        jobs = await _load(pipeline, candidates, decode)
        for candidate, job in zip(candidates, jobs, strict=True):
            after = candidate.position
            if (
                job is None  # expired, or unreadable
                or job.status is not candidate.status  # moved since: listed under its new one
                or (query.type is not None and job.type != query.type)
                or job.id in seen
            ):
                continue
            if len(page) == query.limit:  # there is more: the next page starts here
                assert last is not None
                return JobPage(page, last.encode())
            page.append(job)
            seen.add(job.id)
            last = candidate.position
        scanned += len(candidates)
        if len(candidates) < chunk:
            return JobPage(page, None)
        if scanned >= SCAN_LIMIT:
            assert after is not None
            return JobPage(page, after.encode())


async def _index_slice(
    pipeline: PipelineRunner,
    sources: Sequence[tuple[QueueKeys, JobStatus]],
    after: Position | None,
    n: int,
) -> list[_Candidate]:
    """The `n` index entries after `after`, newest first, merged over `sources`."""

    def build(pipe: Pipeline) -> None:
        for keys, status in sources:
            key = keys.index(status)
            if after is None:
                pipe.zrevrangebyscore(key, "+inf", "-inf", start=0, num=n, withscores=True)
            else:  # the entries sharing the cursor's score, then the strictly older ones
                score = after.score
                pipe.zrevrangebyscore(key, score, score, start=0, num=TIE_LIMIT, withscores=True)
                pipe.zrevrangebyscore(key, f"({score}", "-inf", start=0, num=n, withscores=True)

    results = await pipeline(build)
    per_source = 1 if after is None else 2
    merged: list[_Candidate] = []
    for i, (keys, status) in enumerate(sources):
        for result in results[i * per_source : (i + 1) * per_source]:
            for member, score in result:
                position = Position(int(score), member)
                if after is None or position < after:
                    merged.append(_Candidate(position, keys, status))
    merged.sort(key=lambda c: c.position, reverse=True)
    return merged[:n]


async def _load(
    pipeline: PipelineRunner, candidates: Sequence[_Candidate], decode: Decoder
) -> list[Job | None]:
    if not candidates:
        return []

    ids = [c.position.member.decode() for c in candidates]

    def build(pipe: Pipeline) -> None:
        for c, job_id in zip(candidates, ids, strict=True):
            pipe.hmget(c.keys.job(job_id), FIELDS)

    return [
        decode(raw, job_id=job_id, queue_name=c.keys.name)
        for c, job_id, raw in zip(candidates, ids, await pipeline(build), strict=True)
    ]
