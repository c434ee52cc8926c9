"""A job's Redis hash in its two layouts (`adapters.redis_queue.codec`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import attrs
import pytest

from adapters.redis_queue.codec import FIELDS, UndecodableJobError, decode_job, encode_job
from domain.jobs import Job, JobStatus

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _job(**changes: Any) -> Job:
    job = Job.submitted(
        id="0123456789abcdef0123456789abcdef",
        type="email",
        payload={"to": "a@example.com"},
        queue="mail",
        max_attempts=3,
        timeout=30.0,
        now=NOW,
    )
    return attrs.evolve(job, **changes)


def _stored(args: list[str | bytes]) -> list[bytes | None]:
    """What HMGET of FIELDS answers for a hash written with `args`."""
    written = {
        str(args[i]): v if isinstance(v := args[i + 1], bytes) else v.encode()
        for i in range(0, len(args), 2)
    }
    return [written.get(name) for name in FIELDS]


def test_the_compact_layout_stores_neither_id_nor_queue_and_reads_them_from_the_key() -> None:
    job = _job()
    args = encode_job(job, compact=True)
    names = set(args[::2])
    assert {"id", "queue"}.isdisjoint(names)
    assert decode_job(_stored(args), job_id=job.id, queue_name="mail") == job


def test_a_compact_hash_read_without_its_key_is_reported_not_guessed() -> None:
    with pytest.raises(UndecodableJobError, match="a required field is missing"):
        decode_job(_stored(encode_job(_job(), compact=True)))


def test_the_full_layout_holds_everything_an_older_reader_requires() -> None:
    job = _job()
    args = encode_job(job)
    assert {"id", "type", "queue", "status", "payload", "max_attempts", "timeout"} <= set(args[::2])
    assert decode_job(_stored(args)) == job
    # The key's word never overrides what the hash says.
    assert decode_job(_stored(args), job_id="f" * 32, queue_name="other") == job


def test_a_priority_and_attempts_of_zero_are_not_stored_and_read_as_zero() -> None:
    plain = encode_job(_job())
    assert {"priority", "attempts"}.isdisjoint(plain[::2])
    assert decode_job(_stored(plain)) == _job()
    busy = _job(priority=5, attempts=2, status=JobStatus.QUEUED)
    args = encode_job(busy, compact=True)
    assert (args[args.index("priority") + 1], args[args.index("attempts") + 1]) == ("5", "2")
    assert decode_job(_stored(args), job_id=busy.id, queue_name="mail") == busy


def test_a_missing_hash_is_none_whatever_its_key_says() -> None:
    assert decode_job([None] * len(FIELDS), job_id="0" * 32, queue_name="mail") is None
