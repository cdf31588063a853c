"""Looking at and replaying dead letters: `python -m <worker> dlq list|replay`."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from common.messaging.consuming import (
    ATTEMPT_HEADER,
    FAILED_AT_HEADER,
    KIND_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
)
from common.messaging.nodes import connect_any
from common.messaging.publishing import ConfirmedPublisher
from common.messaging.topology import Topology, declare_topology, dlq_name
from common.settings import Settings

BROKER_HEADERS = (
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-delivery-count",
)
"""Headers RabbitMQ adds: when it dead-letters a message (a delay queue's TTL, a work queue's
delivery limit), and on each redelivery from a quorum queue."""

FAILURE_HEADERS = frozenset(
    {REASON_HEADER, KIND_HEADER, QUEUE_HEADER, ATTEMPT_HEADER, FAILED_AT_HEADER, *BROKER_HEADERS}
)
"""Every header a failure adds to a message, ours and the broker's: a replay removes them all."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message_id: str | None
    type: str | None
    kind: str
    reason: str
    failed_at: str
    size: int

    @classmethod
    def of(cls, message: AbstractIncomingMessage) -> DeadLetter:
        headers: dict[str, Any] = dict(message.headers or {})
        death = headers.get("x-death")
        default_reason = "broker dead-lettered it" + (f": {death}" if death else "")
        return cls(
            message_id=message.message_id,
            type=message.type,
            kind=str(headers.get(KIND_HEADER, "broker")),
            reason=str(headers.get(REASON_HEADER, default_reason)),
            failed_at=str(headers.get(FAILED_AT_HEADER, "")),
            size=len(message.body),
        )


def replay_copy(message: AbstractIncomingMessage) -> aio_pika.Message:
    """The message as it first was: failure headers removed, attempts reset."""
    headers = {k: v for k, v in (message.headers or {}).items() if k not in FAILURE_HEADERS}
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        correlation_id=message.correlation_id,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


async def list_dead_letters(
    settings: Settings, topology: Topology, queue: str, limit: int
) -> list[DeadLetter]:
    """Up to `limit` dead letters, oldest first; they stay in the queue."""
    connection = await connect_any(settings.amqp_url)
    try:
        channel = await connection.channel()
        await declare_topology(channel, topology, settings.retry_base_delay_ms)
        dlq = await channel.get_queue(dlq_name(queue))
        found: list[DeadLetter] = []
        while len(found) < limit:
            message = await dlq.get(fail=False, no_ack=False)
            if message is None:
                break
            found.append(DeadLetter.of(message))
        # Closing the channel returns every unacked message to the queue, in order.
        await channel.close()
        return found
    finally:
        await connection.close()


async def replay_dead_letters(
    settings: Settings,
    topology: Topology,
    queue: str,
    limit: int,
    message_id: str | None = None,
) -> int:
    """Move up to `limit` dead letters (or only `message_id`) back to `queue`."""
    connection = await connect_any(settings.amqp_url)
    moved = 0
    try:
        channel = await connection.channel()
        await declare_topology(channel, topology, settings.retry_base_delay_ms)
        publisher = await ConfirmedPublisher.open(connection, settings.publish_timeout_s)
        dlq = await channel.get_queue(dlq_name(queue))
        while moved < limit:
            message = await dlq.get(fail=False, no_ack=False)
            if message is None:
                break
            if message_id is not None and message.message_id != message_id:
                continue  # left unacked: back in the queue when the channel closes
            await publisher.publish("", queue, replay_copy(message))
            await message.ack()
            moved += 1
        await channel.close()
        return moved
    finally:
        await connection.close()


def add_dlq_parser(subparsers: Any, queue: str) -> Any:
    dlq = subparsers.add_parser("dlq", help=f"inspect or replay the dead letters of {queue}")
    actions = dlq.add_subparsers(dest="action", required=True)
    show = actions.add_parser("list", help="show dead letters with their reasons")
    show.add_argument("--limit", type=int, default=100)
    replay = actions.add_parser("replay", help=f"move dead letters back to {queue}")
    replay.add_argument("--limit", type=int, default=1_000_000)
    replay.add_argument("--message-id", help="replay only this message")
    return dlq


def run_dlq_command(
    args: argparse.Namespace, settings: Settings, topology: Topology, queue: str
) -> int:
    if args.action == "list":
        letters = asyncio.run(list_dead_letters(settings, topology, queue, args.limit))
        print(f"{len(letters)} dead letter(s) in {dlq_name(queue)}")
        for letter in letters:
            print(
                f"- {letter.message_id}  type={letter.type}  kind={letter.kind}  "
                f"size={letter.size}B  failed_at={letter.failed_at}\n  reason: {letter.reason}"
            )
        return 0
    moved = asyncio.run(replay_dead_letters(settings, topology, queue, args.limit, args.message_id))
    print(f"moved {moved} dead letter(s) from {dlq_name(queue)} back to {queue}")
    return 0
