"""The floor: a bare FastAPI app doing the least the gateway could do per request.

`python -m bench.floor_app --host H --port P`, served with the gateway's uvicorn settings.

- `POST /orders` validates the create-order body with the orders domain's own request model and
  publishes it, persistent and mandatory, on one shared confirm-mode channel to a quorum queue
  (as the gateway does with commands), answering 202 once RabbitMQ confirmed;
- `GET /orders/{order_id}` is one HGETALL of `{REDIS_KEY_PREFIX}floor:order:{order_id}`,
  answered as a JSON object.

No ids, no idempotency, no status record, no middleware: whatever the gateway spends beyond
this is the price of its guarantees, which the ratios measure.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import cast

import aio_pika
import orjson
import uvicorn
from fastapi import FastAPI, Request
from pydantic import ValidationError
from redis.asyncio import Redis
from starlette.responses import Response

from common.settings import Settings, get_settings
from orders.requests import CreateOrderRequest

FLOOR_EXCHANGE = "bench.floor"
FLOOR_QUEUE = "bench.floor"
JSON = "application/json"


def floor_key(prefix: str, order_id: str) -> str:
    return f"{prefix}floor:order:{order_id}"


def create_app(settings: Settings) -> FastAPI:
    state: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        connection = await aio_pika.connect(settings.amqp_url)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.declare_exchange(
            FLOOR_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
        )
        queue = await channel.declare_queue(
            FLOOR_QUEUE, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(exchange, routing_key=FLOOR_QUEUE)
        redis = Redis.from_url(settings.redis_url)
        state.update(exchange=exchange, redis=redis)
        try:
            yield
        finally:
            await redis.aclose()
            await connection.close()

    app = FastAPI(title="bench floor", lifespan=lifespan, openapi_url=None)

    @app.get("/health/ready")
    async def ready() -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    @app.post("/orders", status_code=202)
    async def create_order(request: Request) -> Response:
        try:
            body = CreateOrderRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            return Response(exc.json().encode(), 422, media_type=JSON)
        exchange: aio_pika.abc.AbstractExchange = state["exchange"]  # type: ignore[assignment]
        message = aio_pika.Message(
            body=body.model_dump_json().encode(),
            content_type=JSON,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await exchange.publish(message, FLOOR_QUEUE, mandatory=True)
        return Response(b'{"status":"accepted"}', 202, media_type=JSON)

    @app.get("/orders/{order_id}")
    async def get_order(order_id: str) -> Response:
        redis: Redis = state["redis"]  # type: ignore[assignment]
        key = floor_key(settings.redis_key_prefix, order_id)
        raw = cast(dict[bytes, bytes], await redis.hgetall(key))
        if not raw:
            return Response(b'{"status":404}', 404, media_type=JSON)
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        return Response(orjson.dumps(fields), media_type=JSON)

    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.floor_app",
        description="The benchmark's floor app (AMQP_URL, REDIS_URL, REDIS_KEY_PREFIX from the "
        "environment), served like the gateway.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args(argv)
    # The gateway's uvicorn settings (gateway/__main__.py), minus its logging set-up.
    uvicorn.run(
        create_app(get_settings()),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        workers=1,
        access_log=False,
        log_config=None,
        server_header=False,
    )


if __name__ == "__main__":
    main()
