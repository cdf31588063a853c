"""The pure pieces of `python -m bench --ceilings`: the command backlog, the figures, the table,
and reading metrics pages and log lines."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from uuid import UUID

import pytest

from bench.backlog import command_backlog, kinds
from bench.ceilings_figures import (
    SERVICES,
    CeilingPlan,
    Window,
    figures,
    logged_at,
    metric_sum,
    sizing_table,
    table,
)
from bench.system import CpuSnapshot, ServiceProc, cpu_seconds, service_seconds
from orders.aggregate import Order
from orders.domain import ORDER


def test_the_backlog_is_the_bench_mix_and_one_worker_taking_it_in_order_accepts_all() -> None:
    commands = command_backlog(3000, seed=5)
    assert len(commands) == 3000
    counts = kinds(commands)
    assert set(counts) == {"CreateOrder", "AddItem", "ShipOrder", "CancelOrder"}
    assert 0.3 < counts["CreateOrder"] / 3000 < 0.45
    assert 0.3 < counts["AddItem"] / 3000 < 0.5
    # Deciding each command on its order's state so far, in queue order, never rejects.
    states: dict[UUID, Order] = {}
    versions: Counter[UUID] = Counter()
    for command in commands:
        state = states.get(command.order_id, ORDER.initial)
        events = ORDER.decide_within_limit(state, versions[command.order_id], command)
        assert events, command
        states[command.order_id] = ORDER.fold_events(state, events)
        versions[command.order_id] += len(events)
    assert len({c.command_id for c in commands}) == 3000


def test_the_backlog_is_the_same_for_the_same_seed() -> None:
    first = [(c.type, c.order_id, c.command_id) for c in command_backlog(200, seed=9)]
    assert first == [(c.type, c.order_id, c.command_id) for c in command_backlog(200, seed=9)]
    assert first != [(c.type, c.order_id, c.command_id) for c in command_backlog(200, seed=10)]


def snapshot(at: float, procs: dict[str, float], services: float, busy: float) -> CpuSnapshot:
    return CpuSnapshot(
        at=at,
        procs=procs,
        services=dict.fromkeys(SERVICES, services),
        busy=busy,
        total=busy * 2,
    )


def test_cpu_seconds_are_differences_and_a_process_started_meanwhile_is_left_out() -> None:
    before = snapshot(10.0, {"relay-worker": 1.5}, 100.0, 50.0)
    after = snapshot(12.0, {"relay-worker": 3.0, "late": 0.4}, 100.5, 53.0)
    spent = cpu_seconds(before, after)
    assert spent == {
        "relay-worker": 1.5,
        "rabbitmq": 0.5,
        "postgresql": 0.5,
        "redis": 0.5,
        "machine": 3.0,
    }


def test_figures_count_per_wall_second_and_per_cpu_second() -> None:
    before = snapshot(10.0, {"projector": 2.0}, 100.0, 50.0)
    after = snapshot(14.0, {"projector": 4.0}, 100.5, 57.0)
    part = figures(Window("projector", 10_000, 4.0, before, after))
    assert part["per_s"] == 2500.0
    assert part["per_cpu_s"] == 5000.0
    assert part["per_service_cpu_s"] == {
        "rabbitmq": 20000.0,
        "postgresql": 20000.0,
        "redis": 20000.0,
    }
    assert part["per_cpu_s_with_services"] == round(10_000 / 3.5, 1)
    assert part["process_cores"] == 0.5
    assert part["machine_cores"] == 1.75


def test_a_process_that_spent_no_measurable_cpu_has_no_rate_not_an_error() -> None:
    same = snapshot(1.0, {"w": 1.0}, 1.0, 1.0)
    part = figures(Window("w", 5, 0.0, same, same))
    assert part["per_s"] is None
    assert part["per_cpu_s"] is None


PAGE = """\
# HELP orders_commands_total Commands by type and outcome.
# TYPE orders_commands_total counter
orders_commands_total{outcome="succeeded",type="CreateOrder"} 362.0
orders_commands_total{outcome="succeeded",type="AddItem"} 398.0
orders_commands_total{outcome="rejected",type="AddItem"} 2.0
orders_commands_created{outcome="succeeded",type="AddItem"} 1.7e+09
orders_events_relayed_total 2000.0
orders_events_relayed_totally 5.0
"""


def test_a_metric_is_summed_over_the_samples_whose_labels_match() -> None:
    assert metric_sum(PAGE, "orders_commands_total") == 762.0
    assert metric_sum(PAGE, "orders_commands_total", {"outcome": "succeeded"}) == 760.0
    assert metric_sum(PAGE, "orders_commands_total", {"type": "AddItem", "outcome": "x"}) == 0.0
    assert metric_sum(PAGE, "orders_events_relayed_total") == 2000.0
    assert metric_sum(PAGE, "orders_missing_total") == 0.0


def test_the_time_of_the_last_matching_log_line_is_read() -> None:
    log = "\n".join(
        [
            '{"time": "2026-11-29T23:00:00.100000+00:00", "message": "relay leading"}',
            '{"time": "2026-11-29T23:00:01+00:00", "message": "relay leading again"}',
            "not json at all",
            '{"time": "2026-11-29T23:00:02.250000+00:00", "level": "info",'
            ' "message": "relay leading"}',
        ]
    )
    assert logged_at(log, "relay leading") == datetime(2026, 11, 29, 23, 0, 2, 250000, UTC)
    assert logged_at(log, "command worker started") is None


def test_the_table_has_a_row_per_part_measured() -> None:
    part = {
        "count": 50_000,
        "per_s": 9436.2,
        "per_cpu_s": 20000.0,
        "services_cpu_s": {"rabbitmq": 2.04, "postgresql": 0.51, "redis": 0.0},
    }
    rendered = table({"relay": part, "projector": {**part, "per_s": None}})
    lines = rendered.splitlines()
    assert len(lines) == 4
    assert lines[2] == (
        "| relay: event store → events exchange | 50,000 events | 9,436 | 20,000"
        " | 2.0 / 0.5 / 0.0 |"
    )
    assert "| — |" in lines[3]
    assert "command worker" not in rendered


@pytest.mark.parametrize("plan", [CeilingPlan.full(), CeilingPlan.smoke()])
def test_plans_seed_whole_orders(plan: CeilingPlan) -> None:
    assert plan.events % 5 == 0
    assert plan.commands > 0


def test_what_the_services_did_before_the_part_is_reported_in_cores() -> None:
    quiet = snapshot(8.0, {"projector": 2.0}, 99.0, 47.0)
    before = snapshot(10.0, {"projector": 2.0}, 100.0, 50.0)
    after = snapshot(14.0, {"projector": 4.0}, 100.5, 57.0)
    part = figures(Window("projector", 10_000, 4.0, before, after, quiet))
    assert part["cores_before_the_part"] == {
        "rabbitmq": 0.5,
        "postgresql": 0.5,
        "redis": 0.5,
        "machine": 1.5,
    }
    assert figures(Window("projector", 1, 4.0, before, after))["cores_before_the_part"] == {}


def test_sizing_scales_each_part_by_what_one_command_makes() -> None:
    def part(count: int, cpu_s: float, rabbitmq: float, **extra: float) -> dict[str, object]:
        services = {"rabbitmq": rabbitmq, "postgresql": 0.0, "redis": 0.0}
        return {"count": count, "cpu_s": cpu_s, "services_cpu_s": services, **extra}

    results = {
        "command_worker": part(2000, 1.0, 0.5, events_per_command=2.0),
        "relay": part(10_000, 0.5, 1.0),
        "projector": part(10_000, 5.0, 2.0),
    }
    rows = sizing_table(results).splitlines()
    # 1,000 commands/s: 0.5 cores of command worker; 2,000 events/s, so 0.1 of relay, 1.0 of
    # projector; RabbitMQ 0.25 + 0.2 + 0.4.
    assert rows[2:5] == [
        "| command workers | 0.50 | |",
        "| relay leader | 0.10 | |",
        "| projectors | 1.00 | |",
    ]
    assert rows[5] == "| RabbitMQ | 0.85 | 0.25 / 0.20 / 0.40 |"
    assert rows[6] == "| PostgreSQL | 0.00 | 0.00 / 0.00 / 0.00 |"


def test_service_cpu_is_counted_process_by_process() -> None:
    def at(procs: dict[int, ServiceProc]) -> CpuSnapshot:
        totals = {"rabbitmq": 0.0, "postgresql": 0.0, "redis": 0.0}
        for proc in procs.values():
            totals[proc.service] += proc.cpu_s
        return CpuSnapshot(0.0, {}, totals, 0.0, 0.0, procs)

    before = at(
        {
            10: ServiceProc("postgresql", 100, 5.0),  # the postmaster
            11: ServiceProc("postgresql", 200, 40.0),  # a session that ends meanwhile
            12: ServiceProc("postgresql", 300, 1.0),  # its pid is reused meanwhile
            20: ServiceProc("redis", 100, 7.0),
        }
    )
    after = at(
        {
            10: ServiceProc("postgresql", 100, 5.5),
            12: ServiceProc("postgresql", 900, 0.25),
            13: ServiceProc("postgresql", 950, 0.5),  # a session that started meanwhile
            20: ServiceProc("redis", 100, 7.0),
        }
    )
    # Totals alone would say PostgreSQL used nothing (46 s before, 6.25 s after).
    assert service_seconds(before, after) == {"rabbitmq": 0.0, "postgresql": 1.25, "redis": 0.0}
    before.service_procs = {}
    assert service_seconds(before, after)["postgresql"] == 0.0
