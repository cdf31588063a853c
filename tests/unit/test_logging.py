"""The JSON log formatter: one object a line, the correlation id, no passwords."""

from __future__ import annotations

import json
import logging
import sys

from common.messaging.consuming import MAX_REASON_CHARS, failure_reason
from common.observability.logging import JsonFormatter, correlation_id, redact


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
