"""`python -m bench --ceilings` at a small size: each serial part drains its backlog alone, and
the figures count what was really done."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.ceilings import measure
from bench.ceilings_figures import CeilingPlan
from harness.isolation import Endpoints, Slice

pytestmark = pytest.mark.integration


def test_each_serial_part_drains_its_backlog_alone(services: Endpoints, tmp_path: Path) -> None:
    plan = CeilingPlan(quick=True, events=500, commands=120, timeout_s=60, quiet_s=0.2)
    results = measure(plan, Slice(services, "test"), tmp_path, say=lambda _: None)
    assert "failed" not in results, results["failed"]
    assert results["notes"] == []
    relay, worker, projector = (results[p] for p in ("relay", "command_worker", "projector"))
    assert relay["count"] == projector["count"] == 500
    assert projector["applied_by_all_projections"] == 500 * len(projector["projections"])
    assert worker["count"] == 120
    assert worker["outcomes"] == {"succeeded": 120}
    assert worker["left_in_queue"] == 0
    assert worker["events_per_command"] == 1.0
    for part in (relay, worker, projector):
        assert part["wall_s"] > 0
    for part in (worker, projector):
        assert part["cpu_s"] > 0
    assert all(p["exit_code"] == 0 for p in results["processes"]), results["processes"]
