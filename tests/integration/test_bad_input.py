"""Whatever a client sends, the running gateway answers as documented, never with a 5xx: odd
text and headers it takes, then schemathesis exploring the whole API from `/openapi.json` and
checking every answer against the document. The 4xx answers to malformed and huge bodies, wrong
media types, deep JSON, unicode and NUL in ids, bad numbers and wrong methods need no service
and are tested in process (`tests/http/test_refusals.py`)."""

from __future__ import annotations

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

from harness.isolation import Endpoints
from harness.load import ADDRESS
from harness.processes import process_group, wait_for
from tests.chaos.system import isolated_settings, new_run_id
from tests.conftest import settings_env

pytestmark = pytest.mark.integration

ORDER: dict[str, Any] = {
    "customer_id": "bad-input",
    "items": [{"product_id": "sku-1", "quantity": 1, "price": "1.00"}],
    "shipping_address": ADDRESS,
}


@pytest.fixture(scope="module")
def gateway_url(services: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway with a command worker and a projector, shared by the whole module."""
    log_dir: Path = tmp_path_factory.mktemp("bad-input")
    with (
        isolated_settings(services, new_run_id()) as config,
        process_group(settings_env(config), log_dir) as processes,
    ):
        processes.start("command_worker")
        processes.start("projector_worker")
        # Short waits: generated `min_version` and `Prefer: wait` values must not stall the run.
        yield processes.start("gateway", extra_env={"MAX_WAIT_S": "0.5"}).base_url


@pytest.fixture
def client(gateway_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_url, timeout=30) as http:
        yield http


# --- input the gateway takes -------------------------------------------------------------------
# What it refuses is tested in process: tests/http/test_refusals.py.


def test_unicode_text_is_welcome_where_the_contract_takes_human_text(client: httpx.Client) -> None:
    order = {**ORDER, "shipping_address": {**ADDRESS, "city": "\u202eLondon"}}
    response = client.post("/orders", json=order)
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("q", ["ünïcødé 客户", "a\x00b", "💩", "%", "*", "[", "\\"])
def test_any_search_text_is_answered(client: httpx.Client, q: str) -> None:
    response = client.get("/orders/search", params={"q": q})
    assert response.status_code == 200, response.text
    assert {"items", "total", "page", "page_size", "total_pages"} <= set(response.json())


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


@pytest.mark.parametrize(
    "mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value
)
def test_every_answer_matches_the_openapi_document(gateway_url: str, mode: GenerationMode) -> None:
    """Valid (positive) or invalid (negative) requests for every operation: never a 5xx, and
    every status, media type, header and body as `/openapi.json` documents it."""
    schema = schemathesis.openapi.from_url(f"{gateway_url}/openapi.json")
    # An order that exists, so order routes also answer with views and histories, not only 404.
    known = {"order_id": _visible_order(gateway_url)}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    runs = [
        (operation, ids)
        for operation in operations
        for ids in ([None, known] if "{order_id}" in operation.path else [None])
    ]
    failures = []
    for operation, ids in runs:

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
