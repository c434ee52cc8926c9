"""Structured logging: one line per event, JSON or key=value, never a payload or a secret.

Every line, exception text included, passes through `redact_text` on its way out: credentials
in URLs are masked wherever a message carries one, and so is each secret the process was
configured with (the password in REDIS_URL), however a line came to hold it.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
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


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {k: v for k, v in record.__dict__.items() if k not in _RESERVED}
    args = record.args
    if record.name == _ACCESS_LOGGER and isinstance(args, tuple) and len(args) == 5:
        # Fields of their own too, so a JSON access line can be filtered without parsing.
        fields.update(zip(_ACCESS_FIELDS, args, strict=True))
    return fields


class _RedactingFormatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = tuple(secrets)

    def redact(self, line: str) -> str:
        return redact_text(line, self._secrets)


class JsonFormatter(_RedactingFormatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return self.redact(json.dumps(line, default=str))


class ConsoleFormatter(_RedactingFormatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
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
