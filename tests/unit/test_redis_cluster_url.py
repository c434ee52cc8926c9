"""Reading a cluster URL, and what settings refuse with one."""

from __future__ import annotations

import asyncio

import pytest

from adapters.redis_client import create_redis
from adapters.redis_cluster import DEFAULT_PORT, ClusterTarget, is_cluster, parse_cluster_url
from entrypoints.redaction import redact_url
from entrypoints.settings import Settings, SettingsError


def test_a_cluster_url_lists_some_of_its_nodes() -> None:
    target = parse_cluster_url("redis+cluster://10.0.0.1:7001,node-b,[::1]:7003")
    assert target == ClusterTarget(
        nodes=(("10.0.0.1", 7001), ("node-b", DEFAULT_PORT), ("::1", 7003))
    )
    assert parse_cluster_url("REDIS+CLUSTER://h:1/").nodes == (("h", 1),)


def test_a_cluster_url_carries_the_nodes_credential_and_never_shows_it() -> None:
    target = parse_cluster_url("redis+cluster://app:p%40ss@h:1,h:2")
    assert (target.username, target.password) == ("app", "p@ss")
    assert parse_cluster_url("redis+cluster://:only@h:1").username is None
    assert "p@ss" not in repr(target)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://", "host\\[:port\\] pairs"),
        ("redis+cluster://h:1,,h:2", "host\\[:port\\] pairs"),
        ("redis+cluster://h:port", "port must be a number"),
        ("redis+cluster://h:70000", "port must be a number"),
        ("redis+cluster://h:1/3", "names no database"),
        ("redis+cluster://h:1?password=x", "takes no parameters"),
        ("redis://h/0", "starts with redis\\+cluster://"),
    ],
)
def test_a_malformed_cluster_url_is_refused_with_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_cluster_url(url)


def test_settings_refuse_a_malformed_cluster_url_without_its_password() -> None:
    with pytest.raises(SettingsError, match="REDIS_URL") as refused:
        Settings.from_env({"REDIS_URL": "redis+cluster://:hunter2hunter2@h:x,h:2"})
    assert "hunter2hunter2" not in str(refused.value)
    assert str(refused.value).count("\n") == 0
    url = "redis+cluster://u:hunter2hunter2@h1:7001,h2:7002"
    assert Settings.from_env({"REDIS_URL": url}).redis_url == url
    assert "hunter2hunter2" not in repr(Settings.from_env({"REDIS_URL": url}))
    assert redact_url(url) == "redis+cluster://***:***@h1:7001,h2:7002"


def test_the_rq_backend_refuses_a_cluster() -> None:
    with pytest.raises(SettingsError, match="only the native backend spreads queues"):
        Settings.from_env({"REDIS_URL": "redis+cluster://h:1", "QUEUE_BACKEND": "rq"})


@pytest.mark.parametrize("variable", ["CONVEYOR_RATE_LIMITS", "CONVEYOR_CONCURRENCY_LIMITS"])
def test_flow_limits_are_taken_with_a_cluster_as_with_one_server(variable: str) -> None:
    value = '{"email": "10/s"}' if variable == "CONVEYOR_RATE_LIMITS" else '{"email": 2}'
    env = {"REDIS_URL": "redis+cluster://h:1", variable: value}
    on_cluster = Settings.from_env(env).flow_limits
    assert on_cluster
    assert on_cluster == Settings.from_env({**env, "REDIS_URL": "redis://h:1/0"}).flow_limits


def test_a_cluster_url_makes_a_cluster_client_that_connects_on_first_use() -> None:
    async def make() -> tuple[bool, bool]:
        cluster = create_redis("redis+cluster://127.0.0.1:1", connect_timeout=0.1, socket_timeout=1)
        single = create_redis("redis://127.0.0.1:1/0", connect_timeout=0.1, socket_timeout=1)
        try:
            return is_cluster(cluster), is_cluster(single)
        finally:
            await cluster.aclose()
            await single.aclose()

    assert asyncio.run(make()) == (True, False)


def test_replica_confirmation_is_taken_with_a_cluster() -> None:
    # Each primary a round trip writes to confirms its own part (adapters.redis_cluster_pipeline).
    env = {"REDIS_URL": "redis+cluster://h:1", "CONVEYOR_MIN_REPLICAS": "1"}
    assert Settings.from_env(env).min_replicas == 1
