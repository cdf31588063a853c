"""The order-command mix the load generator sends, as prebuilt HTTP requests.

Realistic, not random: orders are created, grow by a few lines, then are shipped or
cancelled, and a follow-up only ever goes to an order whose previous command is visible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal

import orjson

from bench.wire import http_request
from harness.load import ADDRESS

KINDS = ("create", "add", "ship", "cancel")


@dataclass(frozen=True, slots=True)
class Mix:
    """Weights of the next command's kind. A follow-up goes to an order whose previous
    command is already visible, like a user who sees the order before clicking again; with no
    such order, the generator creates one."""

    create: float = 0.35
    add: float = 0.45
    ship: float = 0.12
    cancel: float = 0.08
    max_items: int = 5
    """An order with this many lines is shipped instead of growing further."""

    def cumulative(self) -> list[float]:
        weights = [self.create, self.add, self.ship, self.cancel]
        total = sum(weights)
        if total <= 0 or min(weights) < 0:
            raise ValueError("mix weights must be non-negative and not all zero")
        running, out = 0.0, []
        for weight in weights:
            running += weight / total
            out.append(running)
        out[-1] = 1.0
        return out


class OrderBook:
    """The generator's picture of its orders: which are open and idle (visible, nothing in
    flight), and how many lines each has."""

    def __init__(self, mix: Mix, rng: random.Random) -> None:
        self._mix = mix
        self._rng = rng
        self._cumulative = mix.cumulative()
        self._ready: list[str] = []
        self._lines: dict[str, int] = {}
        self.closed = 0

    @property
    def ready(self) -> int:
        return len(self._ready)

    def next(self) -> tuple[str, str | None]:
        """The next command's kind and target order (None for a create)."""
        roll = self._rng.random()
        kind = next(k for k, edge in zip(KINDS, self._cumulative, strict=True) if roll < edge)
        if kind == "create" or not self._ready:
            return "create", None
        ready = self._ready
        index = self._rng.randrange(len(ready))
        order_id = ready[index]
        ready[index] = ready[-1]
        ready.pop()
        if kind == "add" and self._lines[order_id] >= self._mix.max_items:
            kind = "ship"
        return kind, order_id

    def visible(self, kind: str, order_id: str, lines: int = 1) -> None:
        """The command's effect is in the views: the order takes its next command."""
        if kind == "create":
            self._lines[order_id] = lines
            self._ready.append(order_id)
        elif kind == "add":
            self._lines[order_id] = self._lines.get(order_id, 0) + 1
            self._ready.append(order_id)
        else:
            self._lines.pop(order_id, None)
            self.closed += 1

    def refused(self, kind: str, order_id: str | None) -> None:
        """The gateway did not take a follow-up (no 202): the order is unchanged."""
        if kind != "create" and order_id is not None and order_id in self._lines:
            self._ready.append(order_id)

    def rejected(self, order_id: str) -> None:
        """The domain refused a command: the order's state is unknown; leave it alone."""
        self._lines.pop(order_id, None)


def create_body(rng: random.Random, customers: int) -> tuple[bytes, int]:
    """A realistic create-order body (1-3 lines) and its number of lines."""
    lines = rng.randint(1, 3)
    items = [
        {
            "product_id": f"sku-{rng.randrange(200)}",
            "quantity": rng.randint(1, 4),
            "price": str(Decimal(rng.randint(100, 9999)).scaleb(-2)),
        }
        for _ in range(lines)
    ]
    body = {
        "customer_id": f"cust-{rng.randrange(customers)}",
        "items": items,
        "shipping_address": ADDRESS,
    }
    return orjson.dumps(body), lines


def create_requests(seed: int, customers: int, count: int = 256) -> list[tuple[bytes, int]]:
    """Prebuilt `POST /orders` requests and their line counts."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        body, lines = create_body(rng, customers)
        out.append((http_request("POST", "/orders", body), lines))
    return out


ADD_BODIES = [
    orjson.dumps({"product_id": f"sku-{n}", "quantity": 1 + n % 3, "price": f"{1 + n % 50}.25"})
    for n in range(64)
]


def command_request(kind: str, order_id: str, n: int) -> bytes:
    if kind == "add":
        return http_request("POST", f"/orders/{order_id}/items", ADD_BODIES[n % len(ADD_BODIES)])
    if kind == "ship":
        return http_request("POST", f"/orders/{order_id}/ship")
    if kind == "cancel":
        return http_request("DELETE", f"/orders/{order_id}?reason=changed+my+mind")
    raise ValueError(kind)
