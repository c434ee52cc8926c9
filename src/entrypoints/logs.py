"""Structured logging: one line per event, JSON or key=value, never a payload or a secret.

Every line, exception text included, passes through `redact_text` on its way out: credentials
in URLs are masked wherever a message carries one, and so is each secret the process was
configured with (the password in REDIS_URL), however a line came to hold it.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any, Final

from entrypoints.redaction import redact_text, redact_url
from entrypoints.settings import LogFormat

__all__ = ["ConsoleFormatter", "JsonFormatter", "configure_logging", "redact_url"]

# A record's own attributes, and uvicorn's coloured copy of its message: not extra fields.
_RESERVED: Final = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


# uvicorn's access lines carry their parts as the message's arguments, in this order.
_ACCESS_LOGGER: Final = "uvicorn.access"
_ACCESS_FIELDS: Final = ("client", "method", "path", "http_version", "status")


# How many attributes a record has before its extra fields: `Logger.makeRecord` adds those
# after the ones `LogRecord.__init__` sets, so only the attributes past these are looked at.
_OWN_COUNT: Final = len(logging.makeLogRecord({}).__dict__)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    extra = itertools.islice(record.__dict__.items(), _OWN_COUNT, None)
    fields = {k: v for k, v in extra if k not in _RESERVED}
    args = record.args
    if record.name == _ACCESS_LOGGER and isinstance(args, tuple) and len(args) == 5:
        # Fields of their own too, so a JSON access line can be filtered without parsing.
        fields.update(zip(_ACCESS_FIELDS, args, strict=True))
    return fields


class _RedactingFormatter(logging.Formatter):
    """Masks the configured secrets in every line, and writes a line's time in UTC to the
    millisecond, its seconds (`second_format`, in `time.strftime`'s codes) formatted once per
    second: a worker writes two lines a job."""

    second_format = "%H:%M:%S"
    zone = ""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = tuple(secrets)
        # The last second formatted and its text, replaced together (threads may share it).
        self._second: tuple[int, str] = (-1, "")

    def redact(self, line: str) -> str:
        return redact_text(line, self._secrets)

    def timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached, text = self._second
        if second != cached:
            text = time.strftime(self.second_format, time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int(record.msecs):03d}{self.zone}"


# One encoder for every line: `json.dumps` with any option builds a new one per call.
_JSON: Final = json.JSONEncoder(default=str)


class JsonFormatter(_RedactingFormatter):
    second_format = "%Y-%m-%dT%H:%M:%S"
    zone = "+00:00"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self.timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return self.redact(_JSON.encode(line))


class ConsoleFormatter(_RedactingFormatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = self.timestamp(record)
        extras = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        text = f"{ts} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            text = f"{text} {extras}"
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return self.redact(text)


def configure_logging(level: str, fmt: LogFormat, secrets: Iterable[str] = ()) -> None:
    """Every logger's lines to stderr, in `fmt`, with `secrets` masked wherever they appear."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter if fmt is LogFormat.JSON else ConsoleFormatter
    handler.setFormatter(formatter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Neither format shows where a line was logged from, nor the thread or process: the
    # logging module's own advice for not gathering them (each look-up a frame walk or a
    # call, on every line).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
