"""Configuration read from the environment, with defaults that work against local services."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.messaging.nodes import node_urls
from common.observability.logging import LogFormat
from common.readmodel.connection import ReadFrom, check_redis_url


class Settings(BaseSettings):
    """Every setting of every process. Environment variables use the upper-case field name."""

    # An error must not echo a value: URLs carry passwords.
    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", frozen=True, hide_input_in_errors=True
    )

    domains: str = "orders"
    """Comma-separated packages whose `DOMAIN` this deployment runs; every process loads the
    same list (see docs/extending.md)."""

    app_prefix: str = Field(default="orders", pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    """Prefix of every exchange, queue and metric name, so the management console and the
    dashboards group them."""

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    """RabbitMQ URL; its path names the vhost (`%2F` is the default vhost). For a cluster, a
    comma-separated list of every node's URL (same vhost): each process connects to one, in a
    shuffled order, and moves on to the next when it loses it
    (https://www.rabbitmq.com/docs/clustering)."""

    database_url: str = "postgresql://postgres@127.0.0.1:5432/orders"
    """PostgreSQL URL of the event store; the database is created on start-up if missing."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis URL of the read model: `redis://host:port/<db>` for one server, or
    `redis+sentinel://host1:26379,host2:26379/<service>/<db>` for the primary that these
    Sentinels name (followed through failovers); credentials as in redis URLs."""

    redis_read_from: ReadFrom = ReadFrom.PRIMARY
    """`primary`, or `replicas`: queries read views from the replicas the Sentinels know (a
    `min_version` the replica has not reached yet is read from the primary). Needs a
    `redis+sentinel://` URL."""

    redis_key_prefix: str = "orders:"
    """Prefix of every Redis key and pub/sub channel, so deployments can share one Redis;
    `<APP_PREFIX>:` unless set."""

    command_prefetch: int = Field(default=200, ge=1, le=5000)
    """Unacked command messages per worker
    (https://www.rabbitmq.com/docs/consumer-prefetch)."""

    projector_prefetch: int = Field(default=64, ge=1, le=5000)
    """Unacked event messages per projection. A message holds one event or a batch of up to
    50, so this bounds the bodies a projector holds; `PROJECTOR_EVENTS_IN_FLIGHT` bounds the
    work."""

    projector_events_in_flight: int = Field(default=500, ge=1, le=50_000)
    """The most events a projection applies at once (a batch counts its events)."""

    redis_timeout_s: float = Field(default=30.0, gt=0)
    """Connect and read timeout of the workers' Redis calls: a Redis that stops answering
    fails a call (which is retried) instead of hanging the worker."""

    db_statement_timeout_s: float = Field(default=30.0, gt=0)
    """Timeout of one event-store statement: a PostgreSQL that stops answering fails it."""

    db_pool_size: int = Field(default=8, ge=1, le=64)
    """PostgreSQL connections per worker process."""

    conflict_retries: int = Field(default=10, ge=0, le=100)
    """How often a command is re-run on a fresh load after an expected-version conflict."""

    max_delivery_attempts: int = Field(default=5, ge=1, le=50)
    """Tries of a message failing for a transient reason before it is dead-lettered."""

    retry_base_delay_ms: int = Field(default=500, ge=10, le=600_000)
    """Delay before the first retry; each further retry doubles it."""

    relay_batch_size: int = Field(default=500, ge=1, le=10_000)
    """Events the relay publishes per round trip to the event store."""

    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest HTTP request body the gateway accepts (413 above it)."""

    publish_timeout_s: float = Field(default=5.0, gt=0)
    """How long the gateway waits for a publisher confirm before answering 503."""

    relay_publish_timeout_s: float = Field(default=30.0, gt=0)
    """How long the relay waits for a batch's confirms before sending it again. No client
    waits on it; under a backlog, confirms of a busy quorum queue can take seconds, and a
    resend only adds duplicates. A lost connection fails a publish at once, whatever this is."""

    max_wait_s: float = Field(default=10.0, ge=0)
    """Upper bound of `Prefer: wait=N` and `min_version` waits."""

    max_waiters: int = Field(default=1000, ge=0)
    """Pending `Prefer: wait` and `min_version` waits per gateway process; beyond it they are
    answered at once (the plain 202, or the view with `X-Stale: true`)."""

    http_max_concurrency: int = Field(default=2000, ge=1)
    """Connections and requests one gateway process serves at once; uvicorn answers 503 beyond
    it (`limit_concurrency`). Keep it above `MAX_WAITERS`."""

    command_status_ttl_s: int = Field(default=7 * 24 * 3600, ge=1)
    """Lifetime of a command's status (`GET /commands/{command_id}`), renewed by each write."""

    recovery_margin_s: float = Field(default=60.0, ge=0)
    """When a projector finds that Redis lost writes (an older snapshot restored, a replica that
    missed writes promoted), it checks every stream with events recorded since this long before
    the newest event the views still hold: events applied late (retries, redeliveries) may sit
    below it."""

    shutdown_timeout_s: float = Field(default=15.0, gt=0)
    """Time a worker gives in-flight messages to finish after SIGTERM."""

    metrics_host: str = "127.0.0.1"
    """Address a worker's health and metrics server binds (`0.0.0.0` to be scraped from other
    hosts)."""

    metrics_port: int | None = None
    """Port of a worker's health and metrics HTTP server; unset means none."""

    api_keys: str = ""
    """Comma-separated API keys; when set, every endpoint but health needs a Bearer key."""

    log_level: str = "INFO"
    """Root log level."""

    log_format: LogFormat = LogFormat.JSON
    """`json` (one object a line) or `console` (short coloured lines for a person; `make run`
    uses it unless this is set)."""

    traces_file: str | None = None
    """Also write every finished trace span to this file, one JSON object per line (tests, or
    a look at traces without a collector). Tracing is otherwise configured by the standard
    `OTEL_*` variables and off without them."""

    @field_validator("amqp_url")
    @classmethod
    def _amqp_nodes_parse(cls, value: str) -> str:
        node_urls(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _key_prefix_follows_app_prefix(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("redis_key_prefix") and data.get("app_prefix"):
            return {**data, "redis_key_prefix": f"{data['app_prefix']}:"}
        return data

    @model_validator(mode="after")
    def _redis_url_opens(self) -> Settings:
        check_redis_url(self.redis_url, self.redis_read_from)
        return self

    @model_validator(mode="after")
    def _waits_leave_room_for_requests(self) -> Settings:
        if self.max_waiters >= self.http_max_concurrency:
            raise ValueError(
                "MAX_WAITERS must be below HTTP_MAX_CONCURRENCY: waits that fill the gateway's "
                "connections leave no room to answer anything"
            )
        return self

    @property
    def domain_names(self) -> list[str]:
        return [name.strip() for name in self.domains.split(",") if name.strip()]

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
