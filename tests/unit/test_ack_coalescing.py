"""Ack coalescing: one `basic.ack` for many finished messages, and never one that covers a
message still in flight."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aio_pika.abc import AbstractIncomingMessage

from common.messaging.consuming import AckCoalescer


class Delivery:
    """The part of an incoming message the coalescer uses, recording what the broker hears."""

    def __init__(self, tag: int, frames: list[tuple[int, bool]]) -> None:
        self.delivery_tag = tag
        self._frames = frames

    async def ack(self, multiple: bool = False) -> None:
        self._frames.append((self.delivery_tag, multiple))


def acked(frames: list[tuple[int, bool]], upto: int) -> set[int]:
    """The tags the broker counts as acknowledged after `frames`, of tags 1..upto."""
    done: set[int] = set()
    for tag, multiple in frames:
        done |= set(range(1, tag + 1)) if multiple else {tag}
    return done & set(range(1, upto + 1))


async def settle(coalescer: AckCoalescer) -> None:
    await asyncio.sleep(0)  # the turn of the loop in which the flush is scheduled
    await coalescer.drain()


def deliveries(n: int) -> tuple[list[tuple[int, bool]], list[Any]]:
    frames: list[tuple[int, bool]] = []
    return frames, [None, *(Delivery(tag, frames) for tag in range(1, n + 1))]


def message(delivery: Delivery) -> AbstractIncomingMessage:
    return cast(AbstractIncomingMessage, delivery)


async def test_messages_finished_together_share_one_frame() -> None:
    frames, d = deliveries(5)
    coalescer = AckCoalescer("q")
    for tag in (3, 1, 2, 5, 4):
        coalescer.finished(message(d[tag]))
    await settle(coalescer)
    assert frames == [(5, True)]


async def test_a_multiple_ack_stops_below_a_message_in_flight() -> None:
    frames, d = deliveries(6)
    coalescer = AckCoalescer("q")
    for tag in (1, 2, 4, 5):  # 3 is still being handled
        coalescer.finished(message(d[tag]))
    await settle(coalescer)
    assert acked(frames, 6) == {1, 2, 4, 5}
    assert (2, True) in frames
    assert all(not multiple for tag, multiple in frames if tag > 3), frames

    coalescer.finished(message(d[3]))
    coalescer.finished(message(d[6]))
    await settle(coalescer)
    assert acked(frames, 6) == {1, 2, 3, 4, 5, 6}
    assert frames[-1] == (6, True)  # 4 and 5 were acked alone; 3..6 now close the range


async def test_a_nacked_message_is_never_covered_before_its_nack() -> None:
    frames, d = deliveries(3)
    coalescer = AckCoalescer("q")
    coalescer.settled(message(d[2]))  # nacked back to the queue by the caller
    coalescer.finished(message(d[1]))
    coalescer.finished(message(d[3]))
    await settle(coalescer)
    assert frames == [(3, True)]  # the broker skips 2: its nack went out first


async def test_a_lone_message_is_acked_on_its_own() -> None:
    frames, d = deliveries(1)
    coalescer = AckCoalescer("q")
    coalescer.finished(message(d[1]))
    await settle(coalescer)
    assert frames == [(1, False)]
