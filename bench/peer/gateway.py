"""`python -m bench.peer.gateway --host H --port P`: the peer's HTTP gateway.

`POST /orders` validates the body, publishes `PlaceOrder` persistent to the durable commands
queue and answers 202 once RabbitMQ confirmed it (FastStream's channels confirm by default)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import FastAPI, Response
from faststream.rabbit import RabbitBroker

from bench.peer.config import PeerSettings
from bench.peer.contracts import Accepted, CreateOrder, PlaceOrder
from bench.peer.serve import configure_logging, parse_args, serve
from bench.peer.topology import COMMANDS


def create_app(settings: PeerSettings) -> FastAPI:
    # Service lines per message at DEBUG: at a thousand commands a second, no one reads them.
    broker = RabbitBroker(settings.amqp_url, log_level=logging.DEBUG)
    commands = broker.publisher(COMMANDS, persist=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await broker.start()
        await broker.declare_queue(COMMANDS)
        try:
            yield
        finally:
            await broker.stop()

    app = FastAPI(title="peer gateway", lifespan=lifespan, openapi_url=None)

    @app.get("/health/ready")
    async def ready() -> Response:
        healthy = await broker.ping(timeout=1.0)
        return Response(status_code=200 if healthy else 503)

    @app.post("/orders", status_code=202)
    async def create_order(body: CreateOrder) -> Accepted:
        command = PlaceOrder(
            **body.model_dump(),
            command_id=uuid.uuid4(),
            order_id=uuid.uuid4(),
            accepted_at=datetime.now(UTC),
        )
        await commands.publish(command)
        return Accepted(command_id=command.command_id, order_id=command.order_id)

    return app


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args("python -m bench.peer.gateway", __doc__.splitlines()[0], argv)
    settings = PeerSettings.from_env()
    configure_logging(settings.log_level)
    serve(create_app(settings), args)


if __name__ == "__main__":
    main()
