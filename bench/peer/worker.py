"""`python -m bench.peer.worker --host H --port P`: the peer's command worker.

Each `PlaceOrder` becomes one `OrderPlaced` row in PostgreSQL (an asyncpg pool), then the event
is published persistent to the fanout exchange with a confirm; the command is acked after both,
so a crash in between redelivers it (and, with no deduplication, records it twice).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import asyncpg
from faststream import AckPolicy, FastStream
from faststream.rabbit import Channel, RabbitBroker

from bench.peer.config import PeerSettings
from bench.peer.contracts import OrderPlaced, PlaceOrder, total_of
from bench.peer.health import readiness
from bench.peer.serve import configure_logging, parse_args, serve
from bench.peer.topology import COMMANDS, CREATE_TABLE, EVENTS, EVENTS_TABLE

INSERT = (
    f"INSERT INTO {EVENTS_TABLE} (order_id, command_id, type, data) "
    "VALUES ($1, $2, 'OrderPlaced', $3) RETURNING id"
)


def create_app(settings: PeerSettings) -> Any:
    broker = RabbitBroker(settings.amqp_url, log_level=logging.DEBUG)
    events = broker.publisher(exchange=EVENTS, persist=True)
    pools: list[asyncpg.Pool] = []

    @broker.subscriber(
        COMMANDS,
        channel=Channel(prefetch_count=settings.prefetch),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def place_order(command: PlaceOrder) -> None:
        total = total_of(command.items)
        row_id = await pools[0].fetchval(
            INSERT, command.order_id, command.command_id, command.model_dump_json()
        )
        event = OrderPlaced(**command.model_dump(), event_id=row_id, total=total)
        await events.publish(event)

    async def open_pool() -> None:
        pool = await asyncpg.create_pool(
            settings.database_url, min_size=settings.pool_size, max_size=settings.pool_size
        )
        await pool.execute(CREATE_TABLE)
        pools.append(pool)

    async def close_pool() -> None:
        for pool in pools:
            await pool.close()

    app = FastStream(broker, on_startup=[open_pool], after_shutdown=[close_pool])
    return app.as_asgi(asgi_routes=[("/health/ready", readiness(broker))])


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args("python -m bench.peer.worker", __doc__.splitlines()[0], argv)
    settings = PeerSettings.from_env()
    configure_logging(settings.log_level)
    serve(create_app(settings), args)


if __name__ == "__main__":
    main()
