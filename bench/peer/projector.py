"""`python -m bench.peer.projector --host H --port P`: the peer's projector.

Each `OrderPlaced` from the fanout exchange becomes the order's hash and an entry in the
customer's sorted set, and a notification that the command is visible: all three in one
MULTI/EXEC, state before message, as the project's projectors do in one script call.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson
from faststream import AckPolicy, FastStream
from faststream.rabbit import Channel, RabbitBroker
from redis.asyncio import Redis

from bench.peer.config import PeerSettings
from bench.peer.contracts import OrderPlaced, PeerKeys, visible_message
from bench.peer.health import readiness
from bench.peer.serve import configure_logging, parse_args, serve
from bench.peer.topology import EVENTS, VIEWS


def order_view(event: OrderPlaced) -> dict[str, str]:
    """The order's hash: what a query answers with."""
    return {
        "order_id": str(event.order_id),
        "customer_id": event.customer_id,
        "status": "placed",
        "total": event.total,
        "items": orjson.dumps([line.model_dump() for line in event.items]).decode(),
        "shipping_address": event.shipping_address.model_dump_json(),
        "placed_at": event.accepted_at.isoformat(),
        "version": "1",
    }


def create_app(settings: PeerSettings) -> Any:
    broker = RabbitBroker(settings.amqp_url, log_level=logging.DEBUG)
    redis = Redis.from_url(settings.redis_url)
    keys = PeerKeys(settings.key_prefix)

    @broker.subscriber(
        VIEWS,
        EVENTS,
        channel=Channel(prefetch_count=settings.prefetch),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def project(event: OrderPlaced) -> None:
        order_id = str(event.order_id)
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.order(order_id), mapping=order_view(event))  # type: ignore[arg-type]
            pipe.zadd(
                keys.customer_orders(event.customer_id),
                {order_id: event.accepted_at.timestamp()},
            )
            pipe.publish(keys.visible_channel, visible_message(str(event.command_id), order_id))
            await pipe.execute()

    async def close_redis() -> None:
        await redis.aclose()

    app = FastStream(broker, after_shutdown=[close_redis])
    return app.as_asgi(asgi_routes=[("/health/ready", readiness(broker))])


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args("python -m bench.peer.projector", __doc__.splitlines()[0], argv)
    settings = PeerSettings.from_env()
    configure_logging(settings.log_level)
    serve(create_app(settings), args)


if __name__ == "__main__":
    main()
