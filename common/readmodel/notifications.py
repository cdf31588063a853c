"""The read-your-writes protocol between projectors and gateways.

State first, message second, both in one atomic Redis script: when a projector applies an event
to the generation queries read, it sets `projected_version` on the command's status and
publishes, on the same script call,

- on `Keys.command_outcomes_channel`:
  `{"command_id", "stream_id", "status": "succeeded", "version", "projected": true}`;
- on the projection's `versions_channel`: `{"stream_id", "version"}`.

Only the projection an aggregate is `visible_in` does this. A rebuild publishes
`{"generation": n}` on the projection's channel when queries switch to it.
The command worker publishes rejections and failures (never projected) on the command channel.

A waiter therefore registers its interest, *then* reads the state, then waits for a message:
whatever happens after the read arrives as a message, whatever happened before is in the read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from common.readmodel.commands import PROJECTED_VERSION_FIELD, CommandStatus


def projected_command_message(command_id: str, stream_id: str, version: int) -> bytes:
    return orjson.dumps(
        {
            "command_id": command_id,
            "stream_id": stream_id,
            "status": CommandStatus.SUCCEEDED.value,
            "version": version,
            "projected": True,
        }
    )


def stream_version_message(stream_id: str, version: int) -> bytes:
    return orjson.dumps({"stream_id": stream_id, "version": version})


def generation_message(generation: int) -> bytes:
    return orjson.dumps({"generation": generation})


@dataclass(frozen=True, slots=True)
class CommandProgress:
    """What is known about one command: its status, and how far its events reached the views."""

    command_id: str
    status: str
    stream_id: str | None = None
    type: str | None = None
    reason: str | None = None
    version: int | None = None
    projected_version: int | None = None

    @property
    def projected(self) -> bool:
        """The command's events are visible to queries."""
        if self.projected_version is None:
            return False
        return self.version is None or self.projected_version >= self.version

    @property
    def settled(self) -> bool:
        """Nothing more will change that a client waits for: refused, failed, or visible."""
        if self.status in (CommandStatus.REJECTED, CommandStatus.FAILED):
            return True
        return self.status == CommandStatus.SUCCEEDED and self.projected

    def to_json(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "type": self.type,
            "stream_id": self.stream_id,
            "status": self.status,
            "reason": self.reason,
            "version": self.version,
            "projected": self.projected,
        }

    @classmethod
    def from_status(
        cls, command_id: str, status: Mapping[str, Any] | None
    ) -> CommandProgress | None:
        """From the command's stored status (`commands.read_status`); None when there is none
        (yet) or it names no status."""
        if status is None or "status" not in status:
            return None
        return cls(
            command_id=command_id,
            status=str(status["status"]),
            stream_id=status.get("stream_id") or None,
            type=status.get("type") or None,
            reason=status.get("reason") or None,
            version=_int(status.get("version")),
            projected_version=_int(status.get(PROJECTED_VERSION_FIELD)),
        )

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> CommandProgress:
        """From a message on the command channel (a worker's outcome or a projection)."""
        version = message.get("version")
        return cls(
            command_id=str(message["command_id"]),
            status=str(message["status"]),
            stream_id=message.get("stream_id"),
            type=message.get("type"),
            reason=message.get("reason") or None,
            version=version if isinstance(version, int) else None,
            projected_version=version if message.get("projected") is True else None,
        )


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None
