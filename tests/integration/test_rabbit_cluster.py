"""The system on a three-node RabbitMQ cluster loses the node leading the commands queue under a
small load: nothing answered 202 is lost, the views converge, and the processes that were on
that node carry on through another. The short form of `make chaos`'s cluster drills, which run
the same scenario (`tests/chaos/cluster.py`) under the full load, and with kill -9."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.isolation import Endpoints, isolated_slice, settings_env
from harness.load import LoadShape
from harness.processes import process_group
from harness.rabbit_cluster import RabbitCluster, rabbit_cluster, unavailable_reason
from tests.chaos.scenarios import BY_NAME, run_scenario

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SMALL = LoadShape(orders=20, additions=3, concurrency=12, rate=100)
"""About 75 commands: enough to be in flight when the node goes, short enough for CI."""


@pytest.fixture(scope="session")
def cluster() -> Iterator[RabbitCluster]:
    """Three local RabbitMQ nodes of their own (about 35 s to start on two busy cores)."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no local RabbitMQ cluster can be started here: {reason}")
    with rabbit_cluster() as started:
        yield started


@pytest.mark.timeout(300)
def test_stopping_the_commands_leader_loses_nothing_and_its_processes_move(
    cluster: RabbitCluster, services: Endpoints, tmp_path: Path
) -> None:
    said: list[str] = []
    on = cluster.endpoints(services)
    with (
        isolated_slice(on, "test", retry_base_delay_ms=50, shutdown_timeout_s=10) as settings,
        process_group(settings_env(settings), tmp_path) as processes,
    ):
        assert settings.amqp_url.count(",") == 2, "every process is given all three nodes"
        result = asyncio.run(
            run_scenario(
                BY_NAME["rabbit-node-stop"],
                settings,
                processes,
                on,
                SMALL,
                say=said.append,
                cluster=cluster,
                quiet_timeout_s=90,
            )
        )
    row, verdict = result.row, result.verdict
    assert row.passed, "\n".join([*row.problems, *said])
    assert verdict.accepted >= SMALL.commands
    assert (verdict.lost, verdict.duplicated, verdict.views_wrong) == (0, 0, 0)
    assert any(line.strip().startswith("moved in") for line in said), said
    assert len(cluster.running) == 2
