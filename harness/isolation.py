"""Where the services answer, and one run's slice of them.

Local services are used when they answer; otherwise, when a Docker engine is reachable,
`endpoints()` starts throw-away containers. A run gets its own RabbitMQ vhost `<kind>-<id>`,
PostgreSQL database `orders_<kind>_<id>` and Redis key prefix `<kind>-<id>:`, so two runs side
by side never see each other's messages, rows or keys; all three are removed afterwards.
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
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis

from common.settings import Settings


def answers(host: str, port: int) -> bool:
    """Something accepts TCP connections on `host:port`."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


@dataclass
class Endpoints:
    """Where RabbitMQ, PostgreSQL and Redis answer."""

    amqp_host: str = "127.0.0.1"
    amqp_port: int = 5672
    amqp_nodes: tuple[int, ...] = ()
    """AMQP ports of more nodes of the same cluster on `amqp_host` (`harness.rabbit_cluster`)."""
    management_port: int | None = 15672
    """None: no management API; vhosts are then made with rabbitmqctl."""
    rabbitmq_nodes: tuple[str, ...] = ()
    """The nodes rabbitmqctl is pointed at (`-n`), tried in turn; none: the machine's own."""
    rabbitmq_disposable: bool = False
    """The broker is removed after the run (a local cluster): a slice leaves its vhost to go
    with it. (Deleting a vhost waits minutes on a quorum queue whose member node is down.)"""
    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_user: str = "postgres"
    pg_password: str = ""
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    redis_db: int = 0
    """The Redis index every slice uses."""
    containers: list[Any] = field(default_factory=list)

    def amqp_url(self, vhost: str) -> str:
        """The URL of every node (one, or a comma-separated list for a cluster)."""
        return ",".join(
            f"amqp://guest:guest@{self.amqp_host}:{port}/{vhost}"
            for port in (self.amqp_port, *self.amqp_nodes)
        )

    def database_url(self, database: str) -> str:
        auth = self.pg_user + (f":{self.pg_password}" if self.pg_password else "")
        return f"postgresql://{auth}@{self.pg_host}:{self.pg_port}/{database}"

    def redis_url(self, index: int | None = None) -> str:
        db = self.redis_db if index is None else index
        return f"redis://{self.redis_host}:{self.redis_port}/{db}"

    def missing(self) -> list[str]:
        """Names of the services that do not accept connections."""
        ports = {
            "RabbitMQ": (self.amqp_host, self.amqp_port),
            "PostgreSQL": (self.pg_host, self.pg_port),
            "Redis": (self.redis_host, self.redis_port),
        }
        if self.management_port is not None:
            ports["RabbitMQ management"] = (self.amqp_host, self.management_port)
        return [name for name, (host, port) in ports.items() if not answers(host, port)]

    def management(self, method: str, path: str, body: Any = None) -> Any:
        """Call the RabbitMQ management HTTP API as guest (`OSError` when there is none)."""
        if self.management_port is None:
            raise OSError("this RabbitMQ has no management API")
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
    cache = DockerContainer("redis:7-alpine").with_exposed_ports(6379)
    with rabbit, postgres, cache:
        wait_for_logs(rabbit, "Server startup complete", timeout=120)
        wait_for_logs(postgres, "database system is ready to accept connections", timeout=60)
        wait_for_logs(cache, "Ready to accept connections", timeout=30)
        yield Endpoints(
            amqp_host=rabbit.get_container_host_ip(),
            amqp_port=int(rabbit.get_exposed_port(5672)),
            management_port=int(rabbit.get_exposed_port(15672)),
            pg_host=postgres.get_container_host_ip(),
            pg_port=int(postgres.get_exposed_port(5432)),
            redis_host=cache.get_container_host_ip(),
            redis_port=int(cache.get_exposed_port(6379)),
        )


def new_run_id() -> str:
    return uuid.uuid4().hex[:10]


@dataclass
class Slice:
    """One run's vhost, database and key prefix on `endpoints`."""

    endpoints: Endpoints
    kind: str
    """What the run is (`test`, `chaos`, `bench`): the first part of every name."""
    run_id: str = field(default_factory=new_run_id)

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.run_id}"

    @property
    def vhost(self) -> str:
        return self.name

    @property
    def database(self) -> str:
        return "orders_" + self.name.replace("-", "_")

    @property
    def prefix(self) -> str:
        return f"{self.name}:"

    @property
    def amqp_url(self) -> str:
        return self.endpoints.amqp_url(self.vhost)

    @property
    def database_url(self) -> str:
        return self.endpoints.database_url(self.database)

    @property
    def redis_url(self) -> str:
        return self.endpoints.redis_url()

    def settings(self, **overrides: Any) -> Settings:
        """The production defaults on this slice, with `overrides`."""
        return Settings(
            amqp_url=self.amqp_url,
            database_url=self.database_url,
            redis_url=self.redis_url,
            redis_key_prefix=self.prefix,
            **overrides,
        )

    # --- set-up and tear-down ------------------------------------------------------------------

    def create(self) -> None:
        """The vhost, with full permissions for guest: the management API, else rabbitmqctl.
        (The database is created by the first process that prepares it.)"""
        try:
            self.endpoints.management("PUT", f"/vhosts/{self.vhost}", {})
            self.endpoints.management(
                "PUT",
                f"/permissions/{self.vhost}/guest",
                {"configure": ".*", "write": ".*", "read": ".*"},
            )
        except (urllib.error.URLError, OSError):
            self._rabbitmqctl("add_vhost", self.vhost)
            self._rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")

    def destroy(self) -> list[str]:
        """Remove the vhost, the database and the keys; the list of what could not be."""
        problems = []
        try:
            if not self.endpoints.rabbitmq_disposable:
                self.endpoints.management("DELETE", f"/vhosts/{self.vhost}")
        except (urllib.error.URLError, OSError) as exc:
            try:
                self._rabbitmqctl("delete_vhost", self.vhost)
            except (subprocess.CalledProcessError, OSError):
                problems.append(f"vhost {self.vhost}: {exc}")
        try:
            asyncio.run(self._drop_database())
        except Exception as exc:
            problems.append(f"database {self.database}: {exc!r}")
        try:
            self.delete_keys()
        except Exception as exc:
            problems.append(f"redis prefix {self.prefix}: {exc!r}")
        return problems

    def _rabbitmqctl(self, *args: str) -> None:
        """On the machine's node, or on the first of the endpoints' nodes that answers."""
        nodes = self.endpoints.rabbitmq_nodes
        if not nodes:
            _rabbitmqctl(*args)
            return
        for node in nodes:
            try:
                _rabbitmqctl("-n", node, *args)
                return
            except subprocess.CalledProcessError:
                if node == nodes[-1]:
                    raise

    async def _drop_database(self) -> None:
        conn = await asyncpg.connect(self.endpoints.database_url("postgres"))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            await conn.close()

    def delete_keys(self, pattern: str | None = None) -> int:
        """Delete every key under the prefix, or matching `pattern` (SCAN is fine here: no
        request path waits)."""
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


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True)


@contextlib.contextmanager
def isolated_slice(
    endpoints: Endpoints, kind: str, run_id: str | None = None, **overrides: Any
) -> Iterator[Settings]:
    """Settings naming a fresh slice (`Slice`) with `overrides`; removed afterwards, and an
    error if it could not be."""
    piece = Slice(endpoints, kind, run_id or new_run_id())
    piece.create()
    try:
        yield piece.settings(**overrides)
    finally:
        problems = piece.destroy()
        if problems:
            raise RuntimeError("cleaning up: " + "; ".join(problems))


def settings_env(settings: Settings, log_level: str = "INFO") -> dict[str, str]:
    """The environment that makes a process use `settings`."""
    return {
        "DOMAINS": settings.domains,
        "APP_PREFIX": settings.app_prefix,
        "AMQP_URL": settings.amqp_url,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "REDIS_READ_FROM": settings.redis_read_from.value,
        "RETRY_BASE_DELAY_MS": str(settings.retry_base_delay_ms),
        "SHUTDOWN_TIMEOUT_S": str(settings.shutdown_timeout_s),
        "LOG_LEVEL": log_level,
        "PYTHONUNBUFFERED": "1",
    }
