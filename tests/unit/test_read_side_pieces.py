"""The read side's small pure pieces: command progress, `Prefer: wait`, search planning, pages."""

from __future__ import annotations

import uuid
from decimal import Decimal

import orjson
import pytest

from common.readmodel import status_store
from common.readmodel.commands import FINGERPRINT_FIELD, keeps_fingerprint, status_items
from common.readmodel.keys import Keys
from common.readmodel.layout import ViewKeys
from common.readmodel.notifications import (
    CommandProgress,
    projected_command_message,
    stream_version_message,
)
from gateway.idempotency import command_id_for
from gateway.waiting import prefer_wait
from orders.layout import history_suffix, order_suffix
from orders.queries import Page, SearchQuery
from orders.view import ViewStatus


def test_a_command_is_settled_when_refused_or_visible() -> None:
    accepted = CommandProgress("c", "accepted")
    assert not accepted.settled
    succeeded = CommandProgress("c", "succeeded", version=2)
    assert not succeeded.settled
    assert not CommandProgress("c", "succeeded", version=2, projected_version=1).settled
    assert CommandProgress("c", "succeeded", version=2, projected_version=2).settled
    assert CommandProgress("c", "rejected", reason="order is shipped").settled
    assert CommandProgress("c", "failed").settled


def test_progress_from_the_status_and_from_both_kinds_of_message() -> None:
    stored = status_store.decode(b'[1900000000,"succeeded",1,1,"CreateOrder","Order-o",""]')
    assert stored == {
        "expires_at": 1900000000,
        "status": "succeeded",
        "version": 1,
        "projected_version": 1,
        "type": "CreateOrder",
        "stream_id": "Order-o",
        "reason": "",
    }
    progress = CommandProgress.from_status("c", stored)
    assert progress is not None
    assert progress.settled
    assert progress.to_json()["projected"] is True
    assert progress.to_json()["reason"] is None
    assert progress.stream_id == "Order-o"
    assert CommandProgress.from_status("c", {"projected_version": 1}) is None
    assert CommandProgress.from_status("c", None) is None
    rejected = status_store.decode(b'[1,"rejected",0,null,"ShipOrder","Order-o","no such order"]')
    refused = CommandProgress.from_status("c", rejected)
    assert refused is not None
    assert (refused.version, refused.projected_version, refused.reason) == (
        0,
        None,
        "no such order",
    )
    assert refused.settled

    projected = CommandProgress.from_message(
        orjson.loads(projected_command_message("c", "Order-o", 3))
    )
    assert projected.settled
    assert projected.version == 3
    assert projected.stream_id == "Order-o"
    worker = CommandProgress.from_message(
        {"command_id": "c", "status": "succeeded", "version": 3, "reason": ""}
    )
    assert not worker.settled
    assert orjson.loads(stream_version_message("Order-o", 3)) == {
        "stream_id": "Order-o",
        "version": 3,
    }


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
    def suffixes(query: SearchQuery) -> list[str]:
        return [suffix for suffix, _order_id in query.filter_sets()]

    assert SearchQuery().filter_sets() == []
    assert suffixes(SearchQuery(q="London  sku-1 london")) == ["token:london", "token:sku-1"]
    assert suffixes(SearchQuery(status=ViewStatus.CREATED)) == ["status:created"]
    assert suffixes(SearchQuery(customer_id="c-1")) == ["customer:c-1"]
    both = SearchQuery(q="x", customer_id="c-1", status=ViewStatus.SHIPPED)
    assert suffixes(both) == ["token:x", "customer:c-1:shipped"]
    many = SearchQuery(q=" ".join(f"w{i}" for i in range(20)))
    assert len(many.filter_sets()) == 8
    assert SearchQuery(min_total=Decimal("1.5")).filter_sets() == []


def test_a_term_shaped_like_an_order_id_also_names_that_order() -> None:
    order_id = "0b9a4d0e-9d7e-4a53-9a51-3c1f3c6d7e01"
    query = SearchQuery(q=f"{order_id.upper()} london 0b9a4d0e9d7e4a539a513c1f3c6d7e01")
    assert query.filter_sets() == [
        (f"token:{order_id}", order_id),
        ("token:london", ""),
        ("token:0b9a4d0e9d7e4a539a513c1f3c6d7e01", ""),
    ]
    assert SearchQuery(customer_id=order_id).filter_sets() == [(f"customer:{order_id}", "")]


def test_pages_count_their_pages() -> None:
    assert Page([], 0, 1, 20).to_json()["total_pages"] == 0
    assert Page([], 41, 2, 20).to_json()["total_pages"] == 3
    assert Page([], 40, 2, 20).to_json()["total_pages"] == 2


def test_view_keys_live_under_their_generation() -> None:
    keys = Keys("orders:").projection("order_views").views(7)
    assert keys == ViewKeys("orders:order_views:", 7)
    assert keys.key(order_suffix("o-1")) == "orders:order_views:g7:order:o-1"
    assert keys.key(history_suffix("o-1")) == "orders:order_views:g7:history:o-1"
    assert keys.pattern == "orders:order_views:g7:*"
    assert Keys("a*[b]:").projection("p").views(1).pattern == "a\\*\\[b\\]:p:g1:*"
    assert keys.checkpoint == "orders:order_views:g7:checkpoint"


def test_only_statuses_of_keyed_commands_keep_the_fingerprint() -> None:
    keyed, drawn = command_id_for("key-1"), uuid.uuid4()
    assert keeps_fingerprint(keyed)
    assert keeps_fingerprint(str(keyed))
    assert not keeps_fingerprint(drawn)
    assert status_items(keyed, "AddItem", "Order-1", fingerprint="f")[FINGERPRINT_FIELD] == "f"
    assert FINGERPRINT_FIELD not in status_items(drawn, "AddItem", "Order-1", fingerprint="f")


def test_statuses_live_in_shard_hashes_named_by_the_id() -> None:
    keys = Keys("p:")
    command_id = uuid.UUID("0b9a4d0e-9d7e-4a53-9a51-3c1f3c6d7e01")
    (shard, legacy), field = status_store.location(keys, command_id)
    assert shard == "p:statuses:0b"
    assert legacy == "p:command:0b9a4d0e-9d7e-4a53-9a51-3c1f3c6d7e01"
    assert field == command_id.bytes
    assert status_store.shard_key(keys, str(command_id)) == shard
    shards = status_store.shard_keys(keys)
    assert len(shards) == len(set(shards)) == 256
    assert shard in shards
    assert "p:statuses:ff" in shards
    assert all(name.startswith("p:statuses:") for name in shards)
    assert keys.status_sweep_lease not in shards
    assert FINGERPRINT_FIELD in status_store.RECORD
    assert status_store.decode(None) is None


@pytest.mark.parametrize(("ttl_s", "interval"), [(1, 1.0), (240, 10.0), (7 * 24 * 3600, 3600.0)])
def test_expired_statuses_are_swept_a_24th_of_their_lifetime_apart(
    ttl_s: int, interval: float
) -> None:
    assert status_store.sweep_interval_s(ttl_s) == interval
