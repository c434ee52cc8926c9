import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from domain.errors import InvalidJobError, NonRetryableError, UnknownJobTypeError
from domain.job_types import JobContext, JobTypeRegistry
from domain.job_types.registry import default_registry
from tests.fakes import RecordingEmailSender

T = TypeVar("T")


class ImmediateContext(JobContext):
    def __init__(self, attempt: int = 1) -> None:
        self._attempt = attempt
        self.progress: list[int] = []

    @property
    def job_id(self) -> str:
        return "0" * 32

    @property
    def attempt(self) -> int:
        return self._attempt

    def report_progress(self, percent: int) -> None:
        self.progress.append(percent)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)


@pytest.fixture
def sender() -> RecordingEmailSender:
    return RecordingEmailSender()


@pytest.fixture
def registry(sender: RecordingEmailSender) -> JobTypeRegistry:
    return default_registry(sender, dummy_faults=True)


def run(
    registry: JobTypeRegistry, name: str, payload: dict[str, Any], ctx: JobContext | None = None
) -> Any:
    job_type = registry.resolve(name)
    clean = job_type.schema.validate(payload)

    async def handle() -> Any:
        return await job_type.handler(clean, ctx or ImmediateContext())

    return asyncio.run(handle())


def errors_of(registry: JobTypeRegistry, name: str, payload: object) -> dict[str, str]:
    with pytest.raises(InvalidJobError) as caught:
        registry.resolve(name).schema.validate(payload)
    return {e.path: e.message for e in caught.value.errors}


def test_registry_knows_exactly_the_three_job_types(registry: JobTypeRegistry) -> None:
    assert sorted(registry) == ["dummy", "email", "report"]


@pytest.mark.parametrize(
    "name", ["os.system", "builtins.eval", "__import__", "../x", "EMAIL", "\u0435mail", "", 3, None]
)
def test_anything_but_a_registered_name_is_an_unknown_type(
    registry: JobTypeRegistry, name: object
) -> None:
    with pytest.raises(UnknownJobTypeError):
        registry.resolve(name)


def test_email_sends_through_the_port(
    registry: JobTypeRegistry, sender: RecordingEmailSender
) -> None:
    result = run(registry, "email", {"to": "user@example.com", "subject": "Hi", "body": "Hello"})
    assert result == {"message_id": "msg-1"}
    assert [m.to for m in sender.sent] == ["user@example.com"]


def test_email_reports_every_bad_field_at_once(registry: JobTypeRegistry) -> None:
    errors = errors_of(registry, "email", {"to": "not-an-address", "subject": 3, "cc": "x"})
    assert set(errors) == {"payload.to", "payload.subject", "payload.body", "payload.cc"}
    assert errors["payload.body"] == "field required"
    assert errors["payload.cc"] == "unknown field"


def test_report_reports_progress_up_to_100_and_summarises(registry: JobTypeRegistry) -> None:
    ctx = ImmediateContext()
    result = run(registry, "report", {"name": "q3", "rows": 1000, "seconds": 0.5}, ctx)
    assert ctx.progress[0] == 0
    assert ctx.progress[-1] == 100
    assert ctx.progress == sorted(ctx.progress)
    assert result["rows"] == 1000
    assert len(result["checksum"]) == 16


def test_report_defaults_to_two_seconds(registry: JobTypeRegistry) -> None:
    assert registry.resolve("report").schema.validate({"name": "x", "rows": 1})["seconds"] == 2.0


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"name": "x", "rows": -1}, "payload.rows"),
        ({"name": "x", "rows": True}, "payload.rows"),
        ({"name": "x", "rows": 1.5}, "payload.rows"),
        ({"name": "x", "rows": 10**400}, "payload.rows"),
        ({"name": "x", "rows": 1, "seconds": 3601}, "payload.seconds"),
        ({"name": "x", "rows": 1, "seconds": float("nan")}, "payload.seconds"),
        ({"name": "", "rows": 1}, "payload.name"),
    ],
)
def test_report_rejects_out_of_range_values(
    registry: JobTypeRegistry, payload: dict[str, Any], path: str
) -> None:
    assert path in errors_of(registry, "report", payload)


def test_dummy_succeed_echoes_the_result(registry: JobTypeRegistry) -> None:
    assert run(registry, "dummy", {"mode": "succeed", "result": {"a": [1]}}) == {"a": [1]}


def test_dummy_fail_times_fails_the_first_attempts_then_succeeds(registry: JobTypeRegistry) -> None:
    for attempt in (1, 2):
        with pytest.raises(Exception, match="dummy failure"):
            run(registry, "dummy", {"mode": "fail", "times": 2}, ImmediateContext(attempt))
    assert run(registry, "dummy", {"mode": "fail", "times": 2}, ImmediateContext(3))["ok"]


def test_dummy_fatal_is_not_retryable(registry: JobTypeRegistry) -> None:
    with pytest.raises(NonRetryableError):
        run(registry, "dummy", {"mode": "fatal"})


def test_dummy_cpu_runs_through_run_blocking(registry: JobTypeRegistry) -> None:
    assert run(registry, "dummy", {"mode": "cpu", "seconds": 0.01})["spins"] > 0


def test_dummy_rejects_fields_its_mode_does_not_use(registry: JobTypeRegistry) -> None:
    errors = errors_of(registry, "dummy", {"mode": "succeed", "times": 2, "how": "exit"})
    assert set(errors) == {"payload.times", "payload.how"}


def test_every_schema_renders_as_a_closed_json_schema_object(registry: JobTypeRegistry) -> None:
    for job_type in registry.values():
        schema = job_type.schema.json_schema()
        assert schema["type"] == "object"
        assert schema["additionalProperties"] is False
        assert set(schema["required"]) <= set(schema["properties"])


@pytest.mark.parametrize("mode", ["crash", "memory", "hang", "cpu"])
def test_dummy_fault_modes_are_refused_naming_the_setting_unless_it_is_on(mode: str) -> None:
    safe = default_registry(RecordingEmailSender())

    errors = errors_of(safe, "dummy", {"mode": mode})

    assert set(errors) == {"payload.mode"}
    assert "CONVEYOR_DUMMY_FAULTS=1" in errors["payload.mode"]
    assert f"mode {mode} is off" in errors["payload.mode"]


@pytest.mark.parametrize("mode", ["succeed", "fail", "fatal", "sleep"])
def test_dummy_modes_that_harm_nothing_need_no_setting(mode: str) -> None:
    safe = default_registry(RecordingEmailSender())

    assert safe.resolve("dummy").schema.validate({"mode": mode})["mode"] == mode
