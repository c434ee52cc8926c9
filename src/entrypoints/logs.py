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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, TextIO, TypeAlias

from entrypoints.redaction import redact_text, redact_url
from entrypoints.settings import LogFormat

__all__ = ["ConsoleFormatter", "JsonFormatter", "configure_logging", "log_event", "redact_url"]

Fields: TypeAlias = Mapping[str, Any]

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

    def timestamp(self, created: float, msecs: float) -> str:
        second = int(created)
        cached, text = self._second
        if second != cached:
            text = time.strftime(self.second_format, time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int(msecs):03d}{self.zone}"

    def line(
        self,
        created: float,
        msecs: float,
        level: str,
        name: str,
        message: str,
        fields: Fields,
        exception: str | None = None,
    ) -> str:
        """One event's line, before redaction: what `format` writes for a record of these."""
        raise NotImplementedError

    def format(self, record: logging.LogRecord) -> str:
        exception = self.formatException(record.exc_info) if record.exc_info else None
        return self.redact(
            self.line(
                record.created,
                record.msecs,
                record.levelname,
                record.name,
                record.getMessage(),
                _fields(record),
                exception,
            )
        )


# One encoder for every line: `json.dumps` with any option builds a new one per call.
_JSON: Final = json.JSONEncoder(default=str)


class JsonFormatter(_RedactingFormatter):
    second_format = "%Y-%m-%dT%H:%M:%S"
    zone = "+00:00"

    def line(
        self,
        created: float,
        msecs: float,
        level: str,
        name: str,
        message: str,
        fields: Fields,
        exception: str | None = None,
    ) -> str:
        line: dict[str, Any] = {
            "ts": self.timestamp(created, msecs),
            "level": level.lower(),
            "logger": name,
            "event": message,
        }
        line.update(fields)
        if exception is not None:
            line["exception"] = exception
        return _JSON.encode(line)


class ConsoleFormatter(_RedactingFormatter):
    def line(
        self,
        created: float,
        msecs: float,
        level: str,
        name: str,
        message: str,
        fields: Fields,
        exception: str | None = None,
    ) -> str:
        text = f"{self.timestamp(created, msecs)} {level:<7} {name}: {message}"
        if fields:
            extras = " ".join([f"{k}={v}" for k, v in fields.items()])
            text = f"{text} {extras}"
        if exception is not None:
            text = f"{text}\n{exception}"
        return text


class _Direct:
    """The handler `configure_logging` installed, and its formatter, written to without a
    record while logging stays as `configure_logging` left it."""

    def __init__(self, handler: logging.StreamHandler[TextIO], formatter: _RedactingFormatter):
        self.handler = handler
        self.formatter = formatter

    def serves(self, logger: logging.Logger, level: int) -> bool:
        """Whether the logging module would write a line of `logger` at `level` to this
        handler alone, through this formatter, from a record of its own class: so that
        writing it here writes the same line. Anything added since (a handler, a filter, a
        record factory, another formatter) leaves every line to the logging module."""
        handler, root = self.handler, logging.root
        handlers = root.handlers
        if len(handlers) != 1 or handlers[0] is not handler or root.filters:
            return False
        if handler.filters or handler.formatter is not self.formatter or level < handler.level:
            return False
        if logging.getLogRecordFactory() is not logging.LogRecord:
            return False
        node: logging.Logger | None = logger
        while node is not None and node is not root:
            if node.handlers or node.filters or not node.propagate:
                return False
            node = node.parent
        return True

    def write(self, level: int, name: str, message: str, events: Sequence[Fields]) -> bool:
        """Write one line for each of `events`, all in one write; False when the stream
        refused them."""
        created = time.time()
        msecs = int((created - int(created)) * 1000) + 0.0  # as a `LogRecord` reckons it
        formatter = self.formatter
        level_name = logging.getLevelName(level)
        end = self.handler.terminator
        text = "".join(
            [
                formatter.redact(formatter.line(created, msecs, level_name, name, message, fields))
                + end
                for fields in events
            ]
        )
        self.handler.acquire()
        try:
            stream = self.handler.stream
            stream.write(text)
            stream.flush()
        except Exception:  # handed to the logging module, which reports it
            return False
        finally:
            self.handler.release()
        return True


_direct: _Direct | None = None


def log_event(logger: logging.Logger, level: int, message: str, fields: Fields) -> None:
    """`logger.log(level, message, extra=fields)`, for the lines a worker writes for every
    job. While logging stays as `configure_logging` left it, the line is formatted and written
    by its handler and formatter directly: the same line, without the logging module's record
    and the calls around it, which cost twice what the line itself does. Otherwise (and for a
    line the stream refused) the logging module writes it, as any other. `fields` must not
    name a record's own attributes (the logging module refuses those)."""
    log_events(logger, level, message, (fields,))


def log_events(logger: logging.Logger, level: int, message: str, events: Sequence[Fields]) -> None:
    """`log_event` for several events of one message at once: written directly, their
    lines go out in one write (one system call, where a line each costs one each)."""
    if not events or not logger.isEnabledFor(level):
        return
    direct = _direct if _direct is not None and _direct.serves(logger, level) else None
    if direct is None or not direct.write(level, logger.name, message, events):
        for fields in events:
            logger.log(level, message, extra=fields)


def configure_logging(level: str, fmt: LogFormat, secrets: Iterable[str] = ()) -> None:
    """Every logger's lines to stderr, in `fmt`, with `secrets` masked wherever they appear."""
    global _direct  # the one handler it installs, for `log_event`
    handler = logging.StreamHandler(sys.stderr)
    formatter = (JsonFormatter if fmt is LogFormat.JSON else ConsoleFormatter)(secrets)
    handler.setFormatter(formatter)
    _direct = _Direct(handler, formatter)
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
