"""The RabbitMQ nodes of `AMQP_URL`: one URL, or a comma-separated list naming every node of a
cluster, tried in a shuffled order so that processes spread over the nodes.

Every node must name the same virtual host: a cluster shares its vhosts, and two vhosts in one
setting would be two deployments.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

import aio_pika

SCHEMES = ("amqp", "amqps")


def node_urls(amqp_url: str) -> tuple[str, ...]:
    """The node URLs of `amqp_url`, in the order given; `ValueError` naming the bad one when a
    part is empty, not `amqp(s)://host...`, or names another vhost than the first."""
    urls = tuple(part.strip() for part in amqp_url.split(","))
    vhosts = set()
    for url in urls:
        if not url:
            raise ValueError("AMQP_URL has an empty node (two commas, or one at an end)")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (it raises on a port that is not a number)
        except ValueError as exc:
            raise ValueError(f"AMQP_URL node {node_label(url)!r}: {exc}") from exc
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ValueError(
                f"AMQP_URL node {node_label(url)!r} is not amqp(s)://host[:port]/vhost"
            )
        vhosts.add(vhost_of(url))
    if len(vhosts) > 1:
        raise ValueError(f"AMQP_URL nodes name different vhosts: {sorted(vhosts)}")
    return urls


def vhost_of(amqp_url: str) -> str:
    """The virtual host an AMQP URL names (`/` when its path is empty); of the first node for a
    list (they all name the same one)."""
    first = amqp_url.split(",", 1)[0].strip()
    return unquote(urlsplit(first).path[1:]) or "/"


def node_label(url: str) -> str:
    """`host:port` of one node URL, for logs and metric labels: never its credentials."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "?"
    default = 5671 if parts.scheme == "amqps" else 5672
    return f"{parts.hostname or '?'}:{port or default}"


class NodeRotation:
    """The nodes in a shuffled order, walked round: `current` is the node to try, `advance()`
    moves on after a loss or a failed attempt, so a process never insists on a dead node while
    another is up."""

    def __init__(self, urls: Sequence[str], rng: random.Random | None = None) -> None:
        if not urls:
            raise ValueError("no RabbitMQ node to connect to")
        self.order = list(urls)
        (rng or random.Random()).shuffle(self.order)
        self._index = 0

    @property
    def current(self) -> str:
        return self.order[self._index]

    def advance(self) -> str:
        """Move to the next node (the same one again when there is only one)."""
        self._index = (self._index + 1) % len(self.order)
        return self.current


async def connect_any(
    amqp_url: str, *, timeout: float = 10.0, rng: random.Random | None = None
) -> aio_pika.abc.AbstractConnection:
    """A plain connection to the first node of a shuffled round that answers (for one-off
    tools and checks); the last node's error when none does."""
    rotation = NodeRotation(node_urls(amqp_url), rng)
    error: Exception | None = None
    for _ in rotation.order:
        try:
            return await aio_pika.connect(rotation.current, timeout=timeout)
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            error = exc
            rotation.advance()
    assert error is not None
    raise error
