"""Every Redis key and channel name, in one place, under one configurable prefix."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names for one deployment; `prefix` keeps deployments (and test runs) apart."""

    prefix: str = "orders:"

    def command(self, command_id: UUID | str) -> str:
        """Hash: command_id, type, order_id, status, reason, version."""
        return f"{self.prefix}command:{command_id}"

    def idempotency(self, key: str) -> str:
        """String: JSON {command_id, order_id, fingerprint} of the first use of a key."""
        return f"{self.prefix}idempotency:{key}"

    @property
    def command_outcomes_channel(self) -> str:
        """Pub/sub: a message per command outcome or projected command, for read-your-writes."""
        return f"{self.prefix}notify:commands"
