"""The peer's queues, exchange and table: declared alike by every process that uses them."""

from __future__ import annotations

from faststream.rabbit import ExchangeType, QueueType, RabbitExchange, RabbitQueue

COMMANDS = RabbitQueue("peer.commands", queue_type=QueueType.QUORUM, durable=True)
"""Where the gateway publishes `PlaceOrder` (default exchange, the queue's name as key)."""
EVENTS = RabbitExchange("peer.events", type=ExchangeType.FANOUT, durable=True)
"""Where the worker publishes `OrderPlaced`, once recorded."""
VIEWS = RabbitQueue("peer.views", queue_type=QueueType.QUORUM, durable=True)
"""The projector's queue on `EVENTS`."""

EVENTS_TABLE = "peer_events"
CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {EVENTS_TABLE} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id uuid NOT NULL,
    command_id uuid NOT NULL,
    type text NOT NULL,
    data jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {EVENTS_TABLE}_order_id ON {EVENTS_TABLE} (order_id);
"""
"""One row per event; an order's events found by its id."""
