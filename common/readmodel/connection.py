"""Opening a Redis client from `REDIS_URL`: one server, or a primary that Sentinels name.

`redis://` and `rediss://` URLs name one server, as redis-py reads them. A Sentinel URL names
the Sentinels and the monitored service instead:

    redis+sentinel://[[username]:password@]host1:26379[,host2:26379,...]/<service>[/<db>]

The credentials, if any, are those of the Redis servers (the primary and its replicas); the
Sentinels themselves are asked without any. A client opened from it asks the Sentinels for the
current primary when it connects, and connects again after a failover: a connection to a
server that went away fails, and one to a primary that was demoted fails its next write
(`READONLY`) and is dropped, so the retry that follows asks the Sentinels again.

Reads may go to replicas (`REDIS_READ_FROM=replicas`): `connect_redis(..., replicas=True)` gives a
client whose connections go to the service's replicas in turn (to the primary when no replica
is known). What may be read there, and what must not, is the caller's choice; see
docs/read-path.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
_SERVICE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class ReadFrom(StrEnum):
    """Where queries read views (`REDIS_READ_FROM`)."""

    PRIMARY = "primary"
    """Every read goes to the primary the projectors write (the default)."""
    REPLICAS = "replicas"
    """View reads go to the replicas the Sentinels know; a read that must be at least as new as
    something already seen (`min_version`) falls back to the primary when the replica is
    behind, and command statuses, waits and searches always use the primary."""


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """A `redis+sentinel://` URL, parsed."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelTarget | None:
    """The Sentinels, service and database a `redis+sentinel://` URL names; None for any other
    scheme (a URL redis-py reads itself). Raises ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        return None
    netloc = parts.netloc
    credentials, at, hosts = netloc.rpartition("@")
    if not at:
        credentials, hosts = "", netloc
    username = password = None
    if credentials:
        user, colon, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if not colon:
            # As in redis URLs, a lone credential before '@' is the password.
            username, password = None, unquote(user)
    sentinels = tuple(_host_port(item, url) for item in hosts.split(","))
    path = [segment for segment in parts.path.split("/") if segment]
    if not path or len(path) > 2:
        raise ValueError(f"{_shown(url)}: the path must be /<service name>[/<db>]")
    service = unquote(path[0])
    if not _SERVICE.match(service):
        raise ValueError(f"{_shown(url)}: {service!r} is not a Sentinel service name")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit() or not path[1].isascii():
            raise ValueError(f"{_shown(url)}: the database must be a number, not {path[1]!r}")
        db = int(path[1])
    if parts.query or parts.fragment:
        raise ValueError(f"{_shown(url)}: takes no query string or fragment")
    return SentinelTarget(sentinels, service, db, username, password)


def _host_port(item: str, url: str) -> tuple[str, int]:
    host, colon, port = item.strip().rpartition(":")
    if not colon:
        host, port = item.strip(), str(DEFAULT_SENTINEL_PORT)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"{_shown(url)}: a Sentinel address has no host")
    if not port.isdigit() or not port.isascii() or not 0 < int(port) < 65536:
        raise ValueError(f"{_shown(url)}: {port!r} is not a port")
    return host, int(port)


def _shown(url: str) -> str:
    """The URL without its password, for error messages."""
    return re.sub(r"//([^@/]*):[^@/]*@", r"//\1:***@", url)


def check_redis_url(url: str, read_from: ReadFrom) -> None:
    """Raise ValueError when `url` cannot be opened with `read_from`."""
    target = parse_sentinel_url(url)
    if target is None:
        if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"{_shown(url)}: REDIS_URL must start with redis://, rediss://, unix:// "
                f"or {SENTINEL_SCHEME}://"
            )
        if read_from is ReadFrom.REPLICAS:
            raise ValueError(
                f"REDIS_READ_FROM=replicas needs a {SENTINEL_SCHEME}:// REDIS_URL: replicas are "
                "found through the Sentinels"
            )


class SentinelRedis(Redis):
    """A client of a Sentinel-monitored service; closing it closes its Sentinel connections."""

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            await self.sentinels.aclose()


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel pool that queues callers for a connection once `max_connections` are out,
    instead of failing them."""


def connect_redis(
    url: str,
    *,
    replicas: bool = False,
    max_connections: int | None = None,
    blocking_timeout: float | None = None,
    **connection_kwargs: Any,
) -> Redis:
    """A client of the Redis `url` names (see the module's docstring). `replicas` sends its
    calls to replicas (Sentinel URLs only). With `max_connections`, callers beyond it wait up to
    `blocking_timeout` for a connection. Other arguments (timeouts, `client_name`) apply to
    every connection to a Redis server."""
    target = parse_sentinel_url(url)
    pool_kwargs: dict[str, Any] = {}
    if max_connections is not None:
        pool_kwargs = {"max_connections": max_connections, "timeout": blocking_timeout}
    if target is None:
        if replicas:
            raise ValueError(f"replicas are found through Sentinels: {_shown(url)} names none")
        if max_connections is None:
            return Redis.from_url(url, **connection_kwargs)
        return Redis(
            connection_pool=BlockingConnectionPool.from_url(url, **pool_kwargs, **connection_kwargs)
        )
    sentinel_kwargs = {k: v for k, v in connection_kwargs.items() if k.startswith("socket_")}
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    server_kwargs: dict[str, Any] = {
        "db": target.db,
        "username": target.username,
        "password": target.password,
        **connection_kwargs,
        **pool_kwargs,
    }
    pool_class = (
        BlockingSentinelConnectionPool if max_connections is not None else SentinelConnectionPool
    )
    choose = sentinel.slave_for if replicas else sentinel.master_for
    client = choose(
        target.service, redis_class=SentinelRedis, connection_pool_class=pool_class, **server_kwargs
    )
    assert isinstance(client, SentinelRedis)
    client.sentinels = sentinel
    return client
