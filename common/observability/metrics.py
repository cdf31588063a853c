"""Prometheus metrics shared by every process (each process exports only what it touches)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

COMMANDS = Counter(
    "orders_commands_total",
    "Commands by type and outcome (accepted at the gateway; succeeded/rejected/failed by workers).",
    ["type", "outcome"],
)
HANDLING_SECONDS = Histogram(
    "orders_message_handling_seconds",
    "Time to handle one message, by queue.",
    ["queue"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EVENTS_APPENDED = Counter("orders_events_appended_total", "Events appended to the event store.")
VERSION_CONFLICTS = Counter(
    "orders_version_conflicts_total", "Appends refused for a stale expected version."
)
EVENTS_RELAYED = Counter("orders_events_relayed_total", "Events published to orders.events.")
RELAY_LAG = Gauge("orders_relay_lag_positions", "Committed positions not yet published.")
EVENTS_PROJECTED = Counter("orders_events_projected_total", "Events applied to the Redis views.")
PROJECTION_LAG_POSITIONS = Gauge(
    "orders_projection_lag_positions", "Positions between the event store head and the views."
)
PROJECTION_LAG_SECONDS = Gauge(
    "orders_projection_lag_seconds", "Age of the last event applied when it was applied."
)
RETRIES = Counter("orders_retries_total", "Messages sent to a delay queue for a retry.", ["queue"])
DEAD_LETTERS = Counter(
    "orders_dead_letters_total", "Messages sent to a dead-letter queue.", ["queue", "kind"]
)
HTTP_REQUESTS = Histogram(
    "orders_http_request_seconds",
    "Gateway request latency by route and status.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
