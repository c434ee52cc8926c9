"""Reading a Sentinel URL: where the Sentinels are, which service, which credentials."""

from __future__ import annotations

import pytest

from adapters.redis_sentinel import DEFAULT_PORT, SentinelTarget, parse_sentinel_url
from entrypoints.settings import Settings, SettingsError


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database() -> None:
    target = parse_sentinel_url("redis+sentinel://10.0.0.1:26380,sentinel-b,[::1]:26381/jobs/3")
    assert target == SentinelTarget(
        sentinels=(("10.0.0.1", 26380), ("sentinel-b", DEFAULT_PORT), ("::1", 26381)),
        service="jobs",
        db=3,
    )


def test_the_data_nodes_and_the_sentinels_have_their_own_credentials() -> None:
    target = parse_sentinel_url(
        "redis+sentinel://app:p%40ss@h:1/jobs?sentinel_username=mon&sentinel_password=s%3Ac"
    )
    assert (target.username, target.password) == ("app", "p@ss")
    assert (target.sentinel_username, target.sentinel_password) == ("mon", "s:c")
    assert parse_sentinel_url("redis+sentinel://:only@h/jobs").username is None
    assert "p@ss" not in repr(target)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h:1", "names the service"),
        ("redis+sentinel://h:1/", "names the service"),
        ("redis+sentinel://h:1/jobs/zero", "/<service>/<db number>"),
        ("redis+sentinel://h:1/jobs/0/x", "/<service>/<db number>"),
        ("redis+sentinel://h:port/jobs", "port must be a number"),
        ("redis+sentinel://h:0/jobs", "port must be a number"),
        ("redis+sentinel://h:1,,h:2/jobs", "host\\[:port\\] pairs"),
        ("redis+sentinel://h/jobs?password=x", "takes only sentinel_password"),
        ("redis://h/0", "starts with redis\\+sentinel://"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_with_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_sentinel_url(url)


def test_settings_refuse_a_malformed_sentinel_url_without_its_password() -> None:
    with pytest.raises(SettingsError, match="REDIS_URL") as refused:
        Settings.from_env({"REDIS_URL": "redis+sentinel://:hunter2hunter2@h:x/jobs"})
    assert "hunter2hunter2" not in str(refused.value)
    url = "redis+sentinel://:hunter2hunter2@h:1,h:2/jobs"
    assert Settings.from_env({"REDIS_URL": url}).redis_url == url
    assert "hunter2hunter2" not in repr(Settings.from_env({"REDIS_URL": url}))


def test_the_rq_backend_refuses_sentinels_it_could_not_follow() -> None:
    with pytest.raises(SettingsError, match="only the native backend follows a failover"):
        Settings.from_env({"REDIS_URL": "redis+sentinel://h/jobs", "QUEUE_BACKEND": "rq"})


def test_a_bracketed_ipv6_sentinel_without_a_port_gets_the_default_one() -> None:
    assert parse_sentinel_url("redis+sentinel://[::1]/jobs").sentinels == (("::1", DEFAULT_PORT),)
