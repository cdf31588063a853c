"""The log formatters: JSON (one object a line) and console (short lines for a person), both
with the correlation id and without passwords."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import datetime

import pytest
from pydantic import ValidationError

from common.messaging.consuming import MAX_REASON_CHARS, failure_reason
from common.observability.logging import (
    ConsoleFormatter,
    JsonFormatter,
    LogFormat,
    configure_logging,
    correlation_id,
    redact,
    wants_colour,
)
from common.settings import Settings
from harness.processes import process_environment

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_redact_hides_the_password_of_every_url() -> None:
    text = (
        "amqp://guest:s3cret@rabbit:5672/%2F failed; "
        "then postgresql://app:p%40ss:word@db/orders and redis://:only-pass@cache:6379/0"
    )
    assert redact(text) == (
        "amqp://guest:***@rabbit:5672/%2F failed; "
        "then postgresql://app:***@db/orders and redis://:***@cache:6379/0"
    )
    untouched = "http://host:8080/path and amqp://guest@rabbit/ and no url at all"
    assert redact(untouched) == untouched


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    return logging.getLogger("test").makeRecord(
        "test", logging.WARNING, __file__, 1, message, args, None, extra=extra
    )


def test_a_line_is_json_with_the_correlation_id_and_no_password() -> None:
    formatter = JsonFormatter("unit")
    token = correlation_id.set("c-1")
    try:
        record = _record("connect to %s failed", "amqp://u:pw1@h/", url="redis://:pw2@r/0")
        try:
            raise ConnectionError("cannot reach postgresql://u:pw3@db/x")
        except ConnectionError:
            record.exc_info = sys.exc_info()
        entry = json.loads(formatter.format(record))
    finally:
        correlation_id.reset(token)
    assert entry["correlation_id"] == "c-1"
    assert entry["process"] == "unit"
    assert entry["level"] == "warning"
    assert entry["message"] == "connect to amqp://u:***@h/ failed"
    assert entry["url"] == "redis://:***@r/0"
    assert "postgresql://u:***@db/x" in entry["exception"]
    line = json.dumps(entry)
    assert not [secret for secret in ("pw1", "pw2", "pw3") if secret in line]


def test_failure_reason_headers_are_redacted_like_logs() -> None:
    reason = "ConnectionError('redis://app:s3cret@cache:6379/0 refused')"
    assert failure_reason(reason) == "ConnectionError('redis://app:***@cache:6379/0 refused')"
    # Redacted before it is cut, so a cut cannot leave part of a password behind.
    long = "x" * (MAX_REASON_CHARS - 20) + " amqp://guest:a-long-password@rabbit/"
    assert "a-long" not in failure_reason(long)
    assert len(failure_reason("y" * 5000)) == MAX_REASON_CHARS


# --- console ------------------------------------------------------------------------------------


def _with_exception(record: logging.LogRecord, exc: Exception) -> logging.LogRecord:
    try:
        raise exc
    except type(exc):
        record.exc_info = sys.exc_info()
    return record


def _console(record: logging.LogRecord, *, colour: bool = False, cid: str | None = None) -> str:
    token = correlation_id.set(cid)
    try:
        return ConsoleFormatter("command_worker", colour=colour).format(record)
    finally:
        correlation_id.reset(token)


def test_a_console_line_reads_time_process_level_message_then_the_ids() -> None:
    record = _record(
        "command %s",
        "succeeded",
        version=3,
        reason="",
        stream_id="Order-1",
        command_id="c-9",
        projection="order_views",
        order_id=None,
    )
    line = _console(record, cid="corr-1")
    clock = datetime.fromtimestamp(record.created)
    assert line == (
        f"{clock:%H:%M:%S}.{clock.microsecond // 1000:03d} command_worker WARN  command succeeded"
        "  correlation_id=corr-1 command_id=c-9 stream_id=Order-1 projection=order_views"
        ' version=3 reason=""'
    )
    assert not ANSI.search(line)


def test_console_values_with_spaces_are_quoted() -> None:
    line = _console(_record("rejected", reason='order is "shipped" now', event_type="X=Y"))
    assert line.endswith(' reason="order is \\"shipped\\" now" event_type="X=Y"')


def test_console_colours_the_level_and_dims_the_ids() -> None:
    line = _console(_record("paused", dependency="redis"), colour=True, cid="corr-2")
    assert "\x1b[33mWARN \x1b[0m" in line
    assert "\x1b[2mcorrelation_id=corr-2 dependency=redis\x1b[0m" in line
    assert ANSI.sub("", line).endswith("paused  correlation_id=corr-2 dependency=redis")
    error = logging.getLogger("test").makeRecord(
        "test", logging.ERROR, __file__, 1, "failed", (), None
    )
    assert "\x1b[31mERROR\x1b[0m" in _console(error, colour=True)


def test_console_shows_the_exception_below_and_no_password() -> None:
    record = _with_exception(
        _record("connect to %s failed", "amqp://u:pw1@h/", url="redis://:pw2@r/0"),
        ConnectionError("cannot reach postgresql://u:pw3@db/x"),
    )
    first, *below = _console(record, cid="c-3").splitlines()
    assert "connect to amqp://u:***@h/ failed" in first
    assert "url=redis://:***@r/0" in first
    assert below[0] == "    Traceback (most recent call last):"
    assert below[-1] == "    ConnectionError: cannot reach postgresql://u:***@db/x"
    text = "\n".join([first, *below])
    assert not [secret for secret in ("pw1", "pw2", "pw3") if secret in text]


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.mark.parametrize(
    ("tty", "environ", "expected"),
    [
        (True, {}, True),
        (False, {}, False),
        (False, {"FORCE_COLOR": "1"}, True),
        (True, {"NO_COLOR": "1"}, False),
        (False, {"FORCE_COLOR": "1", "NO_COLOR": "1"}, False),
        (True, {"NO_COLOR": ""}, True),
    ],
)
def test_colour_follows_the_terminal_force_color_and_no_color(
    tty: bool, environ: dict[str, str], expected: bool
) -> None:
    assert wants_colour(_Stream(tty), environ) is expected


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, its handlers and level given back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_logging_writes_the_chosen_format(
    root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    console, lines = _Stream(tty=True), _Stream(tty=True)
    configure_logging("gateway", "INFO", LogFormat.CONSOLE, console)
    logging.getLogger("test").info("hello from %s", "amqp://g:pw@r/", extra={"order_id": "o-1"})
    configure_logging("gateway", "INFO", stream=lines)
    logging.getLogger("test").info("hello", extra={"order_id": "o-2"})
    shown = console.getvalue()
    assert ANSI.search(shown), "a terminal gets colours"
    assert " gateway " in shown
    assert "hello from amqp://g:***@r/" in ANSI.sub("", shown)
    assert "order_id=o-1" in ANSI.sub("", shown)
    entry = json.loads(lines.getvalue())
    assert (entry["message"], entry["order_id"], entry["process"]) == ("hello", "o-2", "gateway")


def test_log_format_is_a_setting_json_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    assert Settings().log_format is LogFormat.JSON
    monkeypatch.setenv("LOG_FORMAT", "console")
    assert Settings().log_format is LogFormat.CONSOLE
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    ("foreground", "inherited", "expected"),
    [
        (True, {}, "console"),
        (True, {"LOG_FORMAT": "json"}, "json"),
        (False, {}, "json"),
        (False, {"LOG_FORMAT": "console"}, "json"),
    ],
)
def test_make_run_logs_for_a_person_and_the_harness_reads_json(
    foreground: bool, inherited: dict[str, str], expected: str
) -> None:
    env = process_environment({"PATH": "/bin", **inherited}, {}, None, foreground=foreground)
    assert env["LOG_FORMAT"] == expected
    assert env["PATH"] == "/bin"
    chosen = process_environment(inherited, {"LOG_FORMAT": "console"}, None, foreground=False)
    assert chosen["LOG_FORMAT"] == "console", "the caller's own env still decides"
