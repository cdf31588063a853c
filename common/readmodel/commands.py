"""Command statuses in Redis: `accepted` by the gateway, then an outcome by the workers.

The outcome is written after the event store commit and before the message is acked, so a
crash in between only means a redelivery writes it again; `accepted` never overwrites it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast
from uuid import UUID

import orjson
from redis.asyncio import Redis

from common.readmodel.keys import Keys


class CommandStatus(StrEnum):
    ACCEPTED = "accepted"
    SUCCEEDED = "succeeded"
    REJECTED = "rejected"
    FAILED = "failed"


TERMINAL = frozenset({CommandStatus.SUCCEEDED, CommandStatus.REJECTED, CommandStatus.FAILED})

_MARK_ACCEPTED = """
redis.call('HSET', KEYS[1], 'command_id', ARGV[1], 'type', ARGV[2], 'order_id', ARGV[3])
redis.call('HSETNX', KEYS[1], 'status', 'accepted')
return 1
"""


async def mark_accepted(
    redis: Redis, keys: Keys, command_id: UUID, command_type: str, order_id: UUID
) -> None:
    await redis.eval(
        _MARK_ACCEPTED, 1, keys.command(command_id), str(command_id), command_type, str(order_id)
    )


async def record_outcome(
    redis: Redis,
    keys: Keys,
    *,
    command_id: UUID,
    command_type: str,
    order_id: str,
    status: CommandStatus,
    reason: str | None,
    version: int,
) -> None:
    """Write a terminal status and tell waiting gateways about it."""
    await record_outcomes(
        redis, keys, [Outcome(command_id, command_type, order_id, status, reason, version)]
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """A command's terminal status as the read side shows it."""

    command_id: UUID
    command_type: str
    order_id: str
    status: CommandStatus
    reason: str | None
    version: int


async def record_outcomes(redis: Redis, keys: Keys, outcomes: Sequence[Outcome]) -> None:
    """Write terminal statuses and announce refusals, in one pipelined round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for outcome in outcomes:
            fields: dict[Any, str | int] = {
                "command_id": str(outcome.command_id),
                "type": outcome.command_type,
                "order_id": outcome.order_id,
                "status": outcome.status.value,
                "reason": outcome.reason or "",
                "version": outcome.version,
            }
            pipe.hset(keys.command(outcome.command_id), mapping=fields)
            if outcome.status is not CommandStatus.SUCCEEDED:
                # A success settles a waiter only once it is visible: the projector announces
                # that. Rejections and failures never reach a projector, so they go out here.
                pipe.publish(keys.command_outcomes_channel, orjson.dumps(fields))
        await pipe.execute()


async def get_status(redis: Redis, keys: Keys, command_id: UUID) -> dict[str, Any] | None:
    raw = cast(dict[bytes, bytes], await redis.hgetall(keys.command(command_id)))
    if not raw:
        return None
    return {
        "command_id": raw[b"command_id"].decode(),
        "type": raw[b"type"].decode(),
        "order_id": raw[b"order_id"].decode(),
        "status": raw[b"status"].decode(),
        "reason": (raw.get(b"reason") or b"").decode() or None,
        "version": int(raw[b"version"]) if raw.get(b"version") else None,
    }
