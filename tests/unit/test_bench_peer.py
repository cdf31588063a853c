"""The peer comparison's pure pieces: its figures, its load, and a peer that speaks the same
notification as the project's projectors."""

from __future__ import annotations

import random
import uuid

import orjson
import pytest
from pydantic import ValidationError

from bench.mix import Mix, OrderBook, create_requests
from bench.peer.contracts import CreateOrder, OrderLine, PeerKeys, total_of, visible_message
from bench.peer_phase import CREATES_ONLY, OURS, PEER, best_visible_round
from bench.peer_report import is_ours, is_peer, peer_figures, peer_rows
from bench.report import judge
from bench.sources import Clock, Commands
from bench.stats import cpu_ms_per_command
from common.readmodel.notifications import projected_command_message
from orders.requests import CreateOrderRequest

SHARES = {
    "gateway": 0.1,
    "command-1": 0.05,
    "projector-1": 0.05,
    "floor-app": 0.01,
    "peer-gateway": 0.4,
    "peer-worker": 0.3,
    "peer-projector": 0.2,
    "rabbitmq": 0.5,
    "postgresql": 0.2,
    "redis": 0.1,
    "gen-peer_creates-0": 0.3,
    "machine": 2.0,
    "outside": 0.1,
}


def test_the_peer_ratio_is_our_visible_creates_over_the_peers() -> None:
    raw = {OURS: {"visible_rate": 600.0}, PEER: {"visible_rate": 400.0}}
    figures = peer_figures(raw)
    assert figures["peer_ratio"] == 1.5
    assert judge(figures)["peer_ratio"]["result"] == "MISS"
    assert judge({"peer_ratio": 2.5})["peer_ratio"]["result"] == "PASS"


def test_a_missing_side_leaves_the_peer_figures_out_not_wrong() -> None:
    assert peer_figures({OURS: {"visible_rate": 600.0}}) == {
        "peer_ratio": None,
        "creates_cpu_ms_per_visible": None,
        "peer_cpu_ms_per_visible": None,
    }
    assert (
        peer_figures({OURS: {"visible_rate": 600.0}, PEER: {"visible_rate": 0.0}})["peer_ratio"]
        is None
    )
    assert peer_rows({}) == []


def test_cpu_per_create_counts_each_sides_processes_and_the_services() -> None:
    peer = cpu_ms_per_command(SHARES, 500.0, is_peer)
    assert peer == {
        "peer-gateway": 0.8,
        "peer-worker": 0.6,
        "peer-projector": 0.4,
        "rabbitmq": 1.0,
        "postgresql": 0.4,
        "redis": 0.2,
        "total": 3.4,
    }
    ours = cpu_ms_per_command(SHARES, 500.0, is_ours)
    assert ours is not None
    assert set(ours) == {
        "gateway",
        "command-1",
        "projector-1",
        "rabbitmq",
        "postgresql",
        "redis",
        "total",
    }
    assert ours["gateway"] == 0.2
    assert cpu_ms_per_command(SHARES, None, is_peer) is None


def test_the_table_shows_both_rates_and_the_peers_cost_by_process() -> None:
    raw = {
        OURS: {"visible_rate": 600.0, "http_ms": {"p99": 9.0}, "cpu_shares": SHARES},
        PEER: {"visible_rate": 500.0, "http_ms": {"p99": 7.0}, "cpu_shares": SHARES},
    }
    rows = dict(peer_rows(raw))
    assert rows["creates only, this project: visible/s"] == 600.0
    assert rows["creates only, naive peer: visible/s"] == 500.0
    assert rows["creates only, naive peer: CPU ms per create"] == pytest.approx(3.4)
    figures = peer_figures(raw)
    assert figures["peer_cpu_ms_per_visible"]["peer-worker"] == 0.6
    assert "peer-worker" not in figures["creates_cpu_ms_per_visible"]


def test_the_best_round_counts_and_a_lost_command_in_any_round_too() -> None:
    rounds = [
        {"visible_rate": 300.0, "unsettled": 1},
        {"visible_rate": 410.04, "unsettled": 0, "name": "second"},
    ]
    best = best_visible_round(rounds)
    assert best["name"] == "second"
    assert best["round_rates"] == [300.0, 410.0]
    assert best["unsettled"] == 1


def test_the_creates_only_load_never_sends_a_follow_up() -> None:
    book = OrderBook(Mix(**CREATES_ONLY), random.Random(3))
    for n in range(20):
        book.visible("create", f"o{n}", 1)
    assert all(book.next() == ("create", None) for _ in range(500))


def test_the_peer_notifies_visibility_as_the_project_does() -> None:
    command_id, order_id = str(uuid.uuid4()), str(uuid.uuid4())
    message = visible_message(command_id, order_id)
    assert orjson.loads(message) == orjson.loads(projected_command_message(command_id, order_id, 1))
    commands = Commands(Clock(start=100.0, duration_s=10.0), OrderBook(Mix(), random.Random(1)), [])
    accepted = orjson.dumps({"command_id": command_id, "order_id": order_id})
    commands.answered(("create", None, 1, 0.0), 202, accepted, 101.0, 101.0)
    commands.on_message(message, 101.02)
    assert commands.visible.total == 1


def test_the_peer_takes_the_bodies_the_project_takes_and_money_as_text() -> None:
    for request, _ in create_requests(5, 50):
        body = request.split(b"\r\n\r\n", 1)[1]
        CreateOrderRequest.model_validate_json(body)
        CreateOrder.model_validate_json(body)
    with pytest.raises(ValidationError):
        OrderLine.model_validate({"product_id": "sku-1", "quantity": 1, "price": 2.5})
    with pytest.raises(ValidationError):
        OrderLine.model_validate({"product_id": "sku-1", "quantity": "1", "price": "2.50"})
    lines = [
        OrderLine(product_id="a", quantity=3, price="0.10"),
        OrderLine(product_id="b", quantity=1, price="2"),
    ]
    assert total_of(lines) == "2.30"


def test_the_peers_keys_live_under_the_runs_prefix() -> None:
    keys = PeerKeys("bench-1:")
    assert keys.order("o1") == "bench-1:peer:order:o1"
    assert keys.customer_orders("cust-1") == "bench-1:peer:customer:cust-1:orders"
    assert keys.visible_channel == "bench-1:peer:notify:commands"
