"""`GET /asyncapi.json` in process: the generator's document for the gateway's own settings,
built once; the app's lifespan never runs, so nothing here reaches a service."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from common.domain import load_domains
from common.messaging.asyncapi import asyncapi_document
from common.messaging.topology import Topology
from common.settings import Settings
from gateway.app import create_app
from gateway.openapi import ASYNCAPI_PATH, install_asyncapi
from tests.support.asyncapi import schema_errors

NOWHERE = "://127.0.0.1:9"
"""Service addresses nothing answers on: nothing here may connect to them anyway."""
SETTINGS = Settings(
    domains="orders,tests.domains.tickets",
    app_prefix="shop",
    amqp_url=f"amqp{NOWHERE}/shop-vhost",
    redis_url=f"redis{NOWHERE}/0",
    database_url=f"postgresql{NOWHERE}/none",
    retry_base_delay_ms=300,
    api_keys="secret-key",
)


@pytest.fixture(scope="module")
def gateway() -> FastAPI:
    return create_app(SETTINGS)


async def get(app: FastAPI, path: str, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        return await client.get(path, headers=headers)


async def test_the_gateway_serves_the_document_of_its_settings(gateway: FastAPI) -> None:
    response = await get(gateway, ASYNCAPI_PATH, authorization="Bearer secret-key")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    registry = load_domains(SETTINGS.domains)
    expected = asyncapi_document(
        registry, Topology("shop", tuple(registry.projections)), 300, vhost="shop-vhost"
    )
    document = response.json()
    assert document == expected
    assert schema_errors(document) == []
    assert "queue.shop.projection.ticket_views.delay.9600ms" in document["channels"]


async def test_it_needs_a_key_like_every_other_route(gateway: FastAPI) -> None:
    assert (await get(gateway, ASYNCAPI_PATH)).status_code == 401


def test_openapi_lists_the_route(gateway: FastAPI) -> None:
    assert "get" in gateway.openapi()["paths"][ASYNCAPI_PATH]


async def test_the_document_is_built_once() -> None:
    calls: list[int] = []

    def describe() -> dict[str, Any]:
        calls.append(1)
        return {"asyncapi": "3.0.0", "built": len(calls)}

    app = FastAPI()
    install_asyncapi(app, describe)
    assert calls == []  # not at start-up
    first = (await get(app, ASYNCAPI_PATH)).json()
    second = (await get(app, ASYNCAPI_PATH)).json()
    assert first == second == {"asyncapi": "3.0.0", "built": 1}
    assert calls == [1]
