"""Where the services are for this test run, and an isolated corner of each.

Local services are used when they answer; otherwise, when a Docker engine is reachable, the
suite starts throw-away containers. Each run gets its own RabbitMQ vhost, PostgreSQL database
and Redis key prefix, so two runs side by side never see each other's messages or rows.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis

from common.settings import Settings


@dataclass
class Endpoints:
    amqp_host: str = "127.0.0.1"
    amqp_port: int = 5672
    management_port: int = 15672
    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_user: str = "postgres"
    pg_password: str = ""
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    containers: list[Any] = field(default_factory=list)

    def amqp_url(self, vhost: str) -> str:
        return f"amqp://guest:guest@{self.amqp_host}:{self.amqp_port}/{vhost}"

    def database_url(self, database: str) -> str:
        auth = self.pg_user + (f":{self.pg_password}" if self.pg_password else "")
        return f"postgresql://{auth}@{self.pg_host}:{self.pg_port}/{database}"

    def redis_url(self, index: int = 0) -> str:
        return f"redis://{self.redis_host}:{self.redis_port}/{index}"

    def management(self, method: str, path: str, body: Any = None) -> Any:
        """Call the RabbitMQ management HTTP API as guest."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://{self.amqp_host}:{self.management_port}/api{path}",
            data=data,
            method=method,
            headers={
                "Authorization": "Basic " + base64.b64encode(b"guest:guest").decode(),
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None


def answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def docker_available() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def endpoints() -> Iterator[Endpoints]:
    """Local services if all answer, else containers (when Docker runs), else a clear error."""
    local = Endpoints()
    if all(answers("127.0.0.1", p) for p in (5672, 5432, 6379)):
        yield local
        return
    if not docker_available():
        raise RuntimeError(
            "RabbitMQ, PostgreSQL or Redis is not answering on 127.0.0.1 and no Docker engine "
            "is available; start them (see README, 'Running the tests')."
        )
    with _containers() as found:
        yield found


@contextlib.contextmanager
def _containers() -> Iterator[Endpoints]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    rabbit = DockerContainer("rabbitmq:3.13-management").with_exposed_ports(5672, 15672)
    postgres = (
        DockerContainer("postgres:16-alpine")
        .with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
        .with_exposed_ports(5432)
    )
    redis = DockerContainer("redis:7-alpine").with_exposed_ports(6379)
    with rabbit, postgres, redis:
        wait_for_logs(rabbit, "Server startup complete", timeout=120)
        wait_for_logs(postgres, "database system is ready to accept connections", timeout=60)
        wait_for_logs(redis, "Ready to accept connections", timeout=30)
        yield Endpoints(
            amqp_host=rabbit.get_container_host_ip(),
            amqp_port=int(rabbit.get_exposed_port(5672)),
            management_port=int(rabbit.get_exposed_port(15672)),
            pg_host=postgres.get_container_host_ip(),
            pg_port=int(postgres.get_exposed_port(5432)),
            redis_host=redis.get_container_host_ip(),
            redis_port=int(redis.get_exposed_port(6379)),
        )


def create_vhost(ep: Endpoints, vhost: str) -> None:
    """A vhost with full permissions for guest: the management API, else rabbitmqctl."""
    try:
        ep.management("PUT", f"/vhosts/{vhost}", {})
        ep.management(
            "PUT", f"/permissions/{vhost}/guest", {"configure": ".*", "write": ".*", "read": ".*"}
        )
    except (urllib.error.URLError, OSError):
        subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
        subprocess.run(
            ["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )


def delete_vhost(ep: Endpoints, vhost: str) -> None:
    try:
        ep.management("DELETE", f"/vhosts/{vhost}")
    except (urllib.error.URLError, OSError):
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True)


@contextlib.contextmanager
def isolated_slice(ep: Endpoints, name: str, **overrides: Any) -> Iterator[Settings]:
    """Settings naming a fresh vhost `name`, database `orders_<name>` and Redis key prefix
    `name:`, with `overrides`; all three are removed afterwards."""
    vhost = name
    database = "orders_" + name.replace("-", "_")
    create_vhost(ep, vhost)
    settings = Settings(
        amqp_url=ep.amqp_url(vhost),
        database_url=ep.database_url(database),
        redis_url=ep.redis_url(0),
        redis_key_prefix=f"{name}:",
        **overrides,
    )
    try:
        yield settings
    finally:
        delete_vhost(ep, vhost)
        asyncio.run(_drop_database(ep, database))
        _delete_prefix(settings)


async def _drop_database(ep: Endpoints, database: str) -> None:
    conn = await asyncpg.connect(ep.database_url("postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


def _delete_prefix(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        found = list(client.scan_iter(match=f"{settings.redis_key_prefix}*", count=1000))
        for start in range(0, len(found), 500):
            client.delete(*found[start : start + 500])
    finally:
        client.close()
