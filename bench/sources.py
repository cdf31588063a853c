"""Where the load generator's requests come from, and what it does with the answers.

`Cycle` sends prebuilt requests round-robin (floors, queries). `Commands` sends the order mix
and follows every accepted command to its projection through the read-your-writes channel.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

import orjson

from bench.mix import OrderBook, command_request

SAMPLE_LIMIT = 5000
"""Order ids kept for the query phase."""


@dataclass
class Clock:
    """Times relative to `go`, and the steady window in which rates are counted."""

    start: float = 0.0
    warmup_s: float = 0.0
    duration_s: float = 0.0

    def at(self, now: float) -> float:
        return now - self.start

    def steady(self, now: float) -> bool:
        return self.warmup_s <= now - self.start < self.duration_s


@dataclass
class Counts:
    """Per-second buckets plus a steady-window counter of one kind of event."""

    clock: Clock
    per_second: list[int] = field(default_factory=list)
    steady: int = 0
    total: int = 0

    def add(self, now: float) -> None:
        second = int(self.clock.at(now))
        if second >= 0:
            while len(self.per_second) <= second:
                self.per_second.append(0)
            self.per_second[second] += 1
        self.total += 1
        if self.clock.steady(now):
            self.steady += 1


class Source(Protocol):
    def next(self) -> tuple[bytes, object]: ...

    def answered(self, context: object, status: int, body: bytes, sent: float, now: float) -> None:
        """A response arrived for the request `next` returned with `context`."""


class Cycle:
    """Prebuilt requests, sent round-robin; answers are only counted."""

    def __init__(self, requests: Sequence[bytes], offset: int = 0) -> None:
        if not requests:
            raise ValueError("no requests to send")
        self._requests = list(requests)
        self._next = offset % len(self._requests)

    def next(self) -> tuple[bytes, object]:
        request = self._requests[self._next]
        self._next = (self._next + 1) % len(self._requests)
        return request, None

    def answered(self, context: object, status: int, body: bytes, sent: float, now: float) -> None:
        pass


CommandContext = tuple[str, str | None, int, float]
"""What `Commands.next` attaches to a request: kind, order id, lines, intended send time."""


@dataclass(slots=True)
class Pending:
    kind: str
    order_id: str
    lines: int
    sent_at: float
    """When the request's bytes were written to the connection: a command's latency starts
    there, so one that is visible before its 202 is read still counts its whole way."""
    intended_at: float


class Commands:
    """The order-command mix, with each accepted command followed to its projection."""

    def __init__(self, clock: Clock, book: OrderBook, creates: list[tuple[bytes, int]]) -> None:
        self.clock = clock
        self.book = book
        self._creates = creates
        self._n = 0
        self.pending: dict[str, Pending] = {}
        self.early: dict[str, tuple[float, bool]] = {}
        """Outcomes that arrived before their 202 (or are another generator's)."""
        self.accepted = Counts(clock)
        self.visible = Counts(clock)
        self.sent = collections.Counter[str]()
        self.rejected = 0
        self.latencies_ms: list[float] = []
        self.intended_latencies_ms: list[float] = []
        self.samples: list[tuple[float, float, str]] = []
        """(sent at in s, sent -> visible in ms, command id) of each visible command."""
        self.orders: list[str] = []
        self.last_visible = 0.0
        self.intended_at = 0.0
        """Set by the open loop before `next`: when the request should have left."""

    def next(self) -> tuple[bytes, object]:
        kind, order_id = self.book.next()
        self._n += 1
        self.sent[kind] += 1
        if order_id is None:
            request, lines = self._creates[self._n % len(self._creates)]
            return request, (kind, None, lines, self.intended_at)
        return command_request(kind, order_id, self._n), (kind, order_id, 0, self.intended_at)

    def answered(self, context: object, status: int, body: bytes, sent: float, now: float) -> None:
        kind, order_id, lines, intended = cast(CommandContext, context)
        if status != 202:
            self.book.refused(kind, order_id)
            return
        ids = orjson.loads(body)
        command_id: str = ids["command_id"]
        self.accepted.add(now)
        pending = Pending(kind, ids["order_id"], lines, sent, intended or sent)
        early = self.early.pop(command_id, None)
        if early is None:
            self.pending[command_id] = pending
        else:
            self._settle(command_id, pending, early[0], visible=early[1])

    def on_message(self, payload: bytes, now: float) -> None:
        message = orjson.loads(payload)
        command_id = message.get("command_id")
        if message.get("projected") is True:
            visible = True
        elif message.get("status") in ("rejected", "failed"):
            visible = False
        else:
            return  # not an outcome: only projections and rejections settle a command
        pending = self.pending.pop(command_id, None)
        if pending is None:
            self.early[command_id] = (now, visible)
        else:
            self._settle(command_id, pending, now, visible=visible)

    def _settle(self, cid: str, pending: Pending, now: float, *, visible: bool) -> None:
        if not visible:
            self.rejected += 1
            self.book.rejected(pending.order_id)
            return
        self.visible.add(now)
        self.last_visible = max(self.last_visible, now)
        latency = (now - pending.sent_at) * 1000
        self.latencies_ms.append(latency)
        self.intended_latencies_ms.append((now - pending.intended_at) * 1000)
        self.samples.append((round(self.clock.at(pending.sent_at), 4), round(latency, 3), cid))
        self.book.visible(pending.kind, pending.order_id, pending.lines)
        if pending.kind == "create" and len(self.orders) < SAMPLE_LIMIT:
            self.orders.append(pending.order_id)

    def prune_early(self, now: float, older_than_s: float = 5.0) -> None:
        """Drop outcomes nobody claimed: they belong to another generator process."""
        stale = [cid for cid, (t, _) in self.early.items() if now - t > older_than_s]
        for cid in stale:
            del self.early[cid]
