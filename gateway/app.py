"""Wiring: the FastAPI application, its routers, middleware, error handlers and lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from common.domain import Registry, load_domains
from common.messaging.asyncapi import asyncapi_document, vhost_of
from common.messaging.topology import Topology
from common.observability import metrics, tracing
from common.process import settle_heap
from common.settings import Settings, get_settings
from gateway import commands_api, health
from gateway.auth import ApiKeyMiddleware
from gateway.middleware import RequestMiddleware
from gateway.openapi import install_asyncapi, install_openapi, ref
from gateway.problems import install_problem_handlers
from gateway.responses import CommandStatusView, ProblemDetails, accepted_model, status_model
from gateway.runtime import Runtime
from gateway.waiting import Waiter

BROKER_WAIT_S = 3.0
"""How long start-up waits for RabbitMQ before serving anyway (commands get 503 until then)."""


def create_app(
    settings: Settings | None = None,
    *,
    registry: Registry | None = None,
    broker_wait_s: float = BROKER_WAIT_S,
) -> FastAPI:
    """The gateway application for the domains of `DOMAINS`; resources open in its lifespan
    and close at shutdown."""
    settings = settings or get_settings()
    loaded = registry or load_domains(settings.domain_names)
    metrics.register(metrics.GATEWAY)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings, loaded)
        app.state.runtime = runtime
        waiter = Waiter(runtime.redis, runtime.keys, loaded, max_waiters=settings.max_waiters)
        app.state.waiter = waiter
        metrics.WAITS_PENDING.set_function(lambda: waiter.pending)
        try:
            await runtime.start(broker_wait_s)
            settle_heap()
            yield
        finally:
            await waiter.close()
            await runtime.close()

    app = FastAPI(
        title=f"{settings.app_prefix.capitalize()} gateway",
        version="1.0.0",
        description="Commands in (202 once RabbitMQ confirmed them), views out, for the "
        f"domains {', '.join(d.name for d in loaded.domains)}.",
        lifespan=lifespan,
    )
    # Known before the lifespan runs: requests refused on their input need no service.
    app.state.settings = settings
    # The router tries routes in order: each domain lists its hot command routes first.
    for router in loaded.routers():
        app.include_router(router)
    app.include_router(commands_api.router)
    app.include_router(health.router)
    install_problem_handlers(app)
    aggregates = list(loaded.aggregates.values())
    statuses = [status_model(aggregate) for aggregate in aggregates]
    install_openapi(
        app,
        [*loaded.schemas(), *map(accepted_model, aggregates), *statuses, ProblemDetails],
        # `GET /commands/{id}` answers for a command on any loaded aggregate.
        {CommandStatusView.__name__: {"anyOf": [ref(model) for model in statuses]}},
    )
    install_asyncapi(
        app,
        partial(
            asyncapi_document,
            loaded,
            Topology(settings.app_prefix, tuple(loaded.projections)),
            settings.retry_base_delay_ms,
            vhost_of(settings.amqp_url),
        ),
    )
    # Added last = outermost: metrics see every answer, including 401s.
    if settings.api_key_set:
        app.add_middleware(ApiKeyMiddleware, keys=settings.api_key_set)
    app.add_middleware(RequestMiddleware)
    if tracing.enabled():
        # Outermost: the request's span is the root of the command's trace.
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app, excluded_urls="health,metrics", exclude_spans=["receive", "send"]
        )
    return app
