"""The gateway in process with no service behind it, for tests through `httpx.ASGITransport` or
schemathesis' ASGI client.

`offline_settings` names addresses nothing answers on, so a request that reached for RabbitMQ or
Redis would fail rather than touch a shared service. `accepting_app` goes one step further: its
runtime's publisher records commands instead of sending them and its Redis knows no idempotency
key yet, so a valid command is answered 202 as a running gateway answers it once RabbitMQ
confirmed it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from common.contracts.commands import CommandBase
from common.domain import Registry, load_domains
from common.readmodel.keys import Keys
from common.settings import Settings
from gateway.app import create_app

NOWHERE = "://127.0.0.1:9"
"""Service addresses nothing answers on."""


def offline_settings(**changes: Any) -> Settings:
    """Settings for an app whose requests must not reach a service (the orders domain unless
    `domains` says otherwise)."""
    return Settings(
        **{
            "domains": "orders",
            "amqp_url": f"amqp{NOWHERE}/",
            "redis_url": f"redis{NOWHERE}/0",
            "database_url": f"postgresql{NOWHERE}/none",
            **changes,
        }
    )


@dataclass
class RecordingPublisher:
    """Takes every command at once, as RabbitMQ does when it confirms it."""

    published: list[tuple[CommandBase, str]] = field(default_factory=list)

    async def publish(self, command: CommandBase, stream_id: str) -> None:
        self.published.append((command, stream_id))


class FirstUseRedis:
    """The request path's Redis batch (`AutoPipeline.run`) as a Redis that has seen nothing:
    every idempotency key is new, and the `accepted` status write succeeds."""

    async def run(self, stage: Callable[[Any], Awaitable[Any] | Any]) -> list[Any]:
        return [None]


@dataclass
class OfflineRuntime:
    """What a command route uses of `gateway.runtime.Runtime`."""

    settings: Settings
    registry: Registry
    publisher: RecordingPublisher
    keys: Keys
    redis_batch: FirstUseRedis = field(default_factory=FirstUseRedis)


def accepting_app(settings: Settings) -> tuple[FastAPI, RecordingPublisher]:
    """The gateway app of `settings`, accepting commands without RabbitMQ or Redis, and the
    publisher that records them. Reads and `Prefer: wait` still need Redis: not for this app."""
    registry = load_domains(settings.domain_names)
    app = create_app(settings, registry=registry)
    publisher = RecordingPublisher()
    app.state.runtime = OfflineRuntime(
        settings, registry, publisher, Keys(settings.redis_key_prefix)
    )

    @asynccontextmanager
    async def no_services(_app: FastAPI) -> AsyncIterator[None]:
        yield

    # Whether the client runs the lifespan (schemathesis does) or not (httpx), nothing opens.
    app.router.lifespan_context = no_services
    return app, publisher
