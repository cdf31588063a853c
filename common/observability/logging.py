"""Log lines carrying the correlation id of the message being handled: one JSON object a line
for machines (the default), or short coloured lines for a person at a terminal."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from enum import StrEnum
from typing import IO, Any

import orjson


class LogFormat(StrEnum):
    """How a process writes its log lines (`LOG_FORMAT`)."""

    JSON = "json"
    """One JSON object a line, every field kept: for log shippers and `jq` (the default)."""
    CONSOLE = "console"
    """One short line a record (time, process, level, message, then the ids as key=value) and
    the traceback below it; coloured on a terminal (`make run` uses it)."""


correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)
"""The correlation id of the request or message this task is working for."""

_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s]*:)[^@/?#\s]+@")


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***`.

    An error message or a traceback may quote a connection URL (a client's `repr`, a driver's
    error); applied to every line, so no such quote prints a password into the logs.
    """
    return _URL_PASSWORD.sub(r"\1***@", text) if "://" in text else text


_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "color_message"}
)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The correlation id and the record's own fields (`extra=`), strings redacted."""
    fields: dict[str, Any] = {}
    cid = correlation_id.get()
    if cid is not None:
        fields["correlation_id"] = cid
    for key, value in vars(record).items():
        if key not in _STANDARD_ATTRS and not key.startswith("_"):
            fields[key] = redact(value) if isinstance(value, str) else value
    return fields


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON: time, level, logger, message, correlation id, extras."""

    def __init__(self, process_name: str) -> None:
        super().__init__()
        self._process = process_name

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "process": self._process,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


LEADING_FIELDS = ("correlation_id", "command_id", "order_id", "stream_id", "projection")
"""The ids a person follows a command by: first on a console line, the other fields after."""

_LEVELS = {
    logging.DEBUG: ("DEBUG", "34"),
    logging.INFO: ("INFO", "32"),
    logging.WARNING: ("WARN", "33"),
    logging.ERROR: ("ERROR", "31"),
    logging.CRITICAL: ("CRIT", "1;31"),
}
_DIM = "2"
_PROCESS_WIDTH = len("command_worker")
_BARE_VALUE = re.compile(r"^[^\s\"'=]+$")


class ConsoleFormatter(logging.Formatter):
    """Formats a record for a person: `12:04:05.123 gateway  INFO  command accepted
    correlation_id=... command_id=...`, the fields dimmed (those set to None left out), the
    traceback on the lines below. Times are local; ANSI colours only with `colour`."""

    def __init__(self, process_name: str, *, colour: bool) -> None:
        super().__init__()
        self._process = f"{process_name:<{_PROCESS_WIDTH}}"
        self._colour = colour

    def _paint(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self._colour else text

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created)
        clock = f"{moment:%H:%M:%S}.{moment.microsecond // 1000:03d}"
        name, code = _LEVELS.get(record.levelno, (record.levelname[:5], "0"))
        line = (
            f"{self._paint(_DIM, clock)} {self._process} {self._paint(code, f'{name:<5}')} "
            f"{redact(record.getMessage())}"
        )
        # A field without a value (no reason for a success) says nothing to a reader.
        fields = {key: value for key, value in _fields(record).items() if value is not None}
        ordered = [key for key in LEADING_FIELDS if key in fields]
        ordered += [key for key in fields if key not in LEADING_FIELDS]
        pairs = " ".join(f"{key}={_console_value(fields[key])}" for key in ordered)
        if pairs:
            line += "  " + self._paint(_DIM, pairs)
        if record.exc_info:
            trace = redact(self.formatException(record.exc_info))
            line += "\n" + "\n".join("    " + row for row in trace.splitlines())
        return line


def _console_value(value: Any) -> str:
    """A field's value as `key=` shows it: bare when it has no space, quote or `=`, else as a
    JSON string."""
    text = value if isinstance(value, str) else str(value)
    return text if _BARE_VALUE.match(text) else orjson.dumps(text).decode()


def wants_colour(stream: IO[str], environ: Mapping[str, str] = os.environ) -> bool:
    """Colour when `stream` is a terminal or `FORCE_COLOR` is set, never when `NO_COLOR` is
    (https://no-color.org)."""
    if environ.get("NO_COLOR"):
        return False
    if environ.get("FORCE_COLOR"):
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def configure_logging(
    process_name: str,
    level: str = "INFO",
    log_format: LogFormat = LogFormat.JSON,
    stream: IO[str] | None = None,
) -> None:
    """Send every log record to `stream` (stderr by default) in `log_format`."""
    # Not in the output, so not worth collecting for every record.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    target = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(target)
    if log_format is LogFormat.CONSOLE:
        handler.setFormatter(ConsoleFormatter(process_name, colour=wants_colour(target)))
    else:
        handler.setFormatter(JsonFormatter(process_name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiormq", "aio_pika", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
