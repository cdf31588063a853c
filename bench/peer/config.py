"""The peer's settings, read from the environment the benchmark gives every process."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PeerSettings:
    """Where the peer's services are; the benchmark points them at its slice."""

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = ""
    """`REDIS_KEY_PREFIX`: the peer's keys and channel are under `{key_prefix}peer:`."""
    log_level: str = "INFO"
    pool_size: int = 10
    """asyncpg connections of the worker (`PEER_POOL_SIZE`)."""
    prefetch: int = 64
    """Unacknowledged messages a consumer holds (`PEER_PREFETCH`): enough to keep the pool and
    the confirms busy, small enough that a restart redelivers little.
    https://www.rabbitmq.com/docs/consumer-prefetch"""

    @classmethod
    def from_env(cls) -> PeerSettings:
        env = os.environ
        defaults = cls()
        return cls(
            amqp_url=env.get("AMQP_URL", defaults.amqp_url),
            database_url=env.get("DATABASE_URL", defaults.database_url),
            redis_url=env.get("REDIS_URL", defaults.redis_url),
            key_prefix=env.get("REDIS_KEY_PREFIX", defaults.key_prefix),
            log_level=env.get("LOG_LEVEL", defaults.log_level),
            pool_size=int(env.get("PEER_POOL_SIZE", defaults.pool_size)),
            prefetch=int(env.get("PEER_PREFETCH", defaults.prefetch)),
        )
