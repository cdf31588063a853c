"""The order-command load over HTTP, as a client sends it, and the same plan as commands.

Every command carries its own `Idempotency-Key`, so its ids are known before it is sent and a
client retry (after a 503 or a dropped connection) is the same command, never a second one.
`LoadDriver` retries until the gateway answers 202, at most `concurrency` requests in flight and
at most `rate` new commands a second; what counts is the set of commands answered 202. Tests
that publish to the commands queue directly take the same plan as contracts (`command_mix`).

(The benchmark's generator, `bench/load.py`, is not this one: it measures the system's ceiling
on a 2-core machine, so it sends prebuilt bytes over raw sockets from a process of its own; it
takes its order bodies from here.)
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx

from gateway.idempotency import aggregate_id_for, command_id_for
from orders.contracts import AddItem, CancelOrder, Command, CreateOrder, ShipOrder
from orders.domain import ORDER

ADDRESS = {
    "recipient": "Load Tester",
    "street": "1 Queue Lane",
    "city": "Rabbitburg",
    "postal_code": "10115",
    "country": "DE",
}
"""The shipping address of every order the load creates."""
RETRY_STATUSES = frozenset({502, 503, 504})
"""Answers after which a client tries the same request again (same Idempotency-Key)."""


@dataclass(frozen=True)
class Request:
    """One command as an HTTP request; its ids follow from its idempotency key."""

    key: str
    kind: str
    method: str
    path: str
    order_id: UUID
    body: dict[str, Any] | None = None
    params: dict[str, str] | None = None

    @property
    def command_id(self) -> UUID:
        return command_id_for(self.key)

    def command(self) -> Command:
        """The command the gateway would publish for this request (fresh correlation id)."""
        ids = {**envelope(self.order_id), "command_id": self.command_id}
        match self.kind:
            case "create":
                return CreateOrder.model_validate({**(self.body or {}), **ids})
            case "add":
                return AddItem.model_validate({"item": self.body, **ids})
            case "ship":
                return ShipOrder.model_validate(ids)
            case "cancel":
                return CancelOrder.model_validate({**ids, **(self.params or {})})
        raise ValueError(f"no command for a {self.kind} request")


def envelope(order_id: UUID) -> dict[str, Any]:
    """What every command carries besides its own fields, fresh ids each call."""
    return {
        "command_id": uuid.uuid4(),
        "order_id": order_id,
        "correlation_id": uuid.uuid4(),
        "issued_at": datetime.now(UTC),
    }


def order_id_for(key: str) -> UUID:
    """The id of the order a create with Idempotency-Key `key` makes, as the gateway derives
    it."""
    return aggregate_id_for(key, ORDER.stream_type)


@dataclass(frozen=True)
class LoadShape:
    """How much load: `orders` orders, each taking `additions` item additions sent
    concurrently with everything else; one order in five is shipped, one in seven cancelled,
    racing the additions."""

    orders: int = 150
    additions: int = 12
    concurrency: int = 24
    rate: float = 150.0
    """New commands per second at most (retries not counted)."""
    seed: int = 11
    finishes_race: bool = True
    """Each ship or cancel goes somewhere in the second half of the additions, racing the
    order's remaining ones; False: they all come after every addition."""

    @property
    def commands(self) -> int:
        finishing = sum(1 for n in range(self.orders) if n % 5 == 0 or n % 7 == 0)
        return self.orders * (1 + self.additions) + finishing


def plan(shape: LoadShape, run: str) -> tuple[list[Request], list[Request]]:
    """The creates, then everything else in a shuffled order."""
    rng = random.Random(shape.seed)
    creates = []
    for n in range(shape.orders):
        key = f"{run}-create-{n}"
        creates.append(
            Request(
                key,
                "create",
                "POST",
                "/orders",
                order_id_for(key),
                body={
                    "customer_id": f"chaos-{n % 13}",
                    "items": [{"product_id": "base", "quantity": 1, "price": "2.50"}],
                    "shipping_address": ADDRESS,
                },
            )
        )
    rest: list[Request] = []
    for n, create in enumerate(creates):
        order = create.order_id
        for a in range(shape.additions):
            rest.append(
                Request(
                    f"{run}-add-{n}-{a}",
                    "add",
                    "POST",
                    f"/orders/{order}/items",
                    order,
                    body={"product_id": f"sku-{a % 4}", "quantity": 1 + a % 3, "price": "0.75"},
                )
            )
    rng.shuffle(rest)
    for n, create in enumerate(creates):
        order = create.order_id
        # Somewhere in the second half, so it races the order's remaining additions.
        at = rng.randrange(len(rest) // 2, len(rest) + 1) if shape.finishes_race else len(rest)
        if n % 5 == 0:
            rest.insert(
                at, Request(f"{run}-ship-{n}", "ship", "POST", f"/orders/{order}/ship", order)
            )
        elif n % 7 == 0:
            rest.insert(
                at,
                Request(
                    f"{run}-cancel-{n}",
                    "cancel",
                    "DELETE",
                    f"/orders/{order}",
                    order,
                    params={"reason": "chaos"},
                ),
            )
    return creates, rest


def command_mix(
    orders: int, additions_per_order: int, seed: int = 7
) -> tuple[list[Command], list[Command]]:
    """The load's plan as commands to publish: the creates, then the item additions shuffled,
    then a ship or a cancel for some orders."""
    shape = LoadShape(orders, additions_per_order, seed=seed, finishes_race=False)
    creates, rest = plan(shape, uuid.uuid4().hex[:10])
    return [r.command() for r in creates], [r.command() for r in rest]


class Pacer:
    """At most `rate` starts a second, shared by every sender."""

    def __init__(self, rate: float | None) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._next = time.monotonic()
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self._interval:
            return
        async with self._lock:
            now = time.monotonic()
            self._next = max(self._next + self._interval, now)
            delay = self._next - now
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass
class LoadDriver:
    """Sends a planned load and remembers every command the gateway answered 202."""

    client: httpx.AsyncClient
    shape: LoadShape
    give_up_after_s: float = 180.0
    """How long one command is retried before the driver gives up on it."""
    accepted: dict[UUID, Request] = field(default_factory=dict)
    answers: Counter[str] = field(default_factory=Counter)
    """Every answer seen, retries included: status code, or the transport error's name."""
    given_up: list[Request] = field(default_factory=list)
    refused: list[tuple[Request, int, str]] = field(default_factory=list)
    """Commands answered with a 4xx, or a 5xx other than 502-504: a bug in the driver or the
    gateway."""
    planned: int = 0
    done: bool = False
    _progress: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def run(self, run: str) -> None:
        creates, rest = plan(self.shape, run)
        self.planned = len(creates) + len(rest)
        pacer = Pacer(self.shape.rate)
        for phase in (creates, rest):
            queue: asyncio.Queue[Request] = asyncio.Queue()
            for request in phase:
                queue.put_nowait(request)
            senders = [
                asyncio.create_task(self._send_all(queue, pacer))
                for _ in range(self.shape.concurrency)
            ]
            await asyncio.gather(*senders)
        async with self._progress:
            self.done = True
            self._progress.notify_all()

    async def until_accepted(self, count: int) -> None:
        """Return once `count` commands were accepted (or the load is over)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.done or len(self.accepted) >= count)

    async def _send_all(self, queue: asyncio.Queue[Request], pacer: Pacer) -> None:
        while not queue.empty():
            request = queue.get_nowait()
            await pacer.wait()
            await self.send(request)

    async def send(self, request: Request) -> int | None:
        """Send `request` until the gateway answers something other than 'try again'; the
        final status code, or None when the driver gave up."""
        deadline = time.monotonic() + self.give_up_after_s
        backoff = 0.05
        headers = {"Idempotency-Key": request.key}
        while True:
            try:
                response = await self.client.request(
                    request.method,
                    request.path,
                    json=request.body,
                    params=request.params,
                    headers=headers,
                )
                self.answers[str(response.status_code)] += 1
                status: int | None = response.status_code
            except httpx.TransportError as exc:
                self.answers[type(exc).__name__] += 1
                status = None
            if status == 202:
                await self.accept(request)
                return status
            if status is not None and status not in RETRY_STATUSES:
                self.refused.append((request, status, response.text[:300]))
                return status
            if time.monotonic() + backoff > deadline:
                self.given_up.append(request)
                return None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def accept(self, request: Request) -> None:
        """Count `request` as answered 202 (or 201)."""
        async with self._progress:
            self.accepted[request.command_id] = request
            self._progress.notify_all()


def _probe(key: str) -> Request:
    return Request(
        key,
        "probe",
        "POST",
        "/orders",
        order_id_for(key),
        body={
            "customer_id": "chaos-probe",
            "items": [{"product_id": "probe", "quantity": 1, "price": "1.00"}],
            "shipping_address": ADDRESS,
        },
    )


async def time_to_recover(
    driver: LoadDriver, fault_started: float, run: str, timeout_s: float = 180.0
) -> float | None:
    """Seconds from `fault_started` until a new order sent now is created and visible in the
    views (`Prefer: wait`, answered 201). Probes are sent one after another until one is; like
    the load, a probe answered 502-504 or not at all is sent again with the same
    Idempotency-Key. Every probe answered 201 or 202 counts as an accepted command, any other
    answer as refused. None after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    n = 0
    probe: Request | None = None
    while time.monotonic() < deadline:
        if probe is None:
            n += 1
            probe = _probe(f"{run}-probe-{n}")
        try:
            response = await driver.client.post(
                probe.path,
                json=probe.body,
                headers={"Idempotency-Key": probe.key, "Prefer": "wait=5"},
            )
        except httpx.TransportError:
            await asyncio.sleep(0.1)
            continue
        if response.status_code in (201, 202):
            await driver.accept(probe)
            if response.status_code == 201:
                return time.monotonic() - fault_started
            probe = None
        elif response.status_code not in RETRY_STATUSES:
            driver.refused.append((probe, response.status_code, response.text[:300]))
            probe = None
        await asyncio.sleep(0.1)
    return None


async def time_to_read(
    driver: LoadDriver, fault_started: float, timeout_s: float = 120.0
) -> float | None:
    """Seconds from `fault_started` until every order the load created reads back (200), by
    queries alone; None after `timeout_s`."""
    orders = [r.order_id for r in driver.accepted.values() if r.kind == "create"]
    deadline = time.monotonic() + timeout_s
    pending = list(orders)
    while time.monotonic() < deadline:
        try:
            answers = await asyncio.gather(
                *(driver.client.get(f"/orders/{order_id}") for order_id in pending[:50])
            )
        except httpx.TransportError:
            answers = []
        done = {o for o, a in zip(pending, answers, strict=False) if a.status_code == 200}
        pending = [o for o in pending if o not in done]
        if not pending:
            return time.monotonic() - fault_started
        await asyncio.sleep(0.1)
    return None
