"""`GET /health/ready` for a FastStream app served over ASGI: 200 once its broker is connected."""

from __future__ import annotations

from faststream.asgi import AsgiResponse, get
from faststream.asgi.handlers import GetHandler
from faststream.asgi.types import Scope
from faststream.rabbit import RabbitBroker


def readiness(broker: RabbitBroker) -> GetHandler:
    @get(include_in_schema=False)
    async def ready(scope: Scope) -> AsgiResponse:
        healthy = await broker.ping(timeout=1.0)
        return AsgiResponse(b'{"status":"ok"}' if healthy else b"", 200 if healthy else 503)

    return ready
