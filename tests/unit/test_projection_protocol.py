"""The read side's small pure pieces: command progress, `Prefer: wait`, search planning, pages."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from common.readmodel.layout import ViewKeys
from common.readmodel.notifications import (
    CommandProgress,
    order_version_message,
    projected_command_message,
)
from common.readmodel.order_queries import Page, SearchQuery
from common.readmodel.order_view import ViewStatus
from gateway.waiting import prefer_wait


def test_a_command_is_settled_when_refused_or_visible() -> None:
    accepted = CommandProgress("c", "accepted")
    assert not accepted.settled
    succeeded = CommandProgress("c", "succeeded", version=2)
    assert not succeeded.settled
    assert not CommandProgress("c", "succeeded", version=2, projected_version=1).settled
    assert CommandProgress("c", "succeeded", version=2, projected_version=2).settled
    assert CommandProgress("c", "rejected", reason="order is shipped").settled
    assert CommandProgress("c", "failed").settled


def test_progress_from_the_hash_and_from_both_kinds_of_message() -> None:
    raw = {
        b"command_id": b"c",
        b"type": b"CreateOrder",
        b"order_id": b"o",
        b"status": b"succeeded",
        b"reason": b"",
        b"version": b"1",
        b"projected_version": b"1",
    }
    progress = CommandProgress.from_hash(raw)
    assert progress is not None
    assert progress.settled
    assert progress.to_json()["projected"] is True
    assert CommandProgress.from_hash({b"projected_version": b"1"}) is None

    projected = CommandProgress.from_message(orjson.loads(projected_command_message("c", "o", 3)))
    assert projected.settled
    assert projected.version == 3
    worker = CommandProgress.from_message(
        {"command_id": "c", "status": "succeeded", "version": 3, "reason": ""}
    )
    assert not worker.settled
    assert orjson.loads(order_version_message("o", 3)) == {"order_id": "o", "version": 3}


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("wait=5", 5.0),
        ("respond-async, wait=2.5", 2.5),
        ('WAIT="3"', 3.0),
        ("wait=-1", None),
        ("wait=soon", None),
        ("wait=inf", None),
        ("return=minimal", None),
    ],
)
def test_prefer_wait(header: str | None, seconds: float | None) -> None:
    assert prefer_wait(header) == seconds


def test_search_picks_the_narrowest_sets() -> None:
    assert SearchQuery().filter_sets() == []
    assert SearchQuery(q="London  sku-1 london").filter_sets() == ["token:london", "token:sku-1"]
    assert SearchQuery(status=ViewStatus.CREATED).filter_sets() == ["status:created"]
    assert SearchQuery(customer_id="c-1").filter_sets() == ["customer:c-1"]
    both = SearchQuery(q="x", customer_id="c-1", status=ViewStatus.SHIPPED)
    assert both.filter_sets() == ["token:x", "customer:c-1:shipped"]
    many = SearchQuery(q=" ".join(f"w{i}" for i in range(20)))
    assert len(many.filter_sets()) == 8
    assert SearchQuery(min_total=Decimal("1.5")).filter_sets() == []


def test_pages_count_their_pages() -> None:
    assert Page([], 0, 1, 20).to_json()["total_pages"] == 0
    assert Page([], 41, 2, 20).to_json()["total_pages"] == 3
    assert Page([], 40, 2, 20).to_json()["total_pages"] == 2


def test_view_keys_live_under_their_generation() -> None:
    keys = ViewKeys("orders:", 7)
    assert keys.order("o-1") == "orders:g7:order:o-1"
    assert keys.history("o-1") == "orders:g7:history:o-1"
    assert keys.members == "orders:g7:members"
    assert keys.checkpoint == "orders:g7:checkpoint"
