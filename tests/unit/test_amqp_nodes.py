"""`AMQP_URL` as a list of cluster nodes, the order they are tried in, and the queue arguments
that make dead-lettering survive a node loss. No broker."""

from __future__ import annotations

import asyncio
import random
from typing import Any, cast

import aio_pika
import aiormq
import pytest
from pamqp.commands import Basic
from pydantic import ValidationError

from common.messaging import connection as connection_module
from common.messaging.connection import BrokerUnavailable, SupervisedConnection
from common.messaging.nodes import NodeRotation, node_label, node_urls, vhost_of
from common.messaging.publishing import ConfirmedPublisher
from common.messaging.topology import (
    REPLICATED_DEAD_LETTERING,
    QueueRole,
    Topology,
    declarations,
    declare_topology,
    legacy_retry_queue_name,
)
from common.settings import Settings
from tests.support.asyncapi import RecordingChannel

THREE = "amqp://u:secret@h1:5701/shop, amqp://u:secret@h2:5702/shop,amqp://u:secret@h3/shop"


def test_a_comma_separated_url_is_a_list_of_nodes_in_the_given_order() -> None:
    assert node_urls(THREE) == (
        "amqp://u:secret@h1:5701/shop",
        "amqp://u:secret@h2:5702/shop",
        "amqp://u:secret@h3/shop",
    )
    assert node_urls("amqp://guest:guest@127.0.0.1:5672/") == (
        "amqp://guest:guest@127.0.0.1:5672/",
    )
    assert vhost_of(THREE) == "shop"
    assert vhost_of("amqp://h/%2F") == "/"


def test_a_node_label_names_host_and_port_but_never_credentials() -> None:
    assert [node_label(url) for url in node_urls(THREE)] == ["h1:5701", "h2:5702", "h3:5672"]
    assert node_label("amqps://u:p@h") == "h:5671"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("amqp://u:secret@h1/shop,,amqp://h2/shop", "empty node"),
        ("amqp://u:secret@h1/shop,", "empty node"),
        ("amqp://u:secret@h1/shop,http://u:secret@h2/shop", "'h2:5672' is not amqp"),
        ("amqp://h1/shop,amqp://u:secret@/shop", "is not amqp"),
        ("amqp://u:secret@h1:port/shop", "'h1:port'|'\\?'"),
        ("amqp://u:secret@h1/shop,amqp://h2/other", "different vhosts"),
    ],
)
def test_a_bad_node_list_is_refused_with_what_is_wrong(url: str, complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint) as caught:
        Settings(amqp_url=url)
    assert "secret" not in str(caught.value)


def test_the_rotation_is_shuffled_per_process_and_visits_every_node_in_turn() -> None:
    urls = node_urls(THREE)
    orders = {tuple(NodeRotation(urls, random.Random(seed)).order) for seed in range(30)}
    assert len(orders) > 1, "every process would pile onto the same first node"
    rotation = NodeRotation(urls, random.Random(7))
    first = rotation.current
    visited = [first] + [rotation.advance() for _ in range(len(urls))]
    assert sorted(visited[:3]) == sorted(urls)
    assert visited[3] == first
    single = NodeRotation(urls[:1])
    assert single.advance() == urls[0]


class Ordered(random.Random):
    """A "shuffle" that puts the nodes in the order of their host names given."""

    def __init__(self, *hosts: str) -> None:
        super().__init__()
        self.hosts = hosts

    def shuffle(self, x: Any) -> None:
        x.sort(key=lambda url: self.hosts.index(node_label(url).split(":")[0]))


async def test_the_supervisor_moves_to_the_next_node_after_a_loss_or_a_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Node order h2, h3, h1: h2 accepts, then the connection is lost; h3 refuses; h1 accepts."""
    tried: list[str] = []

    class FakeConnection:
        def __init__(self) -> None:
            self.close_callbacks: set[Any] = set()
            self.is_closed = False

        def add_close(self) -> None:
            for callback in self.close_callbacks:
                callback(None)

        async def close(self) -> None:
            self.is_closed = True

    connections: list[FakeConnection] = []

    async def connect(url: str, **_: Any) -> FakeConnection:
        tried.append(node_label(url))
        if "h3" in url:
            raise ConnectionRefusedError("h3 is down")
        made = FakeConnection()
        connections.append(made)
        return made

    monkeypatch.setattr(connection_module.aio_pika, "connect", connect)

    async def on_connected(_: Any) -> None:
        return None

    supervised = SupervisedConnection(
        THREE, name="test", on_connected=on_connected, rng=Ordered("h2", "h3", "h1")
    )
    await supervised.start(wait_s=5)
    assert supervised.node == "h2:5702"
    connections[0].add_close()
    for _ in range(200):
        if supervised.sessions == 2 and supervised.ready.is_set():
            break
        await asyncio.sleep(0.01)
    assert tried == ["h2:5702", "h3:5672", "h1:5701"]
    assert supervised.nodes_used == ["h2:5702", "h1:5701"]
    assert supervised.node == "h1:5701"
    await supervised.close()


def test_every_queue_is_quorum_and_every_dead_lettering_queue_is_at_least_once() -> None:
    plan = declarations(Topology("shop", ("a", "b")), 250)
    assert plan.queues
    for queue in plan.queues:
        assert queue.arguments["x-queue-type"] == "quorum", queue.name
        if "x-dead-letter-exchange" in queue.arguments:
            for name, value in REPLICATED_DEAD_LETTERING.items():
                assert queue.arguments[name] == value, queue.name
    delays = [q for q in plan.queues if q.role is QueueRole.DELAY]
    assert [q.name for q in delays[:2]] == [
        "shop.commands.delay.250ms",
        "shop.commands.delay.500ms",
    ]
    assert all(q.arguments["x-message-ttl"] == q.delay_ms for q in delays)


def test_an_earlier_releases_queues_are_accepted_or_retired_never_redeclared() -> None:
    plan = declarations(Topology("shop", ("a",)), 250)
    for queue in plan.queues:
        if queue.role is QueueRole.WORK:
            # The work queue's arguments of the earlier release: the new ones less the two added.
            assert queue.legacy_arguments is not None
            added = set(queue.arguments) - set(queue.legacy_arguments)
            assert added == set(REPLICATED_DEAD_LETTERING)
        else:
            assert queue.legacy_arguments is None, queue.name
    assert plan.retired == tuple(
        legacy_retry_queue_name(q.work_queue, cast(int, q.delay_ms))
        for q in plan.queues
        if q.role is QueueRole.DELAY
    )
    assert "shop.commands.retry.250ms" in plan.retired
    assert not set(plan.retired) & {q.name for q in plan.queues}


async def test_declaring_deletes_the_retired_delay_queues_only_if_empty() -> None:
    channel = RecordingChannel()
    topology = Topology("shop", ("a",))
    await declare_topology(cast(Any, channel), topology, 250)
    assert channel.deleted == list(declarations(topology, 250).retired)


class NackingExchange:
    def __init__(self, nack: bool) -> None:
        self.nack = nack
        self.published = 0

    async def publish(self, message: Any, routing_key: str, **_: Any) -> None:
        if self.nack:
            raise aiormq.exceptions.DeliveryError(None, Basic.Nack(delivery_tag=1))
        self.published += 1


class FakeChannel:
    def __init__(self, nack: bool) -> None:
        self.is_closed = False
        self.exchange = NackingExchange(nack)

    async def get_exchange(self, name: str, *, ensure: bool) -> NackingExchange:
        assert not self.is_closed
        return self.exchange

    async def close(self) -> None:
        self.is_closed = True


class FakeConnection:
    """Hands out a channel that nacks everything, then channels that confirm."""

    is_closed = False

    def __init__(self) -> None:
        self.channels: list[FakeChannel] = []

    async def channel(self, **_: Any) -> FakeChannel:
        self.channels.append(FakeChannel(nack=not self.channels))
        return self.channels[-1]


async def test_a_nack_retires_the_channel_and_the_next_publish_opens_a_fresh_one() -> None:
    """A channel opened during a leader election can stay stuck nacking (the kill-9 cluster
    drill's relay): the publisher must not keep using it."""
    connection = FakeConnection()
    publisher = await ConfirmedPublisher.open(cast(Any, connection), timeout_s=1)
    with pytest.raises(BrokerUnavailable, match="DeliveryError"):
        await publisher.publish("x", "k", aio_pika.Message(b"1"))
    assert connection.channels[0].is_closed
    assert publisher.is_open, "a fresh channel can be had: the owner need not reconnect"
    await publisher.publish("x", "k", aio_pika.Message(b"2"))
    assert len(connection.channels) == 2
    assert connection.channels[1].exchange.published == 1
