"""The benchmark's pure pieces: statistics, targets, the command mix, the wire parsers."""

from __future__ import annotations

import random
from collections import Counter

import orjson
import pytest

from bench.mix import KINDS, Mix, OrderBook, command_request, create_requests
from bench.rebuild_phase import parse_rebuild_summary
from bench.report import (
    TARGETS,
    Target,
    automatic_notes,
    cpu_per_command,
    cpu_rows,
    e2e_budget_note,
    figures,
    judge,
    lost_commands,
    rolling_percentile,
    summary_rows,
    table,
)
from bench.sources import Clock, Commands
from bench.stats import (
    best_round,
    cpu_ms_per_command,
    cpu_ms_per_op,
    key_kind,
    memory_by_kind,
    merge_results,
    percentile,
    ratio,
    split_at_append,
    summarize,
    with_rate,
)
from bench.system import CpuSnapshot, cpu_shares
from bench.wire import ProtocolError, http_request, parse_resp, resp_command, split_response
from common.readmodel.layout import glob_escape
from projector_worker.generations import RebuildSummary

# --- statistics ------------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([7.0], 99) == 7.0


def test_percentile_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_summarize_sorts_and_reports_the_tail() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100 .. 1, unsorted on purpose
    summary = summarize(values)
    assert summary["count"] == 100
    assert summary["p50"] == pytest.approx(50.5)
    assert summary["p99"] == pytest.approx(99.01)
    assert summary["max"] == 100.0
    assert summary["mean"] == pytest.approx(50.5)
    assert summarize([]) == {"count": 0}


def test_rolling_percentile_buckets_by_second() -> None:
    samples = [(0.1, 10.0), (0.9, 30.0), (1.5, 5.0), (3.2, 7.0)]
    xs, ys = rolling_percentile(samples, 50)
    assert xs == [0.5, 1.5, 3.5]
    assert ys == [20.0, 5.0, 7.0]


def test_ratio_needs_a_positive_floor() -> None:
    assert ratio(350.0, 500.0) == 0.7
    assert ratio(1.0, 0.0) is None
    assert ratio(None, 5.0) is None
    assert ratio(5.0, None) is None


# --- targets ---------------------------------------------------------------------------------


def test_targets_pass_at_the_threshold_and_miss_beyond_it() -> None:
    at_least = Target("x", "x", at_least=True, threshold=0.7)
    at_most = Target("y", "y", at_least=False, threshold=50)
    assert at_least.met(0.7) is True
    assert at_least.met(0.69) is False
    assert at_most.met(50) is True
    assert at_most.met(50.1) is False
    assert at_least.met(None) is None
    assert at_least.describe() == ">= 0.7"
    assert at_most.describe() == "<= 50"


def test_judge_names_every_target() -> None:
    assert [t.key for t in TARGETS] == [
        "peer_ratio",
        "e2e_ratio_to_floor",
        "cpu_ratio_to_floor",
        "p99_visible_ms_at_half_rate",
        "rebuild_ratio_to_redis",
        "scale_cpu_ratio",
        "redis_bytes_per_order",
        "query_ratio_to_floor",
        "max_rss_mb",
    ]
    judged = judge({"e2e_ratio_to_floor": 0.5, "p99_visible_ms_at_half_rate": 80.0})
    assert judged["e2e_ratio_to_floor"]["result"] == "PASS"
    assert judged["p99_visible_ms_at_half_rate"]["result"] == "MISS"
    assert judged["max_rss_mb"]["result"] == "n/a"
    assert judged["peer_ratio"] == {"value": None, "target": ">= 2.5", "result": "n/a"}


SYSTEM = {"gateway": 0.3, "command-1": 0.25, "projector-1": 0.25, "floor-app": 0.01}
SERVICES = {"rabbitmq": 0.4, "postgresql": 0.1, "redis": 0.1}
SHARES = {**SYSTEM, **SERVICES, "gen-x-0": 0.05, "machine": 1.9, "outside": 0.2}
"""A loaded phase's cores: 1.4 of them the system's and the services'."""

RAW = {
    "floor_publish": {
        "request_rate": 1000.0,
        "cpu_shares": {"floor-app": 0.6, "rabbitmq": 0.3, "redis": 0.01, "gateway": 0.02},
    },
    "e2e": {"visible_rate": 400.0, "cpu_shares": SHARES},
    "latency": {"visible_ms": {"p99": 42.0}},
    "redis_memory": {"orders_created": 1000, "keys": 5000, "bytes": 2_500_400, "by_kind": {}},
    "floor_hgetall": {"request_rate": 2000.0},
    "query_order": {"request_rate": 1700.0},
    "query_customer": {"request_rate": 900.0},
    "raw_redis": {"events_per_s": 20000.0},
    "rebuild": {"events_per_s": 12000.0},
    "scale_1": {"visible_rate": 200.0, "cpu_shares": {**SHARES, "gateway": 0.2}},
    "scale_2": {"visible_rate": 200.0, "cpu_shares": {**SHARES, "command-2": 0.1}},
}


def test_cpu_per_command_counts_each_phase_s_own_processes() -> None:
    cpu = cpu_per_command(RAW)
    # 1.4 cores over 400 visible/s; the idle floor app and the generator are not the system's.
    assert cpu["e2e"] == {
        "command-1": 0.625,
        "gateway": 0.75,
        "postgresql": 0.25,
        "projector-1": 0.625,
        "rabbitmq": 1.0,
        "redis": 0.25,
        "total": 3.5,
    }
    # A floor publish is the bare app and RabbitMQ, nothing that idles beside them.
    assert cpu["floor_publish"] == {"floor-app": 0.6, "rabbitmq": 0.3, "total": 0.9}
    assert cpu["scale_1"]["total"] == 6.5
    assert cpu["scale_2"]["total"] == 7.5
    assert cpu["scale_2"]["command-2"] == 0.5
    assert cpu_per_command({"e2e": {"visible_rate": 0.0, "cpu_shares": SHARES}}) == {}


def test_figures_are_ratios_to_their_own_floors() -> None:
    processes = [
        {"name": "gateway", "role": "system", "max_rss_mb": 80.0},
        {"name": "command-1", "role": "system", "max_rss_mb": 95.5},
        {"name": "gen-e2e-0", "role": "bench", "max_rss_mb": 400.0},
    ]
    result = figures(RAW, processes)
    assert result["e2e_ratio_to_floor"] == 0.4
    assert result["cpu_ratio_to_floor"] == 3.889  # 3.5 ms against 0.9 ms
    assert result["cpu_ms_per_command"]["e2e"]["total"] == 3.5
    assert result["p99_visible_ms_at_half_rate"] == 42.0
    assert result["query_ratio_to_floor"] == 0.85
    assert result["customer_query_ratio_to_floor"] == 0.45
    assert result["rebuild_ratio_to_redis"] == 0.6
    assert result["scale_cpu_ratio"] == 1.154  # 7.5 ms against 6.5 ms at one rate
    assert result["redis_bytes_per_order"] == 2500
    assert result["max_rss_mb"] == 95.5  # the generator is not part of the system
    assert {key: v["result"] for key, v in judge(result).items()} == {
        "peer_ratio": "n/a",
        "e2e_ratio_to_floor": "PASS",
        "cpu_ratio_to_floor": "MISS",
        "p99_visible_ms_at_half_rate": "PASS",
        "rebuild_ratio_to_redis": "PASS",
        "scale_cpu_ratio": "MISS",
        "redis_bytes_per_order": "PASS",
        "query_ratio_to_floor": "PASS",
        "max_rss_mb": "PASS",
    }


def test_the_cpu_table_has_a_column_per_phase_and_the_services_last() -> None:
    rows, header = cpu_rows(cpu_per_command(RAW))
    assert header == [
        "CPU ms per command",
        "e2e (closed loop)",
        "floor publish",
        "1 pair, fixed rate",
        "2 pairs, fixed rate",
    ]
    assert [row[0] for row in rows] == [
        "command-1",
        "command-2",
        "floor-app",
        "gateway",
        "projector-1",
        "rabbitmq",
        "postgresql",
        "redis",
        "total",
    ]
    assert rows[1] == ["command-2", "-", "-", "-", "0.500"]
    assert rows[-1] == ["total", "3.500", "0.900", "6.500", "7.500"]
    assert cpu_rows({}) == ([], ["CPU ms per command"])


def test_figures_of_an_interrupted_run_are_missing_not_wrong() -> None:
    result = figures({"floor_publish": RAW["floor_publish"]}, [])
    assert result["e2e_ratio_to_floor"] is None
    assert result["cpu_ratio_to_floor"] is None
    assert result["scale_cpu_ratio"] is None
    assert result["redis_bytes_per_order"] is None
    assert result["max_rss_mb"] is None
    assert result["cpu_ms_per_command"] == {"floor_publish": cpu_per_command(RAW)["floor_publish"]}


def test_notes_flag_a_busy_generator_errors_and_the_generator_check() -> None:
    raw = {
        "floor_publish": {"statuses": {"202": 10}, "cpu_fraction": 0.95, "request_rate": 1000.0},
        "floor_publish_2gen": {"statuses": {"202": 9, "503": 1}, "request_rate": 1030.0},
        "e2e": {
            "statuses": {"202": 5},
            "unsettled": 3,
            "cpu_shares": {"machine": 1.95, "outside": 0.6},
        },
    }
    notes = "\n".join(automatic_notes(raw))
    assert "floor_publish: the generator used 0.95 of a core" in notes
    assert "floor_publish_2gen: non-2xx answers {'503': 1}" in notes
    assert "e2e: 3 accepted commands never became visible" in notes
    assert (
        "e2e: the machine was saturated (1.95 of 2 cores busy, 0.60 of them by processes" in notes
    )
    assert "2 processes gave 1.03x the rate of 1; one generator is not the bottleneck" in notes


def test_the_e2e_budget_weighs_what_each_process_spent_against_what_the_target_allows() -> None:
    e2e = {"gateway": 0.5, "rabbitmq": 0.6, "postgresql": 0.1, "redis": 0.1, "gen-e2e-0": 0.2}
    raw = {
        "cores": 2,
        "floor_publish": {"request_rate": 1000.0},
        "e2e": {"cpu_shares": {**e2e, "machine": 1.95, "outside": 0.1}, "visible_rate": 500.0},
    }
    note = e2e_budget_note(raw)
    assert note is not None
    assert "0.4 of the floor is 400 commands/s, which 2 cores reach at no more than 5.00 ms" in note
    assert "spent 2.60 ms (rabbitmq 1.20, gateway 1.00, postgresql 0.20, redis 0.20)" in note
    assert "alone" not in note
    e2e["rabbitmq"] = 2.3
    raw["e2e"]["cpu_shares"] = e2e
    assert "RabbitMQ, PostgreSQL and Redis alone spent 5.00 ms" in str(e2e_budget_note(raw))
    assert e2e_budget_note({**raw, "cores": None}) is None


def test_commands_that_never_became_visible_are_counted_over_every_phase() -> None:
    raw = {"e2e": {"unsettled": 2}, "latency": {"unsettled": 0}, "scale_2": {"unsettled": 1}}
    assert lost_commands(raw) == 3
    assert lost_commands({"e2e": {"statuses": {}}, "wall_s": 12.0}) == 0


def test_a_generator_check_spoilt_by_neighbours_is_called_so() -> None:
    raw = {
        "floor_publish": {"statuses": {}, "cpu_fraction": 0.1, "request_rate": 1000.0},
        "floor_publish_2gen": {"statuses": {}, "request_rate": 1400.0},
    }
    assert "the difference is other work on the machine" in automatic_notes(raw)[-1]
    raw["floor_publish"]["cpu_fraction"] = 0.97
    assert "one generator limits the floor" in automatic_notes(raw)[-1]


def test_cpu_shares_separate_the_run_from_its_neighbours() -> None:
    before = CpuSnapshot(
        at=0.0, procs={"gateway": 1.0}, services={"redis": 0.5}, busy=10.0, total=0
    )
    after = CpuSnapshot(at=2.0, procs={"gateway": 2.0}, services={"redis": 1.0}, busy=13.0, total=0)
    shares = cpu_shares(before, after)
    assert shares == {"gateway": 0.5, "redis": 0.25, "machine": 1.5, "outside": 0.75}


def test_an_open_loop_the_system_did_not_keep_up_with_is_called_so() -> None:
    raw = {
        "scale_1": {"statuses": {}, "rate": 200.0, "visible_rate": 195.0},
        "scale_2": {"statuses": {}, "rate": 200.0, "visible_rate": 150.0},
    }
    assert automatic_notes(raw) == [
        "scale_2: 150 of the 200 commands/s offered became visible: the system did not keep up"
    ]


def test_cpu_ms_per_command_breaks_the_cost_down_and_totals_it() -> None:
    cost = cpu_ms_per_command(SHARES, 200.0, lambda name: name != "floor-app")
    assert cost == {
        "command-1": 1.25,
        "gateway": 1.5,
        "postgresql": 0.5,
        "projector-1": 1.25,
        "rabbitmq": 2.0,
        "redis": 0.5,
        "total": 7.0,
    }
    assert cpu_ms_per_command(SHARES, 0.0) is None
    assert cpu_ms_per_command({}, 100.0) is None
    assert cpu_ms_per_command(SHARES, 100.0, lambda name: False) is None
    # The total is of the unrounded parts.
    assert cpu_ms_per_command({"a": 0.0001, "b": 0.0001}, 300.0) == {
        "a": 0.0,
        "b": 0.0,
        "total": 0.001,
    }


def test_cpu_cost_per_operation_leaves_out_generators_and_the_machine() -> None:
    shares = {"gateway": 0.5, "redis": 0.25, "gen-e2e-0": 0.3, "machine": 1.9, "outside": 0.6}
    assert cpu_ms_per_op(shares, 500.0) == 1.5
    assert cpu_ms_per_op(shares, 0.0) is None
    assert cpu_ms_per_op({}, 100.0) is None


# --- Redis memory ----------------------------------------------------------------------------


def test_a_key_s_kind_hides_its_ids_and_generation() -> None:
    prefix = "bench-1a2b:"
    assert key_kind(f"{prefix}command:0b8f1e9c-3a1f-4c55-9e43-5f4c1f0f6a11", prefix) == "command:*"
    assert key_kind(f"{prefix}order_views:g12:order:0b8f1e9c", prefix) == "order_views:*:order:*"
    assert key_kind(f"{prefix}order_views:g1:customer:cust-7:created", prefix) == (
        "order_views:*:customer:*:created"
    )
    assert key_kind(f"{prefix}order_views:generation", prefix) == "order_views:generation"
    assert key_kind(f"{prefix}order_views.v2:g3:token:x1", prefix) == "order_views.v2:*:token:*"


def test_memory_by_kind_sums_and_folds_words_into_their_wildcard() -> None:
    prefix = "p:"
    usage = [
        ("p:command:c1", 400),
        ("p:command:c2", 440),
        ("p:v:g1:token:ab12", 100),
        ("p:v:g1:token:lane", 300),
        ("p:v:g1:status:created", 50),
        ("p:v:generation", 8),
    ]
    assert memory_by_kind(usage, prefix) == {
        "command:*": {"keys": 2, "bytes": 840},
        "v:*:token:*": {"keys": 2, "bytes": 400},
        "v:*:status:created": {"keys": 1, "bytes": 50},
        "v:generation": {"keys": 1, "bytes": 8},
    }
    assert list(memory_by_kind(usage, prefix)) == [
        "command:*",
        "v:*:token:*",
        "v:*:status:created",
        "v:generation",
    ]


def test_a_prefix_matches_only_itself_in_a_scan_pattern() -> None:
    assert glob_escape("bench-1a2b:") == "bench-1a2b:"
    assert glob_escape("a*b?[c]^\\") == "a\\*b\\?\\[c\\]\\^\\\\"


def test_the_printed_memory_rows_are_per_order_and_the_largest_kinds() -> None:
    by_kind = {f"k{i}:*": {"keys": 1, "bytes": 1000 * i} for i in range(1, 12)}
    raw = {"redis_memory": {"orders_created": 10, "keys": 11, "bytes": 66000, "by_kind": by_kind}}
    rows = dict(summary_rows(raw))
    assert rows["redis: orders created"] == 10
    assert rows["redis: bytes per order, k11:*"] == 1100
    assert "redis: bytes per order, k3:*" not in rows  # only the eight largest
    assert figures(raw, [])["redis_bytes_per_order"] == 6600


def test_table_aligns_columns() -> None:
    text = table([["a", "1.0"], ["long name", "22.5"]], ["figure", "value"])
    lines = text.splitlines()
    assert lines[0] == "figure     value"
    assert lines[2] == "a            1.0"
    assert lines[3] == "long name   22.5"


# --- the command mix -------------------------------------------------------------------------


def test_mix_weights_are_normalised() -> None:
    assert Mix(create=1, add=1, ship=1, cancel=1).cumulative() == [0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError, match="non-negative"):
        Mix(create=0, add=0, ship=0, cancel=0).cumulative()


def test_an_empty_book_can_only_create() -> None:
    book = OrderBook(Mix(), random.Random(1))
    assert {book.next() for _ in range(50)} == {("create", None)}


def drive(book: OrderBook, steps: int) -> Counter[str]:
    """Play a user who waits for each command to be visible before the next one."""
    kinds: Counter[str] = Counter()
    serial = 0
    for _ in range(steps):
        kind, order_id = book.next()
        kinds[kind] += 1
        if order_id is None:
            serial += 1
            order_id = f"order-{serial}"
        book.visible(kind, order_id, lines=1)
    return kinds


def test_the_mix_follows_its_weights_once_orders_exist() -> None:
    book = OrderBook(Mix(), random.Random(7))
    kinds = drive(book, 20_000)
    total = sum(kinds.values())
    assert set(kinds) == set(KINDS)
    assert kinds["create"] / total == pytest.approx(0.35, abs=0.03)
    assert kinds["add"] / total == pytest.approx(0.45, abs=0.05)
    assert kinds["cancel"] / total == pytest.approx(0.08, abs=0.02)
    # Orders that reached max_items are shipped instead of growing, so ships gain a little.
    assert kinds["ship"] / total >= 0.12 - 0.02
    assert book.closed == kinds["ship"] + kinds["cancel"]


def test_follow_ups_only_go_to_idle_open_orders() -> None:
    book = OrderBook(Mix(create=0.0001, add=1, ship=0, cancel=0, max_items=3), random.Random(3))
    book.visible("create", "a", lines=1)
    kind, order_id = book.next()
    assert (kind, order_id) == ("add", "a")
    # "a" has a command in flight: nothing else may target it.
    assert book.next() == ("create", None)
    book.visible("add", "a")  # 2 lines
    assert book.next() == ("add", "a")
    book.visible("add", "a")  # 3 lines = max_items: the next follow-up ships it
    assert book.next() == ("ship", "a")
    book.visible("ship", "a")
    assert book.ready == 0
    assert book.next() == ("create", None)


def test_refused_follow_ups_come_back_and_rejected_orders_do_not() -> None:
    book = OrderBook(Mix(create=0.0001, add=1, ship=0, cancel=0), random.Random(5))
    book.visible("create", "a", lines=1)
    kind, order_id = book.next()
    book.refused(kind, order_id)
    assert book.ready == 1
    kind, order_id = book.next()
    assert order_id == "a"
    book.rejected("a")
    book.refused(kind, order_id)  # too late: the order is forgotten
    assert book.ready == 0


def test_prebuilt_requests_are_valid_http_with_json_bodies() -> None:
    requests = create_requests(seed=1, customers=10, count=20)
    assert len(requests) == 20
    for raw, lines in requests:
        head, body = raw.split(b"\r\n\r\n", 1)
        assert head.startswith(b"POST /orders HTTP/1.1\r\n")
        assert f"Content-Length: {len(body)}".encode() in head
        order = orjson.loads(body)
        assert len(order["items"]) == lines
        assert 1 <= lines <= 3
        assert order["customer_id"].startswith("cust-")
    assert command_request("ship", "o1", 0).startswith(b"POST /orders/o1/ship HTTP/1.1")
    assert command_request("cancel", "o1", 0).startswith(b"DELETE /orders/o1?reason=")
    assert b"Content-Type: application/json" in command_request("add", "o1", 0)
    with pytest.raises(ValueError, match="create"):
        command_request("create", "o1", 0)


# --- following commands to the views ---------------------------------------------------------


def accepted(command_id: str, order_id: str) -> bytes:
    return orjson.dumps({"command_id": command_id, "order_id": order_id})


def projected(command_id: str) -> bytes:
    return orjson.dumps({"command_id": command_id, "projected": True, "status": "succeeded"})


def tracker() -> Commands:
    clock = Clock(start=100.0, warmup_s=1.0, duration_s=10.0)
    return Commands(clock, OrderBook(Mix(), random.Random(1)), create_requests(1, 5, 4))


def test_a_command_is_visible_when_its_projection_arrives() -> None:
    commands = tracker()
    context = ("create", None, 2, 0.0)
    commands.answered(context, 202, accepted("c1", "o1"), sent=101.99, now=102.0)
    # The worker's own "succeeded" is not visibility yet.
    commands.on_message(b'{"command_id":"c1","status":"succeeded","version":1}', 102.01)
    assert commands.visible.total == 0
    commands.on_message(projected("c1"), 102.025)
    assert commands.visible.total == 1
    # From the moment the request was written, not from its 202.
    assert commands.latencies_ms == [pytest.approx(35.0)]
    assert commands.samples == [(1.99, 35.0, "c1")]
    assert commands.book.ready == 1
    assert commands.orders == ["o1"]
    assert commands.accepted.per_second == [0, 0, 1]
    assert commands.accepted.steady == 1


def test_a_projection_that_beats_the_202_counts_from_the_send_not_zero() -> None:
    commands = tracker()
    commands.on_message(projected("c2"), 102.0)
    assert commands.early
    commands.answered(("create", None, 1, 0.0), 202, accepted("c2", "o2"), 101.9, 102.001)
    assert commands.visible.total == 1
    assert commands.latencies_ms == [pytest.approx(100.0)]
    assert commands.samples == [(1.9, 100.0, "c2")]
    assert commands.last_visible == 102.0
    assert not commands.early


def test_the_open_loop_also_times_from_the_intended_send() -> None:
    commands = tracker()
    commands.answered(("add", "o5", 0, 101.5), 202, accepted("c5", "o5"), 101.6, 101.7)
    commands.on_message(projected("c5"), 101.8)
    assert commands.latencies_ms == [pytest.approx(200.0)]
    assert commands.intended_latencies_ms == [pytest.approx(300.0)]


def test_the_way_to_the_views_splits_where_the_events_were_appended() -> None:
    started = 1_000.0
    samples = [(1.0, 30.0, "a"), (2.0, 8.0, "early"), (3.0, 20.0, "unknown")]
    appended = {"a": started + 1.012, "early": started + 1.999}
    split, worker, rest = split_at_append(samples, started, appended)
    assert split == [(1.0, 30.0, 12.0), (2.0, 8.0, 0.0), (3.0, 20.0, -1.0)]
    assert worker["count"] == rest["count"] == 2
    assert worker["max"] == pytest.approx(12.0)
    assert rest["max"] == pytest.approx(18.0)  # "early": the clocks disagree by a millisecond


def test_rejections_settle_without_visibility_and_others_are_pruned() -> None:
    commands = tracker()
    commands.answered(("create", None, 1, 0.0), 202, accepted("c3", "o3"), 101.0, 101.5)
    commands.on_message(b'{"command_id":"c3","status":"rejected"}', 101.6)
    assert commands.rejected == 1
    assert commands.visible.total == 0
    assert not commands.pending
    commands.on_message(projected("someone-elses"), 101.7)
    commands.prune_early(now=110.0)
    assert not commands.early


def test_non_202_answers_are_not_accepted() -> None:
    clock = Clock(start=100.0, warmup_s=1.0, duration_s=10.0)
    book = OrderBook(Mix(create=0.0001, add=1, ship=0, cancel=0), random.Random(2))
    commands = Commands(clock, book, create_requests(1, 5, 4))
    book.visible("create", "o4", 1)
    request, context = commands.next()
    assert request.startswith(b"POST /orders/o4/items ")
    commands.answered(context, 503, b"{}", 101.0, 101.1)
    assert commands.accepted.total == 0
    assert not commands.pending
    assert book.ready == 1  # the order takes commands again


# --- wire parsers ----------------------------------------------------------------------------


def test_split_response_waits_for_the_whole_body() -> None:
    raw = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n"
    assert split_response(raw + b'{"a":') is None
    status, body, used = split_response(raw + b'{"a":1}HTTP/1.1 200') or (0, b"", 0)
    assert (status, body) == (202, b'{"a":1}')
    assert used == len(raw) + 7
    assert split_response(b"HTTP/1.1 204 No Content\r\n\r\n") == (204, b"", 27)


def test_split_response_refuses_what_it_cannot_frame() -> None:
    with pytest.raises(ProtocolError, match="chunked"):
        split_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(ProtocolError, match="not an HTTP"):
        split_response(b"SSH-2.0\r\n\r\n")


def test_http_request_sets_the_length() -> None:
    assert http_request("POST", "/x", b"{}") == (
        b"POST /x HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    assert http_request("GET", "/y").endswith(b"Content-Length: 0\r\n\r\n")


def test_resp_round_trip_of_a_pubsub_message() -> None:
    assert resp_command("SUBSCRIBE", "ch") == b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n"
    message = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n"
    assert parse_resp(message) == ([b"message", b"ch", b"hello"], len(message))
    assert parse_resp(message[:-3]) is None
    confirm = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    both = confirm + message
    first = parse_resp(both)
    assert first == ([b"subscribe", b"ch", 1], len(confirm))
    assert parse_resp(both, len(confirm)) == ([b"message", b"ch", b"hello"], len(both))
    assert parse_resp(b"$-1\r\n") == (None, 5)
    assert parse_resp(b"-ERR nope\r\n") == (b"ERR nope", 11)
    with pytest.raises(ProtocolError):
        parse_resp(b"?what\r\n")


# --- phase bookkeeping -----------------------------------------------------------------------


def test_rates_count_only_the_steady_window() -> None:
    result = with_rate(
        {
            "duration_s": 10.0,
            "warmup_s": 2.0,
            "steady_requests": 800,
            "steady_accepted": 800,
            "steady_visible": 400,
            "visible": 900,
            "load_wall_s": 10.0,
            "drain_s": 5.0,
        }
    )
    assert result["request_rate"] == 100.0
    assert result["accepted_rate"] == 100.0
    assert result["visible_rate"] == 50.0
    assert result["visible_rate_with_drain"] == 60.0


def test_the_best_round_is_reported_with_all_rounds() -> None:
    rounds = [{"request_rate": r, "round": i} for i, r in enumerate([500.0, 900.0, 300.0])]
    chosen = best_round(rounds)
    assert chosen["round"] == 1
    assert chosen["round_rates"] == [500.0, 900.0, 300.0]
    assert "round_rates" not in rounds[1]  # the inputs are left alone


def test_merging_generators_sums_counts_and_series() -> None:
    part = {
        "requests": 10,
        "steady_requests": 8,
        "statuses": {"202": 10},
        "connections": 4,
        "cpu_s": 1.0,
        "cpu_fraction": 0.1,
        "responses_per_s": [5, 5],
    }
    other = {**part, "cpu_fraction": 0.2, "responses_per_s": [1, 2, 3]}
    merged = merge_results([part, other])
    assert merged["requests"] == 20
    assert merged["steady_requests"] == 16
    assert merged["statuses"] == {"202": 20}
    assert merged["connections"] == 8
    assert merged["responses_per_s"] == [6, 7, 3]
    assert merged["cpu_fraction"] == 0.2
    assert len(merged["generators"]) == 2


def test_the_rebuild_summary_line_is_parsed() -> None:
    log = (
        "noise\nrebuild of order_views done: g1 -> g2; 50210 events read up to position 50210,"
        " 50210 applied, switched after 12.5s (4017/s); 61234 keys of g1 deleted; done in 13.1s\n"
    )
    assert parse_rebuild_summary(log) == {"events": 50210, "seconds": 12.5}
    assert parse_rebuild_summary("nothing here") is None


def test_the_rebuild_summary_line_is_the_one_projector_worker_prints() -> None:
    summary = RebuildSummary(generation=2, previous=1, projection="order_views")
    summary.events, summary.switched_s = 50210, 12.5
    assert parse_rebuild_summary(f"noise\n{summary.describe()}\n") == {
        "events": 50210,
        "seconds": 12.5,
    }
