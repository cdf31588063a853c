"""The long-lived resources of one gateway process, opened at start-up and shared by requests."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.requests import Request

from common.domain import Registry
from common.messaging.topology import Topology
from common.readmodel.connection import ReadFrom, connect_redis
from common.readmodel.keys import Keys
from common.readmodel.pipelining import AutoPipeline
from common.settings import Settings
from gateway.publishing import CommandPublisher

log = logging.getLogger(__name__)

REDIS_ERRORS = (RedisError, OSError, TimeoutError)
"""What a Redis call raises when Redis is down or slow."""

REDIS_TIMEOUT_S = 2.0
"""Connect and read timeout of Redis calls, so a hung Redis gives a 503, not a hung request."""


class Runtime:
    """Settings, the AMQP publisher and the Redis clients of the running gateway."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.keys = Keys(settings.redis_key_prefix)
        self.publisher = CommandPublisher(
            settings.amqp_url,
            Topology(settings.app_prefix, tuple(registry.projections)),
            timeout_s=settings.publish_timeout_s,
            retry_base_delay_ms=settings.retry_base_delay_ms,
        )
        connection: dict[str, Any] = {
            "socket_connect_timeout": REDIS_TIMEOUT_S,
            "socket_timeout": REDIS_TIMEOUT_S,
            "client_name": redis_client_name(settings.redis_key_prefix),
        }
        self.redis: Redis = connect_redis(settings.redis_url, **connection)
        """The primary: writes, command statuses, waits and anything that must be current."""
        self.redis_reads: Redis = self.redis
        """Where queries read views: the primary, or its replicas with
        `REDIS_READ_FROM=replicas`."""
        if settings.redis_read_from is ReadFrom.REPLICAS:
            self.redis_reads = connect_redis(settings.redis_url, replicas=True, **connection)
        self.redis_batch = AutoPipeline(self.redis)
        """The request path's Redis writes go through here, pipelined with other requests'."""

    async def start(self, broker_wait_s: float) -> None:
        """Connect to RabbitMQ, waiting at most `broker_wait_s`; later, 503 until connected."""
        await self.publisher.start(broker_wait_s)

    async def close(self) -> None:
        await self.publisher.close()
        await self.redis_batch.close()
        if self.redis_reads is not self.redis:
            await self.redis_reads.aclose()
        await self.redis.aclose()

    async def readiness(self) -> dict[str, bool]:
        """Each dependency and whether it answers now."""
        return {"rabbitmq": self.publisher.is_ready, "redis": await self._redis_answers()}

    async def _redis_answers(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.redis.ping(), REDIS_TIMEOUT_S))
        except Exception as exc:
            log.debug("redis ping failed: %r", exc)
            return False


def redis_client_name(prefix: str) -> str:
    """`gateway:<prefix>`, so `CLIENT LIST` tells which deployment a connection serves."""
    return "gateway:" + re.sub(r"[^!-~]", "_", prefix)


def runtime_of(request: Request) -> Runtime:
    """The runtime of the app serving `request` (set by the app's lifespan)."""
    return cast(Runtime, request.app.state.runtime)


def settings_of(request: Request) -> Settings:
    """The settings of the app serving `request` (set when the app is made, before its
    lifespan opens the runtime)."""
    return cast(Settings, request.app.state.settings)
