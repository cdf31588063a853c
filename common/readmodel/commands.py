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

_MARK_ACCEPTED = """
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('HSETNX', KEYS[1], 'status', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

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
    return fields


async def mark_accepted(
    redis: Redis,
    keys: Keys,
    command_id: UUID,
    command_type: str,
    stream_id: str,
    *,
    ttl_s: int = STATUS_TTL_S,
) -> None:
    """Record that the gateway queued the command, unless an outcome got there first."""
    fields = status_fields(command_id, command_type, stream_id)
    flat = [item for pair in fields.items() for item in pair]
    await redis.eval(
        _MARK_ACCEPTED, 1, keys.command(command_id), CommandStatus.ACCEPTED.value, ttl_s, *flat
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


async def record_results(
    redis: Redis, keys: Keys, results: Sequence[CommandResult], *, ttl_s: int = STATUS_TTL_S
) -> None:
    """Write terminal statuses and announce refusals, in one pipelined round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for result in results:
            fields = status_fields(
                result.command_id,
                result.command_type,
                result.stream_id,
                status=result.status,
                reason=result.reason,
                version=result.version,
            )
            key = keys.command(result.command_id)
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
