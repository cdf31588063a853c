"""Prometheus metrics of every process.

The metrics are created unregistered; each process registers the set it owns at start-up
(`register(GATEWAY)`, ...), so its `/metrics` shows only series that process can move: a
gateway exporting `orders_relay_lag_positions 0` would only mislead a dashboard. Updating a
metric nobody registered is harmless, which is what in-process tests do.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.registry import Collector

from common.settings import get_settings

NAMESPACE = get_settings().app_prefix.replace("-", "_")
"""Every metric's name starts with the application prefix (`APP_PREFIX`, default `orders`)."""

WORKER_OUTCOMES = ("succeeded", "rejected", "failed")
"""Outcomes a command worker records; the gateway counts `accepted`."""

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

COMMANDS = Counter(
    "commands_total",
    "Commands by type and outcome (accepted at the gateway; succeeded/rejected/failed by workers).",
    ["type", "outcome"],
    namespace=NAMESPACE,
    registry=None,
)
COMMAND_LATENCY = Histogram(
    "command_latency_seconds",
    "From a command's acceptance at the gateway to its outcome committed by a worker, by type.",
    ["type"],
    buckets=LATENCY_BUCKETS,
    namespace=NAMESPACE,
    registry=None,
)
COMMAND_VISIBLE = Histogram(
    "command_visible_seconds",
    "From a command's acceptance at the gateway to its event applied to the views queries read "
    "(by the projection its aggregate is visible in), by command type: once per event "
    "delivered and applied, so a command of several events is visible at its last.",
    ["type"],
    buckets=LATENCY_BUCKETS,
    namespace=NAMESPACE,
    registry=None,
)
HANDLING_SECONDS = Histogram(
    "message_handling_seconds",
    "Time to handle one message, by queue.",
    ["queue"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    namespace=NAMESPACE,
    registry=None,
)
EVENTS_APPENDED = Counter(
    "events_appended_total",
    "Events appended to the event store.",
    namespace=NAMESPACE,
    registry=None,
)
VERSION_CONFLICTS = Counter(
    "version_conflicts_total",
    "Appends refused because another writer got there first. scope=batch: a micro-batch's "
    "transaction (its commands are re-run one at a time); scope=command: one command's append "
    "(re-run on a fresh load).",
    ["scope"],
    namespace=NAMESPACE,
    registry=None,
)
EVENTS_RELAYED = Counter(
    "events_relayed_total",
    "Events published to the events exchange.",
    namespace=NAMESPACE,
    registry=None,
)
RELAY_LEADER = Gauge(
    "relay_leader",
    "1 while this command worker's relay holds the leader lock, else 0.",
    namespace=NAMESPACE,
    registry=None,
)
RELAY_LAG = Gauge(
    "relay_lag_positions",
    "Committed positions not yet published to the events exchange (reported by the relay leader).",
    namespace=NAMESPACE,
    registry=None,
)
RELAY_BLOCKED = Gauge(
    "relay_blocked_seconds",
    "How long the relay leader has been waiting for appenders' open transactions to end, "
    "updated every second once it has waited a second (0 when it is not waiting).",
    namespace=NAMESPACE,
    registry=None,
)
EVENTS_PROJECTED = Counter(
    "events_projected_total",
    "Events applied to a projection's Redis views.",
    ["projection"],
    namespace=NAMESPACE,
    registry=None,
)
EVENTS_IGNORED = Counter(
    "events_ignored_total",
    "Events acked without a change: of a stream type the projection does not follow.",
    ["projection"],
    namespace=NAMESPACE,
    registry=None,
)
PROJECTION_LAG_POSITIONS = Gauge(
    "projection_lag_positions",
    "Event store head position minus the highest position applied to a projection's live views.",
    ["projection"],
    namespace=NAMESPACE,
    registry=None,
)
PROJECTION_LAG_SECONDS = Gauge(
    "projection_lag_seconds",
    "How long the oldest event not yet in a projection's live views has been committed "
    "(0 when caught up).",
    ["projection"],
    namespace=NAMESPACE,
    registry=None,
)
PROJECTION_RECOVERIES = Counter(
    "projection_recoveries_total",
    "Checks of a projection's views against the event store, by trigger: start (views ready "
    "at start-up), apply or watchdog (Redis was found to have lost writes).",
    ["projection", "trigger"],
    namespace=NAMESPACE,
    registry=None,
)
STREAMS_RECOVERED = Counter(
    "projection_streams_recovered_total",
    "Streams those checks found behind in a projection's views and caught up from the event store.",
    ["projection"],
    namespace=NAMESPACE,
    registry=None,
)
STATUSES_RECOVERED = Counter(
    "command_statuses_recovered_total",
    "Command statuses those checks found missing or without their outcome, written back from "
    "the event store's command ledger.",
    ["projection"],
    namespace=NAMESPACE,
    registry=None,
)
RETRIES = Counter(
    "retries_total",
    "Messages sent to a delay queue for a retry.",
    ["queue"],
    namespace=NAMESPACE,
    registry=None,
)
ACK_FRAMES = Counter(
    "ack_frames_total",
    "basic.ack frames sent; one acknowledges every message finished in the same turn of the "
    "event loop, so fewer frames than handled messages means acks are being coalesced.",
    ["queue"],
    namespace=NAMESPACE,
    registry=None,
)
DEAD_LETTERS = Counter(
    "dead_letters_total",
    "Messages sent to a dead-letter queue, by queue and kind (poison or exhausted).",
    ["queue", "kind"],
    namespace=NAMESPACE,
    registry=None,
)
QUEUE_MESSAGES = Gauge(
    "queue_messages",
    "Messages ready in a queue (not counting those delivered and unacked), sampled by the "
    "workers that consume it and read its dead letters.",
    ["queue"],
    namespace=NAMESPACE,
    registry=None,
)
QUEUE_CONSUMERS = Gauge(
    "queue_consumers",
    "Consumers of a queue, sampled with `queue_messages`.",
    ["queue"],
    namespace=NAMESPACE,
    registry=None,
)
RECONNECTS = Counter(
    "rabbitmq_reconnects_total",
    "Connections to RabbitMQ made again after the first (each follows a lost connection or "
    "failed attempts), by connection name.",
    ["connection"],
    namespace=NAMESPACE,
    registry=None,
)
SESSIONS = Counter(
    "rabbitmq_sessions_total",
    "Sessions opened to RabbitMQ, by connection name and node (`host:port` of `AMQP_URL`): "
    "which node of a cluster each process is on, and where it went after a loss.",
    ["connection", "node"],
    namespace=NAMESPACE,
    registry=None,
)
DEPENDENCY_UP = Gauge(
    "dependency_up",
    "1 while a service this worker's handlers need (postgres, redis) answered its last probe.",
    ["dependency"],
    namespace=NAMESPACE,
    registry=None,
)
OUTAGES = Counter(
    "dependency_outages_total",
    "Times this worker paused its consumers because a service its handlers need stopped "
    "answering (the messages it held are handled again once it answers; no retry is spent).",
    ["dependency"],
    namespace=NAMESPACE,
    registry=None,
)
HTTP_REQUESTS = Histogram(
    "http_request_seconds",
    "Gateway request latency by route and status.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    namespace=NAMESPACE,
    registry=None,
)
WAITS_PENDING = Gauge(
    "waits_pending",
    "`Prefer: wait` and `min_version` waits pending in this gateway (at most MAX_WAITERS).",
    namespace=NAMESPACE,
    registry=None,
)
WAITS_REFUSED = Counter(
    "waits_refused_total",
    "`Prefer: wait` and `min_version` waits answered at once because MAX_WAITERS were pending.",
    namespace=NAMESPACE,
    registry=None,
)

GC_PAUSES = Histogram(
    "gc_pause_seconds",
    "CPU time of each run of Python's cyclic garbage collector over generation 1 or 2, by "
    "generation (the process stands still meanwhile).",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    namespace=NAMESPACE,
    registry=None,
)


class _GcWatch:
    """Times each collection of generation 1 or 2 between gc's "start" and "stop" callbacks,
    in CPU time of the collecting thread: on a busy machine, wall time would also count the
    waits for a core. Young collections (generation 0) take microseconds and come thousands
    of times a second under load: timing them cost more than 1% of a process's CPU, so they are
    left out. Nothing is logged from here: a collection can start in the middle of a log
    write."""

    installed = False

    def __init__(self) -> None:
        self._children = {generation: GC_PAUSES.labels(str(generation)) for generation in (1, 2)}
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        child = self._children.get(info["generation"])
        if child is None:
            return
        if phase == "start":
            self._started = time.thread_time()
            return
        child.observe(time.thread_time() - self._started)


def watch_gc_pauses() -> None:
    """Time every collection into `orders_gc_pause_seconds` (once per process)."""
    if not _GcWatch.installed:
        _GcWatch.installed = True
        gc.callbacks.append(_GcWatch())


CONSUMER: tuple[Collector, ...] = (
    HANDLING_SECONDS,
    QUEUE_MESSAGES,
    QUEUE_CONSUMERS,
    RETRIES,
    DEAD_LETTERS,
    ACK_FRAMES,
    DEPENDENCY_UP,
    OUTAGES,
)
GATEWAY: tuple[Collector, ...] = (
    COMMANDS,
    HTTP_REQUESTS,
    WAITS_PENDING,
    WAITS_REFUSED,
    RECONNECTS,
    SESSIONS,
    GC_PAUSES,
)
COMMAND_WORKER: tuple[Collector, ...] = (
    COMMANDS,
    COMMAND_LATENCY,
    EVENTS_APPENDED,
    VERSION_CONFLICTS,
    EVENTS_RELAYED,
    RELAY_LEADER,
    RELAY_LAG,
    RELAY_BLOCKED,
    RECONNECTS,
    SESSIONS,
    GC_PAUSES,
    *CONSUMER,
)
PROJECTOR: tuple[Collector, ...] = (
    COMMAND_VISIBLE,
    EVENTS_PROJECTED,
    EVENTS_IGNORED,
    PROJECTION_LAG_POSITIONS,
    PROJECTION_LAG_SECONDS,
    PROJECTION_RECOVERIES,
    STREAMS_RECOVERED,
    STATUSES_RECOVERED,
    RECONNECTS,
    SESSIONS,
    GC_PAUSES,
    *CONSUMER,
)

_registered: set[int] = set()


def register(collectors: Iterable[Collector]) -> None:
    """Export `collectors` from this process's `/metrics` (each once, however often called)."""
    for collector in collectors:
        if id(collector) not in _registered:
            REGISTRY.register(collector)
            _registered.add(id(collector))


def init_command_series(command_types: Iterable[str]) -> None:
    """Export every command type and worker outcome from the start, at 0, so rates and alerts
    work before the first failure happens."""
    for command_type in command_types:
        COMMAND_LATENCY.labels(command_type)
        for outcome in WORKER_OUTCOMES:
            COMMANDS.labels(command_type, outcome)
    for scope in ("batch", "command"):
        VERSION_CONFLICTS.labels(scope)


def init_projection_series(projection: str, recovery_triggers: Iterable[str] = ()) -> None:
    """Export a projection's counters and lag from the start."""
    EVENTS_PROJECTED.labels(projection)
    EVENTS_IGNORED.labels(projection)
    PROJECTION_LAG_POSITIONS.labels(projection)
    PROJECTION_LAG_SECONDS.labels(projection)
    for trigger in recovery_triggers:
        PROJECTION_RECOVERIES.labels(projection, trigger)
    STREAMS_RECOVERED.labels(projection)
    STATUSES_RECOVERED.labels(projection)


def init_visible_series(command_types: Iterable[str]) -> None:
    """Export accepted -> visible of the command types a projection makes visible from the
    start."""
    for command_type in command_types:
        COMMAND_VISIBLE.labels(command_type)


def init_queue_series(queue: str, failure_kinds: Iterable[str]) -> None:
    """Export a consumer's retry and dead-letter counters at 0 from the start."""
    HANDLING_SECONDS.labels(queue)
    RETRIES.labels(queue)
    ACK_FRAMES.labels(queue)
    for kind in failure_kinds:
        DEAD_LETTERS.labels(queue, kind)
