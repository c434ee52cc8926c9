import pytest

from entrypoints.settings import Backend, LogFormat, Settings, SettingsError


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.redis_url is None
    assert settings.queue_backend is Backend.REDIS
    assert settings.max_body_bytes == 256 * 1024


def test_values_are_read_and_parsed() -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://:secret@127.0.0.1:6390/2",
            "QUEUE_BACKEND": "memory",
            "CONVEYOR_WORKER_QUEUES": "high, default",
            "CONVEYOR_LEASE_SECONDS": "5",
            "LOG_FORMAT": "json",
        }
    )
    assert settings.queue_backend is Backend.MEMORY
    assert settings.worker_queues == ("high", "default")
    assert settings.lease_seconds == 5.0
    assert settings.log_format is LogFormat.JSON


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("QUEUE_BACKEND", "kafka"),
        ("CONVEYOR_LEASE_SECONDS", "-1"),
        ("CONVEYOR_WORKER_CONCURRENCY", "many"),
        ("CONVEYOR_API_PORT", "70000"),
        ("CONVEYOR_KEY_PREFIX", "a{b}"),
        ("LOG_LEVEL", "LOUD"),
        ("CONVEYOR_WORKER_QUEUES", " , "),
    ],
)
def test_a_bad_value_is_refused_with_the_variables_name(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_a_missing_redis_url_is_explained() -> None:
    with pytest.raises(SettingsError, match="REDIS_URL is not set"):
        Settings.from_env({}).require_redis_url()


def test_every_setting_is_documented_in_env_example() -> None:
    from pathlib import Path

    example = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    names = [
        "REDIS_URL",
        "QUEUE_BACKEND",
        "CONVEYOR_KEY_PREFIX",
        "CONVEYOR_LEASE_SECONDS",
        "CONVEYOR_WORKER_CONCURRENCY",
        "CONVEYOR_WORKER_QUEUES",
        "CONVEYOR_CLAIM_BATCH",
        "CONVEYOR_MAX_BODY_BYTES",
        "CONVEYOR_REDIS_TIMEOUT",
        "CONVEYOR_RESULT_TTL_SECONDS",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "CONVEYOR_API_HOST",
        "CONVEYOR_API_PORT",
    ]
    assert [n for n in names if n not in example] == []
