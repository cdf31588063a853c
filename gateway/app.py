"""Wiring: the FastAPI application, its routers, middleware, error handlers and lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from common.observability import metrics
from common.process import settle_heap
from common.settings import Settings, get_settings
from gateway import commands_api, health, queries_api
from gateway.auth import ApiKeyMiddleware
from gateway.middleware import RequestMiddleware
from gateway.openapi import install_openapi
from gateway.problems import install_problem_handlers
from gateway.requests import AddItemRequest, CreateOrderRequest, ShipOrderRequest
from gateway.responses import (
    AcceptedCommand,
    CommandStatusView,
    Order,
    OrderHistory,
    OrderPage,
    ProblemDetails,
)
from gateway.runtime import Runtime
from gateway.waiting import Waiter

BROKER_WAIT_S = 3.0
"""How long start-up waits for RabbitMQ before serving anyway (commands get 503 until then)."""


def create_app(
    settings: Settings | None = None, *, broker_wait_s: float = BROKER_WAIT_S
) -> FastAPI:
    """The gateway application; resources open in its lifespan and close at shutdown."""
    settings = settings or get_settings()
    metrics.register(metrics.GATEWAY)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings)
        app.state.runtime = runtime
        waiter = Waiter(runtime.redis, runtime.keys)
        app.state.waiter = waiter
        try:
            await runtime.start(broker_wait_s)
            settle_heap()
            yield
        finally:
            await waiter.close()
            await runtime.close()

    app = FastAPI(
        title="Orders gateway",
        version="1.0.0",
        description="Commands in (202 once RabbitMQ confirmed them), order views out.",
        lifespan=lifespan,
    )
    # Hot routes first: the router tries them in order. Queries come last (see queries_api).
    app.include_router(commands_api.router)
    app.include_router(health.router)
    app.include_router(queries_api.router)
    install_problem_handlers(app)
    install_openapi(
        app,
        [
            CreateOrderRequest,
            AddItemRequest,
            ShipOrderRequest,
            AcceptedCommand,
            CommandStatusView,
            Order,
            OrderPage,
            OrderHistory,
            ProblemDetails,
        ],
    )
    # Added last = outermost: metrics see every answer, including 401s.
    if settings.api_key_set:
        app.add_middleware(ApiKeyMiddleware, keys=settings.api_key_set)
    app.add_middleware(RequestMiddleware)
    return app
