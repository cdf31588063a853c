"""Command statuses in Redis: `accepted` by the gateway, then an outcome by the workers.

The outcome is written after the event store commit and before the message is acked, so a
crash in between only means a redelivery writes it again; `accepted` never overwrites it.
Every writer of a status (these functions, the projector's APPLY script, a rebuild's restore)
sets its expiry to `COMMAND_STATUS_TTL_S` from then; where and how statuses are stored is
`status_store.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from uuid import UUID

import orjson
from redis.asyncio import Redis

from common.readmodel import status_store
from common.readmodel.keys import Keys
from common.readmodel.pipelining import shared_script
from common.settings import Settings


class CommandStatus(StrEnum):
    ACCEPTED = "accepted"
    SUCCEEDED = "succeeded"
    REJECTED = "rejected"
    FAILED = "failed"


TERMINAL = frozenset({CommandStatus.SUCCEEDED, CommandStatus.REJECTED, CommandStatus.FAILED})

ID_REUSED_REASON = "Idempotency-Key was used with a different request"
"""The reason of a command refused because its id is recorded for a request with another
fingerprint: a key reused after Redis forgot it. The gateway answers it with 422."""

FINGERPRINT_FIELD = "fingerprint"
"""The fingerprint of the request a status describes, when its id can be asked for again
(`keeps_fingerprint`)."""


def keeps_fingerprint(command_id: UUID | str) -> bool:
    """Whether a command's status keeps its request's fingerprint: only for an id derived
    from an Idempotency-Key (a name-based UUID, version 5), which another request can name
    again. An id the gateway drew at random (version 4) belongs to one request for ever, so its
    fingerprint (64 characters, a third of a status) would never be compared. The
    event store records every fingerprint regardless (the command worker compares those)."""
    return UUID(str(command_id)).version == NAME_BASED_VERSION


NAME_BASED_VERSION = 5
"""The UUID version of ids derived from an Idempotency-Key (`uuid5`)."""

STATUS_TTL_S: int = Settings.model_fields["command_status_ttl_s"].default
"""The default of `COMMAND_STATUS_TTL_S`, for callers not given the setting."""

PROJECTED_VERSION_FIELD = "projected_version"
"""The stream version the command's aggregate has reached in the views queries read (an
item of a status, `status_store.RECORD`)."""


def status_items(
    command_id: UUID | str,
    command_type: str,
    stream_id: str,
    *,
    status: CommandStatus | None = None,
    reason: str | None = None,
    version: int | None = None,
    fingerprint: str | None = None,
) -> dict[str, str | int]:
    """The items of a command's status (`status_store.RECORD`) a writer sets: the one
    definition of what each writer records, used by the gateway (`accepted`), the command
    worker (outcomes), the projector (a projected success) and a rebuild restoring statuses from
    the event store."""
    items: dict[str, str | int] = {"type": command_type, "stream_id": stream_id}
    if status is not None:
        items["status"] = status.value
    if version is not None:
        items["reason"] = reason or ""
        items["version"] = version
    if fingerprint is not None and keeps_fingerprint(command_id):
        items[FINGERPRINT_FIELD] = fingerprint
    return items


def outcome_message(command_id: UUID | str, items: dict[str, str | int]) -> bytes:
    """The message announcing a rejection or failure on the command channel."""
    return orjson.dumps({"command_id": str(command_id), **items})


async def mark_accepted(
    redis: Redis,
    keys: Keys,
    command_id: UUID,
    command_type: str,
    stream_id: str,
    *,
    fingerprint: str | None = None,
    ttl_s: int = STATUS_TTL_S,
) -> None:
    """Record that the gateway queued the command, unless an outcome got there first or the
    status describes another request with the same command id."""
    items = status_items(command_id, command_type, stream_id, fingerprint=fingerprint)
    write = {
        "check": fingerprint or "",
        "set": items,
        "fill": {"status": CommandStatus.ACCEPTED.value},
        "ttl_s": ttl_s,
    }
    names, field = status_store.location(keys, command_id)
    args = [field, status_store.write_args(write)]
    await shared_script(status_store.WRITE_STATUS)(names, args, client=redis)


async def read_status(redis: Redis, keys: Keys, command_id: UUID | str) -> dict[str, Any] | None:
    """A command's live status by `status_store.RECORD` item, None when none is known: one
    round trip, the old per-command hash included."""
    names, field = status_store.location(keys, command_id)
    raw = await shared_script(status_store.READ_STATUS)(names, [field], client=redis)
    return status_store.decode(raw)


@dataclass(frozen=True, slots=True)
class CommandResult:
    """A command's terminal status as the read side shows it."""

    command_id: UUID
    command_type: str
    stream_id: str
    status: CommandStatus
    reason: str | None
    version: int
    fingerprint: str | None = None

    @property
    def refuses_reused_id(self) -> bool:
        """The command was refused because its id belongs to another request."""
        return self.status is CommandStatus.REJECTED and self.reason == ID_REUSED_REASON


async def record_results(
    redis: Redis, keys: Keys, results: Sequence[CommandResult], *, ttl_s: int = STATUS_TTL_S
) -> None:
    """Write terminal statuses and announce refusals, in one pipelined round trip. A refusal
    of a reused command id never overwrites the status of the request that first used it."""
    write_status = shared_script(status_store.WRITE_STATUS)
    async with redis.pipeline(transaction=False) as pipe:
        for result in results:
            items = status_items(
                result.command_id,
                result.command_type,
                result.stream_id,
                status=result.status,
                reason=result.reason,
                version=result.version,
                fingerprint=result.fingerprint,
            )
            write: dict[str, Any] = {"set": items, "ttl_s": ttl_s}
            if result.refuses_reused_id:
                write["check"] = result.fingerprint or ""
            names, field = status_store.location(keys, result.command_id)
            await write_status(names, [field, status_store.write_args(write)], client=pipe)
            if result.status is not CommandStatus.SUCCEEDED:
                # A success settles a waiter only once it is visible: the projector announces
                # that. Rejections and failures never reach a projector, so they go out here.
                pipe.publish(
                    keys.command_outcomes_channel, outcome_message(result.command_id, items)
                )
        await pipe.execute()
