"""`REDIS_URL` naming Sentinels, and where the gateway's reads go, without services."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.sentinel import SentinelConnectionPool

from common.readmodel.connection import (
    BlockingSentinelConnectionPool,
    ReadFrom,
    SentinelRedis,
    SentinelTarget,
    connect_redis,
    parse_sentinel_url,
)
from common.settings import Settings
from gateway.reads import queries_of


@pytest.mark.parametrize(
    ("url", "target"),
    [
        (
            "redis+sentinel://host1:26379,host2:26380/mymaster/3",
            SentinelTarget((("host1", 26379), ("host2", 26380)), "mymaster", 3),
        ),
        (
            "redis+sentinel://sentinel/mymaster",
            SentinelTarget((("sentinel", 26379),), "mymaster", 0),
        ),
        (
            "redis+sentinel://ops:s%40cret@h1:1,[::1]:2/orders-primary/0",
            SentinelTarget((("h1", 1), ("::1", 2)), "orders-primary", 0, "ops", "s@cret"),
        ),
        (
            "redis+sentinel://:pw@h1:1/m",
            SentinelTarget((("h1", 1),), "m", 0, None, "pw"),
        ),
        ("redis+sentinel://pw@h1:1/m/", SentinelTarget((("h1", 1),), "m", 0, None, "pw")),
    ],
)
def test_sentinel_urls_name_their_sentinels_service_database_and_credentials(
    url: str, target: SentinelTarget
) -> None:
    assert parse_sentinel_url(url) == target


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://h:1/2", "unix:///s.sock"])
def test_other_urls_are_left_to_redis_py(url: str) -> None:
    assert parse_sentinel_url(url) is None


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+sentinel://h1:26379", "/<service name>[/<db>]"),
        ("redis+sentinel://h1:26379/a/b/c", "/<service name>[/<db>]"),
        ("redis+sentinel://h1:26379/m/zero", "database must be a number"),
        ("redis+sentinel://h1:port/m", "'port' is not a port"),
        ("redis+sentinel://h1:70000/m", "not a port"),
        ("redis+sentinel://h1:1,:2/m", "has no host"),
        ("redis+sentinel://h1:1/m?ssl=true", "no query string"),
        ("redis+sentinel://h1:1/bad%20name", "not a Sentinel service name"),
    ],
)
def test_a_malformed_sentinel_url_says_what_is_wrong(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        parse_sentinel_url(url)


def test_a_password_never_shows_in_the_complaint() -> None:
    with pytest.raises(ValueError, match="database must be a number") as raised:
        parse_sentinel_url("redis+sentinel://user:hunter2@h1:1/m/x")
    assert "hunter2" not in str(raised.value)
    assert "user:***@" in str(raised.value)


def test_reading_from_replicas_needs_sentinels() -> None:
    with pytest.raises(ValidationError, match="REDIS_READ_FROM=replicas needs"):
        Settings(redis_url="redis://127.0.0.1:6379/0", redis_read_from=ReadFrom.REPLICAS)
    with pytest.raises(ValidationError, match="must start with"):
        Settings(redis_url="http://127.0.0.1:6379/0")
    settings = Settings(redis_url="redis+sentinel://h1:1/m/2", redis_read_from="replicas")
    assert settings.redis_read_from is ReadFrom.REPLICAS
    assert Settings().redis_read_from is ReadFrom.PRIMARY


def test_clients_follow_the_primary_or_the_replicas_the_url_names() -> None:
    async def opened() -> None:
        url = "redis+sentinel://:pw@h1:1,h2:2/orders/4"
        primary = connect_redis(url, socket_timeout=3.0)
        replicas = connect_redis(url, replicas=True, socket_timeout=3.0)
        blocking = connect_redis(url, max_connections=5, blocking_timeout=1.0)
        plain = connect_redis("redis://127.0.0.1:1/0", max_connections=5, blocking_timeout=1.0)
        try:
            for client in (primary, replicas, blocking):
                assert isinstance(client, SentinelRedis)
                pool = client.connection_pool
                assert isinstance(pool, SentinelConnectionPool)
                assert pool.service_name == "orders"
                assert pool.connection_kwargs["db"] == 4
                assert pool.connection_kwargs["password"] == "pw"
                assert client.sentinels is not None
                assert [
                    s.connection_pool.connection_kwargs["port"] for s in client.sentinels.sentinels
                ] == [1, 2]
            assert primary.connection_pool.is_master  # type: ignore[attr-defined]
            assert not replicas.connection_pool.is_master  # type: ignore[attr-defined]
            assert isinstance(blocking.connection_pool, BlockingSentinelConnectionPool)
            assert blocking.connection_pool.max_connections == 5
            assert type(plain) is Redis
            assert plain.connection_pool.max_connections == 5
            with pytest.raises(ValueError, match="names none"):
                connect_redis("redis://127.0.0.1:1/0", replicas=True)
        finally:
            for client in (primary, replicas, blocking, plain):
                await client.aclose()

    asyncio.run(opened())


class _Queries:
    def __init__(self, redis: object, keys: object) -> None:
        self.redis = redis
        self.keys = keys


def _request(primary: object, reads: object) -> Any:
    runtime = SimpleNamespace(redis=primary, redis_reads=reads, keys="keys")
    return SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(runtime=runtime)))


def test_queries_read_replicas_unless_they_must_be_current() -> None:
    request = _request(primary := object(), replicas := object())
    reads = queries_of(request, _Queries)
    current = queries_of(request, _Queries, primary=True)
    assert (reads.redis, current.redis) == (replicas, primary)
    assert queries_of(request, _Queries) is reads  # made once, its scripts registered once
    assert queries_of(request, _Queries, primary=True) is current


def test_without_replicas_every_query_is_the_same_instance() -> None:
    request = _request(primary := object(), primary)
    assert queries_of(request, _Queries, primary=True) is queries_of(request, _Queries)
