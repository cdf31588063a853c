"""The local services and one run's isolated corner of them.

A run gets its own RabbitMQ vhost (`bench-<run>`), PostgreSQL database (`orders_bench_<run>`)
and Redis key prefix (`bench-<run>:`), all removed at the end.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Services:
    """Where the local services answer."""

    host: str = "127.0.0.1"
    amqp_port: int = 5672
    management_port: int = 15672
    pg_port: int = 5432
    pg_user: str = "postgres"
    redis_port: int = 6379
    redis_db: int = 0

    def missing(self) -> list[str]:
        """Names of the services that do not accept connections."""
        ports = {
            "RabbitMQ": self.amqp_port,
            "RabbitMQ management": self.management_port,
            "PostgreSQL": self.pg_port,
            "Redis": self.redis_port,
        }
        return [name for name, port in ports.items() if not port_answers(self.host, port)]


def port_answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


@dataclass
class Isolation:
    """One run's vhost, database and key prefix, and the environment naming them."""

    services: Services
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    @property
    def vhost(self) -> str:
        return f"bench-{self.run_id}"

    @property
    def database(self) -> str:
        return f"orders_bench_{self.run_id}"

    @property
    def prefix(self) -> str:
        return f"bench-{self.run_id}:"

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@{self.services.host}:{self.services.amqp_port}/{self.vhost}"

    @property
    def database_url(self) -> str:
        s = self.services
        return f"postgresql://{s.pg_user}@{s.host}:{s.pg_port}/{self.database}"

    @property
    def redis_url(self) -> str:
        s = self.services
        return f"redis://{s.host}:{s.redis_port}/{s.redis_db}"

    def env(self, log_level: str) -> dict[str, str]:
        return {
            "AMQP_URL": self.amqp_url,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "REDIS_KEY_PREFIX": self.prefix,
            "LOG_LEVEL": log_level,
            "PYTHONUNBUFFERED": "1",
        }

    # --- set-up and tear-down ------------------------------------------------------------------

    def management(self, method: str, path: str, body: Any = None) -> Any:
        """Call the RabbitMQ management HTTP API as guest."""
        s = self.services
        request = urllib.request.Request(
            f"http://{s.host}:{s.management_port}/api{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={
                "Authorization": "Basic " + base64.b64encode(b"guest:guest").decode(),
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def create(self) -> None:
        self.management("PUT", f"/vhosts/{self.vhost}", {})
        self.management(
            "PUT",
            f"/permissions/{self.vhost}/guest",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )

    def destroy(self) -> list[str]:
        """Remove the vhost, the database and the keys; the list of what could not be."""
        problems = []
        try:
            self.management("DELETE", f"/vhosts/{self.vhost}")
        except (urllib.error.URLError, OSError) as exc:
            problems.append(f"vhost {self.vhost}: {exc}")
        try:
            run_async(self._drop_database())
        except Exception as exc:
            problems.append(f"database {self.database}: {exc!r}")
        try:
            self.delete_keys()
        except Exception as exc:
            problems.append(f"redis prefix {self.prefix}: {exc!r}")
        return problems

    async def _drop_database(self) -> None:
        import asyncpg

        s = self.services
        conn = await asyncpg.connect(f"postgresql://{s.pg_user}@{s.host}:{s.pg_port}/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            await conn.close()

    def delete_keys(self, pattern: str | None = None) -> int:
        """Delete every key under the prefix (SCAN is fine here: no request path waits)."""
        import redis

        client = redis.Redis.from_url(self.redis_url)
        deleted = 0
        try:
            batch: list[bytes] = []
            for key in client.scan_iter(match=pattern or f"{self.prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += int(client.unlink(*batch))
                    batch = []
            if batch:
                deleted += int(client.unlink(*batch))
        finally:
            client.close()
        return deleted


def run_async(coroutine: Any) -> Any:
    import asyncio

    return asyncio.run(coroutine)
