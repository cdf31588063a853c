"""Named outcomes of handling one message, raised by handlers instead of ad-hoc try/except."""

from __future__ import annotations

from enum import StrEnum


class FailureKind(StrEnum):
    """Why a message ended in a dead-letter queue; travels in the `x-failure-kind` header."""

    POISON = "poison"
    """It can never be handled: not JSON, an unknown type, a failed schema."""
    EXHAUSTED = "exhausted"
    """It failed for a transient reason on every allowed attempt."""


class RejectMessage(Exception):
    """Send the message to its dead-letter queue now, with `reason`; the worker goes on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RetryLater(Exception):
    """Try again after a delay (exponential backoff); dead-letter after the last attempt."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
