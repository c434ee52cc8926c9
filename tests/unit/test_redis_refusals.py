"""Which Redis failures are outages (503 + Retry-After, a worker backs off) and which are not:
the errors are built by redis-py's own reply parser from the replies a server sends."""

from __future__ import annotations

import pytest
from redis._parsers.base import BaseParser
from redis.exceptions import ClusterError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from adapters.redis_client import redis_errors, unavailable
from domain.errors import QueueUnavailableError


def parsed(text: str) -> RedisError:
    """The exception redis-py raises for the error reply `-<text>`."""
    error = BaseParser.parse_error(text)  # type: ignore[no-untyped-call]
    assert isinstance(error, RedisError)
    return error


def reply(text: str) -> ResponseError:
    error = parsed(text)
    assert isinstance(error, ResponseError)
    return error


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("OOM command not allowed when used memory > 'maxmemory'.", "out of memory"),
        (
            "OOM command not allowed when used memory > 'maxmemory'. script: 9f3c, "
            "on @user_script:246.",
            "out of memory",
        ),
        (
            "ERR Error running script (call to f_9f3c): @user_script:246: -OOM command not "
            "allowed when used memory > 'maxmemory'.",
            "out of memory",
        ),
        ("READONLY You can't write against a read only replica.", "read-only replica"),
        ("BUSY Redis is busy running a script. You can only call SCRIPT KILL.", "busy"),
        ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is no", "primary"),
        ("MISCONF Redis is configured to save RDB snapshots, but it's unable to", "persist"),
        ("NOREPLICAS Not enough good replicas to write.", "replicas"),
        ("LOADING Redis is loading the dataset in memory", "loading"),
        ("TRYAGAIN Multiple keys request during rehashing of slot", "moving"),
        ("CLUSTERDOWN The cluster is down", "cluster is down"),
    ],
)
def test_a_servers_passing_refusal_is_an_outage_with_a_reason(text: str, reason: str) -> None:
    mapped = unavailable(parsed(text))
    assert mapped is not None, text
    assert reason in mapped.reason
    assert mapped.retry_after >= 1


def test_a_full_redis_asks_callers_to_wait_longer_than_a_blip() -> None:
    mapped = unavailable(reply("OOM command not allowed when used memory > 'maxmemory'."))
    assert mapped is not None
    assert mapped.retry_after == 5.0


@pytest.mark.parametrize(
    "text",
    [
        "ERR user_script:12: Script attempted to access nonexistent global variable 'x'",
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        "NOSCRIPT No matching script. Please use EVAL.",
        "NOPERM this user has no permissions to run the 'evalsha' command",
        "ERR unknown command 'FOO'",
    ],
)
def test_errors_that_waiting_cannot_cure_are_not_outages(text: str) -> None:
    assert unavailable(parsed(text)) is None


def test_an_unreachable_or_silent_server_is_an_outage() -> None:
    assert unavailable(RedisConnectionError("Error 111 connecting")) is not None
    assert unavailable(RedisTimeoutError("Timeout reading from socket")) is not None
    assert unavailable(ConnectionRefusedError()) is not None


def test_a_cluster_command_that_spent_its_redirections_is_an_outage_it_never_ran_in() -> None:
    # redis-py's cluster client gives up so after MOVED, ASK or TRYAGAIN replies (a slot
    # moving): the command did not run, so the caller may try again.
    with pytest.raises(QueueUnavailableError), redis_errors():
        raise ClusterError("TTL exhausted.")
    assert unavailable(ClusterError("something else")) is None


def test_the_redis_errors_context_raises_an_outage_in_domain_terms() -> None:
    with pytest.raises(QueueUnavailableError) as raised, redis_errors():
        raise reply("OOM command not allowed when used memory > 'maxmemory'.")
    assert isinstance(raised.value.__cause__, ResponseError)


def test_the_redis_errors_context_lets_a_bug_through_unchanged() -> None:
    bug = reply("ERR user_script:1: attempt to compare nil with number")
    with pytest.raises(ResponseError) as raised, redis_errors():
        raise bug
    assert raised.value is bug


def test_a_write_uvloop_refuses_on_a_closed_connection_is_an_outage() -> None:
    closed = RuntimeError(
        "unable to perform operation on <TCPTransport closed=True reading=False 0x55d0>; "
        "the handler is closed"
    )
    with pytest.raises(QueueUnavailableError) as raised, redis_errors():
        raise closed
    assert raised.value.__cause__ is closed
    assert unavailable(RuntimeError("Event loop is closed")) is None


def test_the_redis_errors_context_lets_another_runtime_error_through_unchanged() -> None:
    bug = RuntimeError("this event loop is already running")
    with pytest.raises(RuntimeError) as raised, redis_errors():
        raise bug
    assert raised.value is bug
