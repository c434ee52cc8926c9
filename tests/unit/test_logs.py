import json
import logging

from entrypoints.logs import ConsoleFormatter, JsonFormatter, redact_url


def record(**extra: object) -> logging.LogRecord:
    rec = logging.makeLogRecord({"msg": "job claimed", "levelname": "INFO", "name": "w"})
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_the_extra_fields() -> None:
    line = json.loads(JsonFormatter().format(record(job_id="ab", attempt=2)))
    assert (line["event"], line["job_id"], line["attempt"]) == ("job claimed", "ab", 2)


def test_console_lines_carry_the_extra_fields() -> None:
    assert "job_id=ab" in ConsoleFormatter().format(record(job_id="ab"))


def test_passwords_in_urls_are_redacted() -> None:
    assert redact_url("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact_url("rediss://:s3cret@host/0") == "rediss://:***@host/0"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"
