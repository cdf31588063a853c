"""Command statuses in Redis: `accepted` by the gateway, then an outcome by the workers.

The outcome is written after the event store commit and before the message is acked, so a
crash in between only means a redelivery writes it again; `accepted` never overwrites it.
Every writer of a status hash (these functions, the projector's APPLY script, a rebuild's
restore) sets its time to live to `COMMAND_STATUS_TTL_S`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID

import orjson
from redis.asyncio import Redis

from common.readmodel.keys import Keys
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
"""The fingerprint of the request a status hash describes, when its id can be asked for again
(`keeps_fingerprint`)."""


def keeps_fingerprint(command_id: UUID | str) -> bool:
    """Whether a command's status hash keeps its request's fingerprint: only for an id derived
    from an Idempotency-Key (a name-based UUID, version 5), which another request can name
    again. An id the gateway drew at random (version 4) belongs to one request for ever, so its
    fingerprint (64 characters, a third of a small status hash) would never be compared. The
    event store records every fingerprint regardless (the command worker compares those)."""
    return UUID(str(command_id)).version == NAME_BASED_VERSION


NAME_BASED_VERSION = 5
"""The UUID version of ids derived from an Idempotency-Key (`uuid5`)."""

_WRITE_IF_OURS = """
local first = redis.call('HGET', KEYS[1], 'fingerprint')
if redis.call('EXISTS', KEYS[1]) == 1 and first ~= ARGV[1] then return 0 end
"""
"""A status hash is written only if it is new or describes the same request (ARGV[1] is the
request's fingerprint): a request that reuses another one's command id must not overwrite it."""

_MARK_ACCEPTED = (
    _WRITE_IF_OURS
    + """
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('HSETNX', KEYS[1], 'status', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
)

_RECORD_REFUSAL = (
    _WRITE_IF_OURS
    + """
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
)

STATUS_TTL_S: int = Settings.model_fields["command_status_ttl_s"].default
"""The default of `COMMAND_STATUS_TTL_S`, for callers not given the setting."""

PROJECTED_VERSION_FIELD = "projected_version"
"""The stream version the command's aggregate has reached in the views queries read."""


def status_fields(
    command_id: UUID | str,
    command_type: str,
    stream_id: str,
    *,
    status: CommandStatus | None = None,
    reason: str | None = None,
    version: int | None = None,
    fingerprint: str | None = None,
) -> dict[str, str]:
    """The fields of a command's status hash: the one definition of its layout, used by the
    gateway (`accepted`), the command worker (outcomes), the projector (a projected success,
    with HSETNX) and a rebuild restoring statuses from the event store."""
    fields = {"command_id": str(command_id), "type": command_type, "stream_id": stream_id}
    if status is not None:
        fields["status"] = status.value
    if version is not None:
        fields["reason"] = reason or ""
        fields["version"] = str(version)
    if fingerprint is not None and keeps_fingerprint(command_id):
        fields[FINGERPRINT_FIELD] = fingerprint
    return fields


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
    hash describes another request with the same command id."""
    fields = status_fields(command_id, command_type, stream_id, fingerprint=fingerprint)
    flat = [item for pair in fields.items() for item in pair]
    await redis.eval(
        _MARK_ACCEPTED,
        1,
        keys.command(command_id),
        fingerprint or "",
        CommandStatus.ACCEPTED.value,
        ttl_s,
        *flat,
    )


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
    async with redis.pipeline(transaction=False) as pipe:
        for result in results:
            fields = status_fields(
                result.command_id,
                result.command_type,
                result.stream_id,
                status=result.status,
                reason=result.reason,
                version=result.version,
                fingerprint=result.fingerprint,
            )
            key = keys.command(result.command_id)
            if result.refuses_reused_id:
                flat = [item for pair in fields.items() for item in pair]
                pipe.eval(_RECORD_REFUSAL, 1, key, result.fingerprint or "", ttl_s, *flat)
            else:
                pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
                pipe.expire(key, ttl_s)
            if result.status is not CommandStatus.SUCCEEDED:
                # A success settles a waiter only once it is visible: the projector announces
                # that. Rejections and failures never reach a projector, so they go out here.
                pipe.publish(
                    keys.command_outcomes_channel,
                    orjson.dumps({**fields, "version": result.version}),
                )
        await pipe.execute()
