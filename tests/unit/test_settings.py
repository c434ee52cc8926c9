import pytest

from domain.limits import RateLimit, TypeLimits
from domain.ports import QueueLimits
from entrypoints.settings import LogFormat, QueueBackend, Settings, SettingsError


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.redis_url is None
    assert settings.queue_backend is QueueBackend.REDIS
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
    assert settings.queue_backend is QueueBackend.MEMORY
    assert settings.worker_queues == ("high", "default")
    assert settings.lease_seconds == 5.0
    assert settings.log_format is LogFormat.JSON


def test_what_callers_can_make_the_service_hold_is_bounded_by_default_and_settable() -> None:
    defaults = Settings.from_env({})
    assert (defaults.max_queues, defaults.max_waiters, defaults.max_result_bytes) == (
        1000,
        1000,
        1024 * 1024,
    )
    settings = Settings.from_env(
        {
            "CONVEYOR_MAX_QUEUES": "20000",
            "CONVEYOR_MAX_WAITERS": "0",
            "CONVEYOR_MAX_RESULT_BYTES": "4096",
        }
    )
    assert (settings.max_queues, settings.max_waiters, settings.max_result_bytes) == (
        20000,
        0,
        4096,
    )


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
        ("CONVEYOR_MAX_QUEUES", "0"),
        ("CONVEYOR_MAX_WAITERS", "-1"),
        ("CONVEYOR_MAX_RESULT_BYTES", "1MB"),
        ("CONVEYOR_METRICS_PORT", "0"),
        ("CONVEYOR_MIN_REPLICAS", "-1"),
        ("CONVEYOR_MIN_REPLICAS", "one"),
        ("CONVEYOR_REPLICA_TIMEOUT_MS", "0"),
        ("CONVEYOR_REPLICA_TIMEOUT_MS", "0.5"),
    ],
)
def test_a_bad_value_is_refused_with_the_variables_name(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_worker_metrics_are_off_unless_a_port_is_given() -> None:
    assert Settings.from_env({}).metrics_port is None
    assert Settings.from_env({"CONVEYOR_METRICS_PORT": ""}).metrics_port is None
    assert Settings.from_env({"CONVEYOR_METRICS_PORT": "9100"}).metrics_port == 9100


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
        "CONVEYOR_DUMMY_FAULTS",
        "CONVEYOR_WATCHDOG_SECONDS",
        "CONVEYOR_RATE_LIMITS",
        "CONVEYOR_CONCURRENCY_LIMITS",
        "CONVEYOR_SCHEDULES",
        "CONVEYOR_SCHEDULER",
        "CONVEYOR_MIN_REPLICAS",
        "CONVEYOR_REPLICA_TIMEOUT_MS",
    ]
    assert [n for n in names if n not in example] == []


def test_worker_queues_in_strict_order_or_by_weight() -> None:
    assert Settings.from_env({"CONVEYOR_WORKER_QUEUES": "a, b"}).worker_queues == ("a", "b")
    weighted = Settings.from_env({"CONVEYOR_WORKER_QUEUES": "a:3,b:1"})
    assert (weighted.worker_queues, weighted.worker_queue_weights) == (("a", "b"), (3, 1))
    for bad in ("a:3,b", "a,a", "A", "a:0", "a:x", " , "):
        with pytest.raises(SettingsError, match="CONVEYOR_WORKER_QUEUES"):
            Settings.from_env({"CONVEYOR_WORKER_QUEUES": bad})


def test_queue_limits_and_memory_watermark_make_an_admission_policy() -> None:
    settings = Settings.from_env(
        {
            "CONVEYOR_QUEUE_LIMITS": '{"*": {"max_depth": 100}, "report": {"max_age": 30}}',
            "CONVEYOR_ADMIT_MAX_MEMORY_BYTES": "1000000",
        }
    )
    policy = settings.admission
    assert policy.enabled
    assert policy.limits("email") == QueueLimits(max_depth=100)
    assert policy.limits("report") == QueueLimits(max_age=30.0)
    assert policy.max_memory == 1_000_000
    assert not Settings.from_env({}).admission.enabled
    for bad in ("[]", '{"report": 3}', '{"report": {"max_depth": -1}}', '{"X": {}}', "{"):
        with pytest.raises(SettingsError, match="CONVEYOR_QUEUE_LIMITS"):
            Settings.from_env({"CONVEYOR_QUEUE_LIMITS": bad})


def test_admission_limits_on_rq_stop_start_up_with_a_message() -> None:
    with pytest.raises(SettingsError, match="QUEUE_BACKEND=rq"):
        Settings.from_env(
            {"QUEUE_BACKEND": "rq", "CONVEYOR_QUEUE_LIMITS": '{"*": {"max_depth": 10}}'}
        )


@pytest.mark.parametrize(
    ("raw", "on"), [("1", True), ("true", True), ("ON", True), ("0", False), ("no", False)]
)
def test_dummy_fault_modes_are_off_unless_the_setting_turns_them_on(raw: str, on: bool) -> None:
    assert Settings.from_env({}).dummy_faults is False
    assert Settings().dummy_faults is False
    assert Settings.from_env({"CONVEYOR_DUMMY_FAULTS": raw}).dummy_faults is on


def test_a_dummy_faults_value_that_is_not_a_flag_is_refused() -> None:
    with pytest.raises(SettingsError, match="CONVEYOR_DUMMY_FAULTS"):
        Settings.from_env({"CONVEYOR_DUMMY_FAULTS": "maybe"})


def test_the_watchdog_waits_one_lease_unless_told_otherwise() -> None:
    assert Settings.from_env({"CONVEYOR_LEASE_SECONDS": "12"}).watchdog == 12.0
    assert Settings.from_env({"CONVEYOR_WATCHDOG_SECONDS": "7"}).watchdog == 7.0
    assert Settings.from_env({"CONVEYOR_WATCHDOG_SECONDS": "0"}).watchdog == 0.0
    with pytest.raises(SettingsError, match="CONVEYOR_WATCHDOG_SECONDS"):
        Settings.from_env({"CONVEYOR_WATCHDOG_SECONDS": "-1"})


def test_tracebacks_are_hidden_from_clients_unless_exposed() -> None:
    assert Settings.from_env({}).expose_tracebacks is False
    assert Settings.from_env({"CONVEYOR_EXPOSE_TRACEBACKS": "1"}).expose_tracebacks is True
    assert Settings.from_env({"CONVEYOR_EXPOSE_TRACEBACKS": "0"}).expose_tracebacks is False
    with pytest.raises(SettingsError, match="CONVEYOR_EXPOSE_TRACEBACKS"):
        Settings.from_env({"CONVEYOR_EXPOSE_TRACEBACKS": "maybe"})


def test_the_settings_clients_meet_are_documented_in_env_example() -> None:
    from pathlib import Path

    example = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    assert "CONVEYOR_EXPOSE_TRACEBACKS=0" in example
    assert "CONVEYOR_ALLOWED_ORIGINS=" in example


def test_allowed_origins_are_read_as_browsers_send_them() -> None:
    assert Settings.from_env({}).allowed_origins == frozenset()
    settings = Settings.from_env(
        {"CONVEYOR_ALLOWED_ORIGINS": "https://Jobs.Example.com:443, http://localhost:3000"}
    )
    assert settings.allowed_origins == {"https://jobs.example.com", "http://localhost:3000"}


@pytest.mark.parametrize(
    "value", ["*", "null", "jobs.example.com", "ftp://x", "https://x/path", "https://u:p@x"]
)
def test_anything_but_a_list_of_origins_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="CONVEYOR_ALLOWED_ORIGINS"):
        Settings.from_env({"CONVEYOR_ALLOWED_ORIGINS": value})


def test_rate_and_concurrency_limits_per_job_type_are_read_into_flow_limits() -> None:
    settings = Settings.from_env(
        {
            "CONVEYOR_RATE_LIMITS": '{"email": "10/s", "report": "5/2s"}',
            "CONVEYOR_CONCURRENCY_LIMITS": '{"report": 2}',
        }
    )
    limits = settings.flow_limits
    assert limits.get("email") == TypeLimits(RateLimit(10, 1.0), None)
    assert limits.get("report") == TypeLimits(RateLimit(5, 2.0), 2)
    assert limits.get("dummy") is None
    assert not Settings.from_env({}).flow_limits


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CONVEYOR_RATE_LIMITS", '{"email": "fast"}'),
        ("CONVEYOR_RATE_LIMITS", '{"email": "0/s"}'),
        ("CONVEYOR_RATE_LIMITS", '{"email": 10}'),
        ("CONVEYOR_RATE_LIMITS", '{"fax": "1/s"}'),
        ("CONVEYOR_RATE_LIMITS", '["email"]'),
        ("CONVEYOR_CONCURRENCY_LIMITS", '{"report": 0}'),
        ("CONVEYOR_CONCURRENCY_LIMITS", '{"report": -2}'),
        ("CONVEYOR_CONCURRENCY_LIMITS", '{"report": "2"}'),
        ("CONVEYOR_CONCURRENCY_LIMITS", '{"report": true}'),
        ("CONVEYOR_CONCURRENCY_LIMITS", '{"nope": 2}'),
        ("CONVEYOR_CONCURRENCY_LIMITS", "{"),
    ],
)
def test_a_bad_flow_limit_stops_start_up_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_flow_limits_on_rq_stop_start_up_with_a_message() -> None:
    with pytest.raises(SettingsError, match="QUEUE_BACKEND=rq"):
        Settings.from_env(
            {
                "QUEUE_BACKEND": "rq",
                "REDIS_URL": "redis://x",
                "CONVEYOR_CONCURRENCY_LIMITS": '{"report": 2}',
            }
        )


def test_replica_confirmation_is_off_by_default_and_settable() -> None:
    defaults = Settings.from_env({})
    assert (defaults.min_replicas, defaults.replica_timeout_ms) == (0, 500)
    settings = Settings.from_env(
        {"CONVEYOR_MIN_REPLICAS": "2", "CONVEYOR_REPLICA_TIMEOUT_MS": "250"}
    )
    assert (settings.min_replicas, settings.replica_timeout_ms) == (2, 250)


@pytest.mark.parametrize("backend", ["rq", "memory"])
def test_min_replicas_on_a_backend_without_wait_stops_start_up_with_a_message(
    backend: str,
) -> None:
    with pytest.raises(SettingsError, match="CONVEYOR_MIN_REPLICAS=1 needs QUEUE_BACKEND=redis"):
        Settings.from_env({"QUEUE_BACKEND": backend, "CONVEYOR_MIN_REPLICAS": "1"})
    assert Settings.from_env({"QUEUE_BACKEND": backend, "CONVEYOR_MIN_REPLICAS": "0"})


def test_a_replica_timeout_the_api_would_not_wait_for_stops_start_up() -> None:
    with pytest.raises(SettingsError, match="CONVEYOR_REPLICA_TIMEOUT_MS=1000 must be shorter"):
        Settings.from_env({"CONVEYOR_MIN_REPLICAS": "1", "CONVEYOR_REPLICA_TIMEOUT_MS": "1000"})
    # Off, the timeout is not used, so nothing to refuse.
    assert Settings.from_env({"CONVEYOR_REPLICA_TIMEOUT_MS": "1000"}).min_replicas == 0
    raised = Settings.from_env(
        {
            "CONVEYOR_MIN_REPLICAS": "1",
            "CONVEYOR_REPLICA_TIMEOUT_MS": "1000",
            "CONVEYOR_REDIS_TIMEOUT": "2",
        }
    )
    assert raised.replica_timeout_ms == 1000
