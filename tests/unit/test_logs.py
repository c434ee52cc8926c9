import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from entrypoints import logs
from entrypoints.logs import (
    ConsoleFormatter,
    JsonFormatter,
    configure_logging,
    log_event,
    log_events,
    redact_url,
)
from entrypoints.redaction import url_secrets
from entrypoints.settings import LogFormat, Settings, SettingsError


def record(**extra: object) -> logging.LogRecord:
    rec = logging.makeLogRecord({"msg": "job claimed", "levelname": "INFO", "name": "w"})
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_the_extra_fields() -> None:
    line = json.loads(JsonFormatter().format(record(job_id="ab", attempt=2)))
    assert (line["event"], line["job_id"], line["attempt"]) == ("job claimed", "ab", 2)


def test_console_lines_carry_the_extra_fields() -> None:
    assert "job_id=ab" in ConsoleFormatter().format(record(job_id="ab"))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://user:s3cret@host:6379/0", "redis://***:***@host:6379/0"),
        ("rediss://:s3cret@host/0", "rediss://:***@host/0"),
        ("redis://s3cret@host/0", "redis://***@host/0"),
        ("redis://host/0?password=s3cret&db=2", "redis://host/0?password=***&db=2"),
        ("redis://host?username=bob&password=p%40ss", "redis://host?username=***&password=***"),
        ("redis://host/0?pass%77ord=s3cret", "redis://host/0?password=***"),
        ("rediss://host/0?ssl_password=s3cret", "rediss://host/0?ssl_password=***"),
        # redis-py passes unknown parameters to the connection: their values may be secrets.
        ("redis://host/0?client_name=api&token=s3cret", "redis://host/0?client_name=api&token=***"),
        ("redis://host/0?db=1;password=s3cret", "redis://host/0?db=***"),
        # Unencoded '@', '/', '?', '#' in a password: everything up to the last '@' is hidden.
        ("redis://u:p@ss@host:1/0", "redis://***:***@host:1/0"),
        ("redis://:s3/cret@host:1/0", "redis://:***@host:1/0"),
        ("redis://:s3?cret@host/0", "redis://:***@host/0"),
        ("redis://:s3#cret@host/0", "redis://:***@host/0"),
        ("redis://host/s3cret", "redis://host/***"),
        ("redis://host/0#s3cret", "redis://host/0#***"),
        ("unix://:s3cret@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        # A Sentinel URL shows its service name; the Sentinels' credential is a secret too.
        (
            "redis+sentinel://:s3cret@h:1,h:2/jobs/2?sentinel_password=s3cret",
            "redis+sentinel://:***@h:1,h:2/jobs/2?sentinel_password=***",
        ),
        ("redis+sentinel://h/s3cret:x", "redis+sentinel://h/***"),
        ("not a url s3cret", "***"),
    ],
)
def test_every_credential_form_of_a_redis_url_is_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cret" not in redact_url(url)


def test_a_url_s_passwords_are_known_in_every_spelling_a_line_may_carry() -> None:
    secrets = url_secrets("redis://u:p%40ssword@h/0?ssl_password=key%20phrase&username=bob")
    assert secrets == {"p%40ssword", "p@ssword", "key%20phrase", "key phrase"}
    assert url_secrets("redis://:short@h/0") == frozenset()  # left to the structural redaction
    assert url_secrets("redis+sentinel://h/jobs?sentinel_password=monitor1") == {"monitor1"}
    assert url_secrets(None) == frozenset()


def test_a_log_line_never_carries_a_configured_secret_or_a_url_credential() -> None:
    formatter = JsonFormatter(url_secrets("redis://:hunter2hunter2@h/0"))
    try:
        raise RuntimeError('AUTH failed for "hunter2hunter2"')
    except RuntimeError:
        rec = record(url="rediss://bob:pw@h/0?password=xyz")
        rec.exc_info = sys.exc_info()
    line = formatter.format(rec)
    assert "hunter2hunter2" not in line
    assert "bob" not in line
    assert "xyz" not in line
    assert json.loads(line)["url"] == "rediss://***@h/0?password=***"
    console = ConsoleFormatter(["hunter2hunter2"]).format(record(note="x hunter2hunter2 y"))
    assert "note=x *** y" in console


def test_settings_never_show_the_redis_url_s_credentials() -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://u:s3cret@h:1/0?password=s3cret"})
    assert "s3cret" not in repr(settings)
    assert settings.redis_url == "redis://u:s3cret@h:1/0?password=s3cret"


def test_an_unreadable_redis_url_is_refused_without_showing_its_password() -> None:
    with pytest.raises(SettingsError, match="REDIS_URL") as refused:
        Settings.from_env({"REDIS_URL": "redis://:s3/cret@host:6379/0"})
    assert "s3" not in str(refused.value)
    assert "cret" not in str(refused.value)


def test_uvicorns_access_lines_are_json_lines_with_the_requests_parts_as_fields() -> None:
    access = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:50000", "POST", "/jobs", "1.1", 202),
        None,
    )

    line = json.loads(JsonFormatter().format(access))

    assert line["event"] == '127.0.0.1:50000 - "POST /jobs HTTP/1.1" 202'
    assert (line["method"], line["path"], line["status"]) == ("POST", "/jobs", 202)
    assert line["logger"] == "uvicorn.access"


@pytest.mark.parametrize(
    ("created", "msecs"), [(0.0, 0.0), (1796665268.0005, 0.5), (1796665268.9999, 999.9)]
)
def test_a_line_s_time_is_the_record_s_utc_second_and_its_milliseconds(
    created: float, msecs: float
) -> None:
    second = datetime.fromtimestamp(int(created), UTC)
    rec = record()
    rec.created, rec.msecs = created, msecs
    ms = f".{int(msecs):03d}"
    json_ts = second.isoformat().replace("+00:00", f"{ms}+00:00")
    assert json.loads(JsonFormatter().format(rec))["ts"] == json_ts
    assert ConsoleFormatter().format(rec).startswith(f"{second:%H:%M:%S}{ms} ")


def test_a_formatter_shows_each_second_s_own_time_after_formatting_another() -> None:
    formatter, rec = ConsoleFormatter(), record()
    for created, shown in [
        (3600.25, "01:00:00.250"),
        (3601.5, "01:00:01.500"),
        (0.0, "00:00:00.000"),
    ]:
        rec.created, rec.msecs = created, (created % 1) * 1000
        assert formatter.format(rec).startswith(shown)


def test_a_logger_s_extra_fields_reach_the_line_and_its_own_attributes_do_not() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ConsoleFormatter())
    logger = logging.getLogger("tests.logs.extra")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("job claimed", extra={"job_id": "ab", "attempt": 2})
        logger.warning("nothing more")
    finally:
        logger.removeHandler(handler)
    claimed, plain = stream.getvalue().splitlines()
    assert claimed.endswith("WARNING tests.logs.extra: job claimed job_id=ab attempt=2")
    assert plain.endswith("WARNING tests.logs.extra: nothing more")


# A forked worker child as the fork server runs it, its worker replaced by one that writes
# REDIS_URL's password as free text (as a library's error message might) and stops.
_CHILD = """
import logging, multiprocessing, os, sys
import entrypoints.worker.child as child
from entrypoints.worker.spawning import ChildSpec, _child

def run_child(settings, **_):
    logging.getLogger("conveyor.worker").error("AUTH failed with %s", "hunter2-hunter2")
    return 0

child.run_child = run_child
_, control = multiprocessing.Pipe(duplex=False)
spec = ChildSpec(worker_id="w", concurrency=1, queues=("default",), weights=None, board="b")
_child(spec, control, dict(os.environ))
"""


def test_a_forked_worker_child_masks_the_redis_url_s_password_in_its_lines() -> None:
    environ = {**os.environ, "REDIS_URL": "redis://:hunter2-hunter2@127.0.0.1:1/0"}
    ran = subprocess.run(
        [sys.executable, "-c", _CHILD], env=environ, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    assert "AUTH failed with ***" in ran.stderr
    assert "hunter2" not in ran.stderr


@pytest.fixture
def configured() -> Iterator[None]:
    """Logging as `configure_logging` leaves it, put back as it was after the test."""
    root = logging.getLogger()
    handlers, level, direct = root.handlers[:], root.level, logs._direct
    saved = (logging._srcfile, logging.logThreads, logging.logProcesses)
    try:
        yield
    finally:
        root.handlers[:], logs._direct = handlers, direct
        root.setLevel(level)
        logging._srcfile, logging.logThreads, logging.logProcesses = saved


class _Records:
    """How many records the logging module made (none, for a line written directly)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.made = 0
        make = logging.Logger.makeRecord

        def counted(logger: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
            self.made += 1
            return make(logger, *args, **kwargs)

        monkeypatch.setattr(logging.Logger, "makeRecord", counted)


def _after_time(line: str) -> str:
    return (
        line.split(" ", 1)[1]
        if not line.startswith("{")
        else json.dumps({k: v for k, v in json.loads(line).items() if k != "ts"})
    )


@pytest.mark.parametrize("fmt", list(LogFormat))
def test_a_job_s_line_is_written_directly_as_the_logging_module_writes_it(
    fmt: LogFormat,
    configured: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure_logging("INFO", fmt, ["s3cret-s3cret"])
    records, log = _Records(monkeypatch), logging.getLogger("tests.logs.direct")
    fields = {"job_id": "ab", "queue": "q", "attempt": 2, "note": "s3cret-s3cret"}
    log_event(log, logging.INFO, "job claimed", fields)
    assert records.made == 0
    log.info("job claimed", extra=fields)
    assert records.made == 1
    direct, through_logging = capsys.readouterr().err.splitlines()
    assert _after_time(direct) == _after_time(through_logging)
    assert "s3cret" not in direct
    assert direct[:2].isdigit() or json.loads(direct)["ts"][:4].isdigit()


class _Counting(io.StringIO):
    """A stream that counts the writes made to it."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.mark.parametrize("fmt", list(LogFormat))
def test_several_job_lines_go_out_in_one_write_each_as_it_would_alone(
    fmt: LogFormat, configured: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_logging("INFO", fmt, ["s3cret-s3cret"])
    stream = _Counting()
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
    records, log = _Records(monkeypatch), logging.getLogger("tests.logs.direct")
    events = [{"job_id": f"a{n}", "note": "s3cret-s3cret"} for n in range(3)]
    log_events(log, logging.INFO, "job claimed", events)
    together, writes = stream.getvalue().splitlines(), stream.writes
    for fields in events:
        log_event(log, logging.INFO, "job claimed", fields)
    alone = stream.getvalue().splitlines()[3:]
    assert (records.made, writes, stream.writes) == (0, 1, 4)
    assert [_after_time(line) for line in together] == [_after_time(line) for line in alone]
    assert "s3cret" not in stream.getvalue()


def test_several_job_lines_each_go_through_the_logging_module_once_it_is_changed(
    configured: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_logging("INFO", LogFormat.CONSOLE)
    _another_handler()
    records = _Records(monkeypatch)
    log_events(logging.getLogger("tests.logs.direct"), logging.INFO, "m", [{"n": 1}, {"n": 2}])
    assert records.made == 2
    assert [line[-3:] for line in capsys.readouterr().err.splitlines()] == ["n=1", "n=2"]


def test_a_job_s_line_below_the_level_is_not_written(
    configured: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_logging("WARNING", LogFormat.CONSOLE)
    records = _Records(monkeypatch)
    log_event(logging.getLogger("tests.logs.direct"), logging.INFO, "job claimed", {})
    assert (records.made, capsys.readouterr().err) == (0, "")


def _another_handler() -> None:
    logging.getLogger().addHandler(logging.NullHandler())


def _a_filter() -> None:
    logging.getLogger("tests.logs").addFilter(lambda record: True)


def _a_record_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging, "_logRecordFactory", lambda *a, **k: logging.LogRecord(*a, **k))


def _another_formatter() -> None:
    logging.getLogger().handlers[0].setFormatter(ConsoleFormatter())


@pytest.mark.parametrize(
    "change", [_another_handler, _a_filter, _a_record_factory, _another_formatter]
)
def test_a_job_s_line_goes_through_the_logging_module_once_its_configuration_changed(
    change: Any,
    configured: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure_logging("INFO", LogFormat.CONSOLE)
    records, log = _Records(monkeypatch), logging.getLogger("tests.logs.direct")
    try:
        if change is _a_record_factory:
            change(monkeypatch)
        else:
            change()
        log_event(log, logging.INFO, "job claimed", {"job_id": "ab"})
    finally:
        logging.getLogger("tests.logs").filters.clear()
    assert records.made == 1
    assert capsys.readouterr().err.rstrip().endswith("job claimed job_id=ab")


class _Refusing(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("no space left")


def test_a_job_s_line_the_stream_refuses_is_left_to_the_logging_module_to_report(
    configured: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_logging("INFO", LogFormat.CONSOLE)
    logging.getLogger().handlers[0].setStream(_Refusing())  # type: ignore[attr-defined]
    reported: list[logging.LogRecord] = []
    monkeypatch.setattr(logging.StreamHandler, "handleError", lambda _, r: reported.append(r))
    log_event(logging.getLogger("tests.logs.direct"), logging.INFO, "job claimed", {"a": 1})
    assert [(r.getMessage(), r.__dict__["a"]) for r in reported] == [("job claimed", 1)]
