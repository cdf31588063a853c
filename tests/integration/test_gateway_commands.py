"""The gateway's write side, end to end: HTTP in, the `orders.commands` queue and Redis out.

No command worker runs here, so every accepted command stays in the queue to be inspected.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aio_pika
import httpx
import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from common.domain import Registry, stream_id
from common.readmodel.keys import Keys
from common.settings import Settings
from gateway.idempotency import HEADER
from gateway.runtime import redis_client_name
from harness.isolation import Endpoints
from harness.processes import Proc, Processes, free_port, http_status, wait_for
from orders.contracts import AddItem, CancelOrder, CreateOrder, OrderCommand, ShipOrder
from tests.support.domains import registry_of, topology_of

pytestmark = pytest.mark.integration

PROBLEM_JSON = "application/problem+json"

ORDER: dict[str, Any] = {
    "customer_id": "customer-1",
    "items": [{"product_id": "sku-1", "quantity": 2, "price": "10.50"}],
    "shipping_address": {
        "recipient": "Ada Lovelace",
        "street": "1 Analytical Row",
        "city": "London",
        "postal_code": "EC1A 1BB",
        "country": "GB",
    },
}
ITEM: dict[str, Any] = {"product_id": "sku-2", "quantity": 1, "price": "0.1"}


def with_item(**changes: Any) -> dict[str, Any]:
    """ORDER with its one item changed."""
    return {**ORDER, "items": [{**ORDER["items"][0], **changes}]}


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def gateway(processes: Processes) -> Proc:
    return processes.start("gateway")


@pytest.fixture
async def client(gateway: Proc) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        yield http


@pytest.fixture
async def channel(gateway: Proc, isolated_settings: Settings) -> AsyncIterator[AbstractChannel]:
    """A channel on the test's vhost, once the gateway has declared the topology."""
    connection = await aio_pika.connect(isolated_settings.amqp_url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


@pytest.fixture
def registry(isolated_settings: Settings) -> Registry:
    return registry_of(isolated_settings)


@pytest.fixture
def commands_queue(isolated_settings: Settings) -> str:
    return topology_of(isolated_settings).commands_queue


async def queue_depth(channel: AbstractChannel, commands_queue: str) -> int:
    queue = await channel.declare_queue(commands_queue, passive=True)
    return int(queue.declaration_result.message_count)


async def take(
    channel: AbstractChannel, commands_queue: str, count: int, within_s: float = 5
) -> list[Any]:
    """Exactly `count` messages from the commands queue; fails if fewer arrive in time."""
    queue = await channel.declare_queue(commands_queue, passive=True)
    messages: list[AbstractIncomingMessage] = []
    deadline = time.monotonic() + within_s
    while len(messages) < count:
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            messages.append(message)
        elif time.monotonic() > deadline:
            raise AssertionError(f"{len(messages)} of {count} messages arrived in {within_s}s")
        else:
            await asyncio.sleep(0.02)
    return messages


def assert_accepted(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 202, response.text
    body: dict[str, str] = response.json()
    assert set(body) == {"command_id", "order_id"}
    assert response.headers["location"] == f"/commands/{body['command_id']}"
    uuid.UUID(body["order_id"])
    return body


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> Any:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert problem["status"] == status
    assert {"type", "title", "detail"} <= set(problem)
    if field is not None:
        fields = [error["field"] for error in problem["errors"]]
        assert field in fields, (field, problem)
    return problem


def assert_wire_format(message: Any, command: Any, correlation_id: str | None = None) -> None:
    assert message.message_id == str(command.command_id)
    assert message.type == command.type
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.app_id == "gateway"
    assert message.timestamp is not None
    assert message.headers["schema_version"] == 1
    assert message.headers["stream_id"] == stream_id("Order", command.order_id)
    assert message.correlation_id == str(command.correlation_id)
    if correlation_id is not None:
        assert message.correlation_id == correlation_id


# --- accepted commands ------------------------------------------------------------------------


async def test_create_order_is_confirmed_queued_and_tracked(
    client: httpx.AsyncClient,
    channel: AbstractChannel,
    registry: Registry,
    commands_queue: str,
) -> None:
    correlation_id = str(uuid.uuid4())
    response = await client.post(
        "/orders", json=ORDER, headers={"X-Correlation-Id": correlation_id}
    )
    ids = assert_accepted(response)
    assert response.headers["x-correlation-id"] == correlation_id

    [message] = await take(channel, commands_queue, 1)
    command = registry.parse_command(message.body)
    assert isinstance(command, CreateOrder)
    assert_wire_format(message, command, correlation_id)
    assert str(command.command_id) == ids["command_id"]
    assert str(command.order_id) == ids["order_id"]
    assert command.customer_id == "customer-1"
    assert command.items[0].price == Decimal("10.50")
    assert command.items[0].quantity == 2
    assert command.fingerprint

    status = await client.get(response.headers["location"])
    assert status.status_code == 200
    assert status.json() == {
        "command_id": ids["command_id"],
        "type": "CreateOrder",
        "order_id": ids["order_id"],
        "status": "accepted",
        "reason": None,
        "version": None,
    }


async def test_item_ship_and_cancel_commands_are_queued(
    client: httpx.AsyncClient,
    channel: AbstractChannel,
    registry: Registry,
    commands_queue: str,
) -> None:
    order_id = str(uuid.uuid4())
    responses = [
        await client.post(f"/orders/{order_id}/items", json=ITEM),
        await client.post(f"/orders/{order_id}/ship"),
        await client.post(f"/orders/{order_id}/ship", json={}),
        await client.delete(f"/orders/{order_id}", params={"reason": "  changed my mind "}),
    ]
    accepted = [assert_accepted(response) for response in responses]
    assert {ids["order_id"] for ids in accepted} == {order_id}

    messages = await take(channel, commands_queue, 4)
    commands = [registry.parse_command(message.body) for message in messages]
    for message, command, ids, response in zip(
        messages, commands, accepted, responses, strict=True
    ):
        assert_wire_format(message, command, response.headers["x-correlation-id"])
        assert isinstance(command, OrderCommand)
        assert str(command.command_id) == ids["command_id"]
        assert str(command.order_id) == order_id
    add, ship, ship_again, cancel = commands
    assert isinstance(add, AddItem)
    assert add.item.price == Decimal("0.1")
    assert isinstance(ship, ShipOrder)
    assert isinstance(ship_again, ShipOrder)
    assert isinstance(cancel, CancelOrder)
    assert cancel.reason == "changed my mind"

    for ids, type_ in zip(
        accepted, ("AddItem", "ShipOrder", "ShipOrder", "CancelOrder"), strict=True
    ):
        status = (await client.get(f"/commands/{ids['command_id']}")).json()
        assert (status["type"], status["status"]) == (type_, "accepted")

    metrics = (await client.get("/metrics")).text
    assert 'route="/orders/{order_id}/items"' in metrics
    assert order_id not in metrics


async def test_unknown_command_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"/commands/{uuid.uuid4()}"), 404)


async def test_correlation_id_is_made_when_missing_or_not_a_uuid(
    client: httpx.AsyncClient,
    channel: AbstractChannel,
    commands_queue: str,
) -> None:
    response = await client.post("/orders", json=ORDER, headers={"X-Correlation-Id": "abc"})
    assert_accepted(response)
    made = response.headers["x-correlation-id"]
    assert made != "abc"
    [message] = await take(channel, commands_queue, 1)
    assert message.correlation_id == str(uuid.UUID(made))


ORDER_ID = "3c0d6d1e-8f43-4d5e-9a7b-2f1c7e0e2a11"


# --- media types -------------------------------------------------------------------------------
# Refused input (422, 413, 415, 405, 404) is tested in process: tests/http/test_refusals.py.


async def test_a_json_media_type_with_utf8_charset_is_accepted(client: httpx.AsyncClient) -> None:
    payload = httpx.Request("POST", "/", json=ORDER).content
    ok = await client.post(
        "/orders", content=payload, headers={"Content-Type": "application/json; charset=UTF-8"}
    )
    assert_accepted(ok)


# --- idempotency ------------------------------------------------------------------------------


async def test_same_idempotency_key_gives_same_ids_and_republishes(
    client: httpx.AsyncClient,
    channel: AbstractChannel,
    commands_queue: str,
) -> None:
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    first = assert_accepted(await client.post("/orders", json=ORDER, headers=key))
    # Same request spelled differently (key order, whitespace) is the same request.
    reordered = {k: ORDER[k] for k in reversed(list(ORDER))}
    second = assert_accepted(await client.post("/orders", json=reordered, headers=key))
    assert first == second
    messages = await take(channel, commands_queue, 2)
    assert {m.message_id for m in messages} == {first["command_id"]}

    other = assert_problem(
        await client.post("/orders", json=with_item(quantity=3), headers=key),
        422,
        "Idempotency-Key",
    )
    assert "different request" in other["detail"]
    assert_problem(
        await client.post(f"/orders/{first['order_id']}/ship", headers=key), 422, "Idempotency-Key"
    )
    assert await queue_depth(channel, commands_queue) == 0

    ship_key = {"Idempotency-Key": "ship it"}
    ship = assert_accepted(await client.post(f"/orders/{first['order_id']}/ship", headers=ship_key))
    assert ship == assert_accepted(
        await client.post(f"/orders/{first['order_id']}/ship", json={}, headers=ship_key)
    )
    cancel_key = {"Idempotency-Key": "cancel-1"}
    cancel_path = f"/orders/{first['order_id']}"
    cancel = assert_accepted(
        await client.delete(cancel_path, params={"reason": "a"}, headers=cancel_key)
    )
    assert cancel["command_id"] != ship["command_id"]
    assert_problem(
        await client.delete(cancel_path, params={"reason": "b"}, headers=cancel_key),
        422,
        "Idempotency-Key",
    )


async def test_a_key_whose_record_expired_still_refuses_a_different_request(
    client: httpx.AsyncClient,
    channel: AbstractChannel,
    commands_queue: str,
    redis_client: aioredis.Redis,
    isolated_settings: Settings,
) -> None:
    key = f"order-{uuid.uuid4()}"
    first = assert_accepted(await client.post("/orders", json=ORDER, headers={HEADER: key}))
    status_url = f"/commands/{first['command_id']}"
    first_status = (await client.get(status_url)).json()
    assert first_status["type"] == "CreateOrder"
    # The key's record expires (24 h) while the command's status lives on (7 days).
    keys = Keys(isolated_settings.redis_key_prefix)
    assert await redis_client.delete(keys.idempotency(key)) == 1

    other_path = f"/orders/{first['order_id']}/items"
    refused = await client.post(other_path, json=ITEM, headers={HEADER: key})
    assert "different request" in assert_problem(refused, 422, HEADER)["detail"]
    assert (await client.get(status_url)).json() == first_status
    # The same request again is still the same command.
    assert assert_accepted(await client.post("/orders", json=ORDER, headers={HEADER: key})) == (
        first
    )
    messages = await take(channel, commands_queue, 2)
    assert [m.type for m in messages] == ["CreateOrder", "CreateOrder"]
    assert await queue_depth(channel, commands_queue) == 0


async def test_concurrent_duplicates_all_get_the_same_ids(
    client: httpx.AsyncClient,
    channel: AbstractChannel,
    commands_queue: str,
) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    responses = await asyncio.gather(
        *(client.post("/orders", json=ORDER, headers=key) for _ in range(20))
    )
    answers = [assert_accepted(response) for response in responses]
    assert all(answer == answers[0] for answer in answers)
    messages = await take(channel, commands_queue, 20)
    assert {m.message_id for m in messages} == {answers[0]["command_id"]}


async def test_the_longest_idempotency_key_is_accepted(client: httpx.AsyncClient) -> None:
    assert_accepted(
        await client.post("/orders", json=ORDER, headers={"Idempotency-Key": "k" * 200})
    )


# --- unavailable broker, lost connection ------------------------------------------------------


def start_unready(processes: Processes, amqp_url: str) -> Proc:
    proc = processes.start(
        "gateway", "--broker-wait", "0", extra_env={"AMQP_URL": amqp_url}, wait=False
    )
    wait_for(lambda: http_status(f"{proc.base_url}/health/live") == 200, 15, "gateway to live")
    return proc


@pytest.mark.parametrize("broken", ["closed port", "missing vhost"])
async def test_commands_are_503_while_the_broker_is_unavailable(
    processes: Processes, isolated_settings: Settings, broken: str
) -> None:
    url = (
        f"amqp://guest:guest@127.0.0.1:{free_port()}/"
        if broken == "closed port"
        else isolated_settings.amqp_url.rsplit("/", 1)[0] + "/no-such-vhost"
    )
    proc = start_unready(processes, url)
    async with httpx.AsyncClient(base_url=proc.base_url, timeout=10) as http:
        ready = await http.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"rabbitmq": False, "redis": True}
        for response in (
            await http.post("/orders", json=ORDER, headers={"Idempotency-Key": "k1"}),
            await http.post(f"/orders/{ORDER_ID}/items", json=ITEM),
            await http.delete(f"/orders/{ORDER_ID}", params={"reason": "x"}),
        ):
            assert_problem(response, 503)
            assert int(response.headers["retry-after"]) > 0


async def test_without_redis_commands_are_still_queued_but_keyed_ones_are_503(
    processes: Processes,
    isolated_settings: Settings,
    commands_queue: str,
) -> None:
    proc = processes.start(
        "gateway", extra_env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, wait=False
    )
    wait_for(lambda: http_status(f"{proc.base_url}/health/live") == 200, 15, "gateway to live")
    async with httpx.AsyncClient(base_url=proc.base_url, timeout=10) as http:
        ready = await http.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"] is False

        # Queued safely, only its status is missing: still a 202.
        accepted = assert_accepted(await http.post("/orders", json=ORDER))
        # The key cannot be checked, so the command must not be sent.
        keyed = await http.post("/orders", json=ORDER, headers={"Idempotency-Key": "k"})
        assert_problem(keyed, 503)
        assert "retry-after" in keyed.headers
        assert_problem(await http.get(f"/commands/{accepted['command_id']}"), 503)

    connection = await aio_pika.connect(isolated_settings.amqp_url)
    try:
        [message] = await take(await connection.channel(), commands_queue, 1)
        assert message.message_id == accepted["command_id"]
    finally:
        await connection.close()


async def test_writes_survive_redis_dropping_the_gateways_connections(
    client: httpx.AsyncClient,
    channel: AbstractChannel,
    redis_client: aioredis.Redis,
    isolated_settings: Settings,
    commands_queue: str,
) -> None:
    assert_accepted(await client.post("/orders", json=ORDER, headers={"Idempotency-Key": "a"}))
    name = redis_client_name(isolated_settings.redis_key_prefix)
    clients = await redis_client.client_list()
    killed = [c["id"] for c in clients if c.get("name") == name]
    assert killed, clients
    for client_id in killed:
        await redis_client.client_kill_filter(_id=client_id)

    keyed = assert_accepted(
        await client.post("/orders", json=ORDER, headers={"Idempotency-Key": "b"})
    )
    status = await client.get(f"/commands/{keyed['command_id']}")
    assert status.json()["status"] == "accepted"
    await take(channel, commands_queue, 2)


async def test_publishing_resumes_after_the_connection_is_closed(
    client: httpx.AsyncClient,
    channel: AbstractChannel,
    services: Endpoints,
    gateway: Proc,
    isolated_settings: Settings,
    commands_queue: str,
) -> None:
    assert_accepted(await client.post("/orders", json=ORDER))
    vhost = isolated_settings.amqp_url.rsplit("/", 1)[1]

    def gateway_connections() -> list[str]:
        found = services.management("GET", f"/vhosts/{vhost}/connections")
        return [
            c["name"]
            for c in found
            if c.get("client_properties", {}).get("connection_name") == "gateway"
        ]

    [name] = wait_for(gateway_connections, 15, "the gateway's connection to be listed")
    services.management("DELETE", f"/connections/{urllib.parse.quote(name, safe='')}")

    async def accepted_again() -> httpx.Response:
        deadline = time.monotonic() + 15
        while True:
            response = await client.post("/orders", json=ORDER)
            if response.status_code == 202 or time.monotonic() > deadline:
                return response
            assert_problem(response, 503)
            await asyncio.sleep(0.05)

    assert_accepted(await accepted_again())
    await take(channel, commands_queue, 2)


# --- API keys ---------------------------------------------------------------------------------


async def test_with_api_keys_a_known_key_is_served_and_never_logged(
    processes: Processes,
) -> None:
    """Refusals without a known key are tested in process (tests/http/test_refusals.py)."""
    proc = processes.start("gateway", extra_env={"API_KEYS": "first-key, second-key"})
    async with httpx.AsyncClient(base_url=proc.base_url, timeout=10) as http:
        assert_problem(await http.post("/orders", json=ORDER), 401)
        assert (await http.get("/health/ready")).status_code == 200

        response = await http.post(
            "/orders", json=ORDER, headers={"Authorization": "Bearer second-key"}
        )
        assert_accepted(response)
        assert "second-key" not in proc.log()


async def test_two_api_keys_with_the_same_idempotency_key_get_two_commands(
    processes: Processes,
) -> None:
    proc = processes.start("gateway", extra_env={"API_KEYS": "first-key,second-key"})
    key = {HEADER: "order-1"}
    first_client = {"Authorization": "Bearer first-key", **key}
    second_client = {"Authorization": "Bearer second-key", **key}
    async with httpx.AsyncClient(base_url=proc.base_url, timeout=10) as http:
        first = assert_accepted(await http.post("/orders", json=ORDER, headers=first_client))
        second = assert_accepted(
            await http.post("/orders", json=with_item(quantity=5), headers=second_client)
        )
        assert first["command_id"] != second["command_id"]
        assert first["order_id"] != second["order_id"]
        # Each client's key still names its own command.
        assert first == assert_accepted(
            await http.post("/orders", json=ORDER, headers=first_client)
        )
        assert_problem(await http.post("/orders", json=ORDER, headers=second_client), 422, HEADER)


async def test_health_endpoints(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    ready = await client.get("/health/ready")
    assert ready.json() == {"status": "ok", "checks": {"rabbitmq": True, "redis": True}}
    assert "orders_http_request_seconds" in (await client.get("/metrics")).text
