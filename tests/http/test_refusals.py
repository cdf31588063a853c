"""The gateway's answers to requests it refuses on their input, in process through the ASGI app.

The app is made but its lifespan never runs, so no request here can reach RabbitMQ or Redis: one
that tried would fail on the missing runtime. A refused request queues nothing by construction.
What needs a service (a search, a view) is tested against real processes in `tests/integration/`;
a 202 in process, with a publisher that records commands, in `test_openapi_commands.py`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.idempotency import HEADER
from tests.support.offline import offline_settings

PROBLEM_JSON = "application/problem+json"
ADDRESS = {
    "recipient": "Ada Lovelace",
    "street": "12 St James's Square",
    "city": "London",
    "postal_code": "SW1Y 4JH",
    "country": "GB",
}
ITEM: dict[str, Any] = {"product_id": "sku-1", "quantity": 1, "price": "1.00"}
ORDER: dict[str, Any] = {"customer_id": "refused", "items": [ITEM], "shipping_address": ADDRESS}
SOME_ORDER = str(uuid.uuid4())
FULL_WIDTH_UUID = "".join(chr(0xFF10 + int(c)) if c.isdigit() else c for c in SOME_ORDER)
"""What `uuid.UUID()` alone would take: its hex parsing reads any Unicode digit."""


@pytest.fixture(scope="module")
def transport() -> httpx.ASGITransport:
    return httpx.ASGITransport(app=create_app(offline_settings()))


@pytest.fixture
async def client(transport: httpx.ASGITransport) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        yield http


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> None:
    """A `status` answer in problem+json (type, title, status, detail), naming `field`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["status"] == status
    assert body["type"]
    assert body["title"]
    assert body["detail"]
    if field is not None:
        assert any(field in error["field"] for error in body["errors"]), body


def with_item(**changes: Any) -> dict[str, Any]:
    return {**ORDER, "items": [{**ITEM, **changes}]}


async def post_raw(
    client: httpx.AsyncClient,
    path: str,
    body: bytes,
    content_type: str | None = "application/json",
) -> httpx.Response:
    headers = {"content-type": content_type} if content_type is not None else {}
    return await client.post(path, content=body, headers=headers)


# --- bodies -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"customer_id": }',
        b"[]",
        b"[1, 2]",
        b"null",
        b'"an order"',
        b"{}",
        b'{"customer_id": "a"} trailing',
        b"\xff\xfe\x00{",
        b'{"customer_id": "\\ud800"}',
        b"NaN",
        b"[" * 30_000 + b"]" * 30_000,
        b'{"customer_id": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"}",
        b'{"items": [' + b"[" * 5_000 + b"]" * 5_000 + b"]}",
    ],
    ids=lambda body: repr(body[:40]),
)
async def test_malformed_bodies_are_422_naming_what_is_wrong(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await post_raw(client, "/orders", body)
    assert_problem(response, 422)
    assert response.json()["errors"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"customer_id": "客户"}, "customer_id"),
        ({"customer_id": "a\x00b"}, "customer_id"),
        ({"customer_id": "💩"}, "customer_id"),
        ({"customer_id": "x" * 65}, "customer_id"),
        ({"discount": 5}, "discount"),
        ({"items": []}, "items"),
        ({"items": [ITEM] * 101}, "items"),
        ({"items": [{**ITEM, "product_id": "é"}]}, "items.0.product_id"),
        ({"items": [{**ITEM, "quantity": 0}]}, "items.0.quantity"),
        ({"items": [{**ITEM, "quantity": -1}]}, "items.0.quantity"),
        ({"items": [{**ITEM, "quantity": 1.5}]}, "items.0.quantity"),
        ({"items": [{**ITEM, "quantity": "1"}]}, "items.0.quantity"),
        ({"items": [{**ITEM, "quantity": 10**40}]}, "items.0.quantity"),
        ({"items": [{**ITEM, "price": "1e400"}]}, "items.0.price"),
        ({"items": [{**ITEM, "price": "Infinity"}]}, "items.0.price"),
        ({"items": [{**ITEM, "price": "0.001"}]}, "items.0.price"),
        ({"items": [{**ITEM, "price": 1.005}]}, "items.0.price"),
        ({"items": [{**ITEM, "price": "-1"}]}, "items.0.price"),
        ({"items": [{**ITEM, "price": True}]}, "items.0.price"),
        ({"items": [{**ITEM, "colour": "red"}]}, "items.0.colour"),
        ({"shipping_address": {**ADDRESS, "recipient": "Ada\x00Lovelace"}}, "recipient"),
        ({"shipping_address": {**ADDRESS, "country": "gb"}}, "shipping_address.country"),
        ({"shipping_address": {**ADDRESS, "country": "ÜK"}}, "shipping_address.country"),
    ],
    ids=repr,
)
async def test_invalid_fields_are_422_naming_the_field(
    client: httpx.AsyncClient, changes: dict[str, Any], field: str
) -> None:
    assert_problem(await client.post("/orders", json={**ORDER, **changes}), 422, field)


@pytest.mark.parametrize("path", ["/orders", f"/orders/{SOME_ORDER}/items"])
async def test_no_body_at_all_is_a_missing_body(client: httpx.AsyncClient, path: str) -> None:
    response = await client.post(path)
    assert_problem(response, 422, "body")


@pytest.mark.parametrize(
    "order_id",
    [SOME_ORDER.replace("-", ""), "{" + SOME_ORDER + "}", "urn:uuid:" + SOME_ORDER],
    ids=repr,
)
@pytest.mark.parametrize(
    ("method", "template"),
    [("POST", "/orders/{}/items"), ("POST", "/orders/{}/ship"), ("DELETE", "/orders/{}?reason=r")],
)
async def test_order_ids_are_uuids_as_written_with_hyphens(
    client: httpx.AsyncClient, method: str, template: str, order_id: str
) -> None:
    """The document's `format: uuid` is the hyphenated form; the other spellings pydantic reads
    are refused, so that the document and the gateway agree."""
    body = ITEM if template.endswith("items") else None
    response = await client.request(method, template.format(order_id), json=body)
    assert_problem(response, 422, "order_id")


async def test_a_missing_field_is_named(client: httpx.AsyncClient) -> None:
    order = {k: v for k, v in ORDER.items() if k != "customer_id"}
    assert_problem(await client.post("/orders", json=order), 422, "customer_id")


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/orders/42/items", ITEM, "order_id"),
        ("POST", f"/orders/{SOME_ORDER}/items", {**ITEM, "quantity": 0}, "quantity"),
        ("POST", f"/orders/{SOME_ORDER}/items", {"product_id": "a", "quantity": 1}, "price"),
        ("POST", f"/orders/{SOME_ORDER}/items", [ITEM], "body"),
        ("POST", "/orders/nope/ship", None, "order_id"),
        ("POST", f"/orders/{SOME_ORDER}/ship", {"when": "now"}, "when"),
        ("DELETE", "/orders/nope?reason=x", None, "order_id"),
        ("DELETE", f"/orders/{SOME_ORDER}", None, "reason"),
        ("DELETE", f"/orders/{SOME_ORDER}?reason=%20%20", None, "reason"),
        ("DELETE", f"/orders/{SOME_ORDER}?reason=", None, "reason"),
        ("DELETE", f"/orders/{SOME_ORDER}?reason=%00", None, "reason"),
        ("DELETE", f"/orders/{SOME_ORDER}?reason=a%00b", None, "reason"),
        ("DELETE", f"/orders/{SOME_ORDER}?reason=" + "r" * 201, None, "reason"),
    ],
    ids=repr,
)
async def test_invalid_commands_on_an_order_are_422_naming_the_field(
    client: httpx.AsyncClient, method: str, path: str, body: Any, field: str
) -> None:
    kwargs: dict[str, Any] = {"json": body} if body is not None else {}
    assert_problem(await client.request(method, path, **kwargs), 422, field)


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/xml",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "application/jsonx",
        "application/problem+json",
    ],
)
async def test_wrong_content_types_are_415(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    response = await post_raw(client, "/orders", b'{"customer_id": "a"}', content_type)
    assert_problem(response, 415)
    assert response.headers["accept-post"] == "application/json"


async def test_bodies_over_the_limit_are_413_declared_or_streamed(
    client: httpx.AsyncClient,
) -> None:
    big = b'{"customer_id": "' + b"x" * offline_settings().max_body_bytes + b'"}'
    assert_problem(await post_raw(client, "/orders", big), 413)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    for path in ("/orders", f"/orders/{SOME_ORDER}/items"):
        streamed = await client.post(
            path, content=chunks(), headers={"content-type": "application/json"}
        )
        assert "content-length" not in streamed.request.headers
        assert_problem(streamed, 413)


@pytest.mark.parametrize(
    "key",
    [b"", b"k" * 201, "clé".encode(), b"tab\there", b" k", b"k "],
    ids=repr,
)
async def test_malformed_idempotency_keys_are_422(client: httpx.AsyncClient, key: bytes) -> None:
    response = await client.post("/orders", json=ORDER, headers={HEADER: key})
    assert_problem(response, 422, HEADER)


# --- ids, paths and parameters ------------------------------------------------------------------


@pytest.mark.parametrize(
    "order_id",
    [
        "ünïcødé",
        "%F0%9F%92%A9",
        "%00",
        "a%00b",
        "%FF%FE",
        FULL_WIDTH_UUID,
        "12345678-1234-1234-1234-1234567890ab%00",
        "'; DROP TABLE events; --",
        "x" * 2000,
    ],
    ids=repr,
)
@pytest.mark.parametrize(
    ("method", "template"),
    [
        ("GET", "/orders/{}"),
        ("GET", "/orders/{}/history"),
        ("POST", "/orders/{}/items"),
        ("POST", "/orders/{}/ship"),
        ("DELETE", "/orders/{}?reason=r"),
    ],
)
async def test_unicode_and_nul_in_order_ids_are_422(
    client: httpx.AsyncClient, method: str, template: str, order_id: str
) -> None:
    url = template.format(order_id)
    body = ITEM if template.endswith("items") else None
    response = await client.request(method, url, json=body)
    assert_problem(response, 422)
    assert response.json()["errors"][0]["field"] == "order_id"


@pytest.mark.parametrize("customer_id", ["ünïcødé", "%F0%9F%92%A9", "a%00b", "-leading-dash"])
async def test_unicode_and_nul_in_customer_ids_are_422(
    client: httpx.AsyncClient, customer_id: str
) -> None:
    response = await client.get(f"/customers/{customer_id}/orders")
    assert_problem(response, 422)
    assert response.json()["errors"][0]["field"] == "customer_id"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"page": "0"}, "page"),
        ({"page": "abc"}, "page"),
        ({"page_size": "101"}, "page_size"),
        ({"page_size": "1e3"}, "page_size"),
        ({"sort_by": "password"}, "sort_by"),
        ({"sort_order": "sideways"}, "sort_order"),
        ({"status": "lost"}, "status"),
        ({"min_total": "NaN"}, "min_total"),
        ({"min_total": "-1"}, "min_total"),
        ({"max_total": "1e999"}, "max_total"),
        ({"min_total": "5", "max_total": "1"}, "max_total"),
        ({"customer_id": "ünï"}, "customer_id"),
        ({"q": "x" * 201}, "q"),
    ],
    ids=repr,
)
async def test_bad_search_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    response = await client.get("/orders/search", params=params)
    assert_problem(response, 422)
    assert response.json()["errors"][0]["field"] == field


async def test_a_malformed_command_id_is_422(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/commands/not-a-uuid"), 422, "command_id")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/orders", {"POST"}),
        ("PATCH", f"/orders/{SOME_ORDER}", {"GET", "DELETE"}),
        ("OPTIONS", "/orders/search", {"GET"}),
        ("POST", "/orders/search", {"GET"}),
        ("GET", f"/orders/{SOME_ORDER}/items", {"POST"}),
        ("DELETE", "/commands/" + SOME_ORDER, {"GET"}),
    ],
)
async def test_wrong_methods_are_405_with_the_allowed_ones(
    client: httpx.AsyncClient, method: str, path: str, allowed: set[str]
) -> None:
    response = await client.request(method, path)
    assert_problem(response, 405)
    assert {m.strip() for m in response.headers["allow"].split(",")} - {"HEAD"} == allowed


@pytest.mark.parametrize(
    "path", ["/nowhere", "/no/such/route", "/orders/x/y/z", "/%00", "/orders/search/more"]
)
async def test_unknown_paths_are_404(client: httpx.AsyncClient, path: str) -> None:
    assert_problem(await client.get(path), 404)


# --- headers --------------------------------------------------------------------------------------


async def test_the_correlation_id_is_echoed_or_made(client: httpx.AsyncClient) -> None:
    given = str(uuid.uuid4())
    echoed = await client.get("/nowhere", headers={"X-Correlation-Id": given})
    assert echoed.headers["x-correlation-id"] == given
    for headers in ({}, {"X-Correlation-Id": "abc"}):
        made = (await client.get("/nowhere", headers=headers)).headers["x-correlation-id"]
        assert str(uuid.UUID(made)) == made


# --- API keys -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded() -> httpx.ASGITransport:
    return httpx.ASGITransport(app=create_app(offline_settings(api_keys="first-key, second-key")))


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "second-key"}],
    ids=repr,
)
async def test_without_a_known_api_key_everything_but_health_is_401(
    guarded: httpx.ASGITransport, headers: dict[str, str]
) -> None:
    async with httpx.AsyncClient(transport=guarded, base_url="http://gateway") as http:
        for method, path in [
            ("POST", "/orders"),
            ("GET", f"/commands/{uuid.uuid4()}"),
            ("GET", "/metrics"),
            ("GET", "/openapi.json"),
            ("GET", "/nowhere"),
        ]:
            response = await http.request(method, path, json=ORDER, headers=headers)
            assert_problem(response, 401)
            assert response.headers["www-authenticate"] == "Bearer"
        assert (await http.get("/health/live", headers=headers)).status_code == 200


async def test_a_known_api_key_passes_to_the_routes(guarded: httpx.ASGITransport) -> None:
    async with httpx.AsyncClient(transport=guarded, base_url="http://gateway") as http:
        response = await http.get("/nowhere", headers={"Authorization": "Bearer second-key"})
        assert_problem(response, 404)
