"""Whatever a client sends, the gateway answers a clear 4xx problem, never a 5xx: malformed and
huge bodies, wrong media types, deep JSON, unicode and NUL in ids, bad numbers, wrong methods.
Then schemathesis explores the whole API from `/openapi.json` and checks every answer against
the document."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from tests.chaos.load import ADDRESS
from tests.chaos.system import isolated_settings, new_run_id
from tests.conftest import settings_env
from tests.support.processes import process_factory, wait_for
from tests.support.services import Endpoints

pytestmark = pytest.mark.integration

PROBLEM_JSON = "application/problem+json"
ORDER: dict[str, Any] = {
    "customer_id": "bad-input",
    "items": [{"product_id": "sku-1", "quantity": 1, "price": "1.00"}],
    "shipping_address": ADDRESS,
}
ITEM: dict[str, Any] = {"product_id": "sku-1", "quantity": 1, "price": "1.00"}
SOME_ORDER = str(uuid.uuid4())
FULL_WIDTH_UUID = "".join(chr(0xFF10 + int(c)) if c.isdigit() else c for c in SOME_ORDER)
"""What `uuid.UUID()` alone would take: its hex parsing reads any Unicode digit."""


@pytest.fixture(scope="module")
def gateway_url(services: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway with a command worker and a projector, shared by the whole module."""
    log_dir: Path = tmp_path_factory.mktemp("bad-input")
    with (
        isolated_settings(services, new_run_id()) as config,
        process_factory(settings_env(config), log_dir) as processes,
    ):
        processes.start("command_worker")
        processes.start("projector_worker")
        # Short waits: generated `min_version` and `Prefer: wait` values must not stall the run.
        yield processes.start("gateway", extra_env={"MAX_WAIT_S": "0.5"}).base_url


@pytest.fixture
def client(gateway_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_url, timeout=30) as http:
        yield http


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """A `status` answer in problem+json: type, title, status, detail."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"]
    assert body["title"]
    assert body["detail"]
    return body


def post_raw(
    client: httpx.Client, path: str, body: bytes, content_type: str | None = "application/json"
) -> httpx.Response:
    headers = {"content-type": content_type} if content_type is not None else {}
    return client.post(path, content=body, headers=headers)


# --- bodies -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"customer_id": }',
        b"[]",
        b"null",
        b'"an order"',
        b"{}",
        b'{"customer_id": "a"} trailing',
        b"\xff\xfe\x00{",
        b'{"customer_id": "\\ud800"}',
        b"NaN",
    ],
    ids=repr,
)
def test_malformed_bodies_are_422_naming_the_body(client: httpx.Client, body: bytes) -> None:
    problem = assert_problem(post_raw(client, "/orders", body), 422)
    assert problem["errors"], problem


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"customer_id": "客户"}, "customer_id"),
        ({"customer_id": "a\x00b"}, "customer_id"),
        ({"customer_id": "💩"}, "customer_id"),
        ({"customer_id": "x" * 65}, "customer_id"),
        ({"items": [{**ITEM, "product_id": "é"}]}, "items.0.product_id"),
        ({"items": [{**ITEM, "quantity": 1.5}]}, "items.0.quantity"),
        ({"items": [{**ITEM, "quantity": "1"}]}, "items.0.quantity"),
        ({"items": [{**ITEM, "quantity": 10**40}]}, "items.0.quantity"),
        ({"items": [{**ITEM, "price": "1e400"}]}, "items.0.price"),
        ({"items": [{**ITEM, "price": "Infinity"}]}, "items.0.price"),
        ({"items": [{**ITEM, "price": "0.001"}]}, "items.0.price"),
        ({"items": [{**ITEM, "price": "-1"}]}, "items.0.price"),
        ({"items": [{**ITEM, "price": True}]}, "items.0.price"),
        ({"items": []}, "items"),
        ({"items": [ITEM] * 101}, "items"),
        ({"shipping_address": {**ADDRESS, "recipient": "Ada\x00Lovelace"}}, "recipient"),
        ({"shipping_address": {**ADDRESS, "city": "\u202eLondon"}}, None),
        ({"shipping_address": {**ADDRESS, "country": "ÜK"}}, "shipping_address.country"),
        ({"extra": 1}, "extra"),
    ],
    ids=repr,
)
def test_invalid_fields_are_422_naming_the_field(
    client: httpx.Client, changes: dict[str, Any], field: str | None
) -> None:
    response = client.post("/orders", json={**ORDER, **changes})
    if field is None:
        # Unicode text is welcome where the contract takes human text.
        assert response.status_code == 202, response.text
        return
    problem = assert_problem(response, 422)
    assert any(field in error["field"] for error in problem["errors"]), problem


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
def test_wrong_content_types_are_415(client: httpx.Client, content_type: str | None) -> None:
    response = post_raw(client, "/orders", b'{"customer_id": "a"}', content_type)
    assert_problem(response, 415)
    assert response.headers["accept-post"] == "application/json"


def test_huge_bodies_are_413_declared_or_streamed(client: httpx.Client) -> None:
    huge = b'{"customer_id": "' + b"x" * (8 * 1024 * 1024) + b'"}'
    assert_problem(post_raw(client, "/orders", huge), 413)

    def chunks() -> Iterator[bytes]:
        for _ in range(128):
            yield b" " * 65536

    streamed = client.post(
        f"/orders/{SOME_ORDER}/items",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in streamed.request.headers
    assert_problem(streamed, 413)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 30_000 + b"]" * 30_000,
        b'{"customer_id": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"}",
        b'{"items": [' + b"[" * 5_000 + b"]" * 5_000 + b"]}",
    ],
    ids=["arrays", "objects", "inside a field"],
)
def test_deeply_nested_json_is_422(client: httpx.Client, body: bytes) -> None:
    assert_problem(post_raw(client, "/orders", body), 422)


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
def test_unicode_and_nul_in_order_ids_are_422(
    client: httpx.Client, method: str, template: str, order_id: str
) -> None:
    url = template.format(order_id)
    body = ITEM if template.endswith("items") else None
    problem = assert_problem(client.request(method, url, json=body), 422)
    assert problem["errors"][0]["field"] == "order_id", problem


@pytest.mark.parametrize("customer_id", ["ünïcødé", "%F0%9F%92%A9", "a%00b", "-leading-dash"])
def test_unicode_and_nul_in_customer_ids_are_422(client: httpx.Client, customer_id: str) -> None:
    problem = assert_problem(client.get(f"/customers/{customer_id}/orders"), 422)
    assert problem["errors"][0]["field"] == "customer_id", problem


@pytest.mark.parametrize(
    ("url", "field"),
    [
        (f"/orders/{SOME_ORDER}?reason=", "reason"),
        (f"/orders/{SOME_ORDER}?reason=%00", "reason"),
        (f"/orders/{SOME_ORDER}?reason=a%00b", "reason"),
        (f"/orders/{SOME_ORDER}?reason=" + "r" * 201, "reason"),
    ],
)
def test_bad_cancel_reasons_are_422(client: httpx.Client, url: str, field: str) -> None:
    problem = assert_problem(client.delete(url), 422)
    assert problem["errors"][0]["field"] == field, problem


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
def test_bad_search_parameters_are_422(
    client: httpx.Client, params: dict[str, str], field: str
) -> None:
    problem = assert_problem(client.get("/orders/search", params=params), 422)
    assert problem["errors"][0]["field"] == field, problem


@pytest.mark.parametrize("q", ["ünïcødé 客户", "a\x00b", "💩", "%", "*", "[", "\\"])
def test_any_search_text_is_answered(client: httpx.Client, q: str) -> None:
    response = client.get("/orders/search", params={"q": q})
    assert response.status_code == 200, response.text
    assert {"items", "total", "page", "page_size", "total_pages"} <= set(response.json())


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"Idempotency-Key": ""}, "Idempotency-Key"),
        ({"Idempotency-Key": "k" * 201}, "Idempotency-Key"),
        ({"Idempotency-Key": "clé"}, "Idempotency-Key"),
        ({"Idempotency-Key": "tab\there"}, "Idempotency-Key"),
    ],
    ids=repr,
)
def test_bad_idempotency_keys_are_422(
    client: httpx.Client, headers: dict[str, str], field: str
) -> None:
    encoded = {k: v.encode("latin-1") for k, v in headers.items()}
    problem = assert_problem(client.post("/orders", json=ORDER, headers=encoded), 422)
    assert problem["errors"][0]["field"] == field, problem


@pytest.mark.parametrize(
    "headers",
    [
        {"Prefer": "wait=abc"},
        {"Prefer": "wait=-1"},
        {"Prefer": "wait=1e309"},
        {"Prefer": "wait"},
        {"X-Correlation-Id": "not-a-uuid"},
        {"X-Correlation-Id": "ünï".encode()},
    ],
    ids=repr,
)
def test_odd_optional_headers_are_ignored(
    client: httpx.Client, headers: dict[str, str | bytes]
) -> None:
    response = client.post("/orders", json=ORDER, headers=headers)
    assert response.status_code == 202, response.text


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
def test_wrong_methods_are_405_with_the_allowed_ones(
    client: httpx.Client, method: str, path: str, allowed: set[str]
) -> None:
    response = client.request(method, path)
    assert_problem(response, 405)
    assert {m.strip() for m in response.headers["allow"].split(",")} - {"HEAD"} == allowed


@pytest.mark.parametrize("path", ["/nowhere", "/orders/x/y/z", "/%00", "/orders/search/more"])
def test_unknown_paths_are_404(client: httpx.Client, path: str) -> None:
    assert_problem(client.get(path), 404)


# --- schemathesis over the whole document -------------------------------------------------------


EXAMPLES = 25
"""Examples per operation and generation mode: about 600 requests, well under a minute."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _visible_order(gateway_url: str) -> str:
    with httpx.Client(base_url=gateway_url, timeout=30) as http:
        created = http.post("/orders", json=ORDER)
        assert created.status_code == 202, created.text
        order_id = str(created.json()["order_id"])
        wait_for(lambda: http.get(f"/orders/{order_id}").status_code == 200, 30, "the order's view")
        return order_id


def test_every_answer_matches_the_openapi_document(gateway_url: str) -> None:
    """Valid and invalid requests for every operation: never a 5xx, and every status, media
    type, header and body as `/openapi.json` documents it."""
    schema = schemathesis.openapi.from_url(f"{gateway_url}/openapi.json")
    # An order that exists, so order routes also answer with views and histories, not only 404.
    known = {"order_id": _visible_order(gateway_url)}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    runs = [
        (operation, mode, ids)
        for operation in operations
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        for ids in ([None, known] if "{order_id}" in operation.path else [None])
    ]
    failures = []
    for operation, mode, ids in runs:

        @given(case=operation.as_strategy(generation_mode=mode, path_parameters=ids))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def explore(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS)

        try:
            explore()
        except Unsatisfiable:
            pass  # no parameters and no body: nothing to make invalid
        except Exception as exc:
            failures.append(f"{operation.label} ({mode.value}, {ids}): {exc}")
    assert not failures, "\n\n".join(failures)
