"""The arithmetic of `python -m bench --ceilings`: its plan, the figures of one serial part
measured alone, the table docs/scaling.md shows, and reading what the processes report.

Pure: no service, no process; `bench/ceilings.py` runs the measurement.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bench.system import CpuSnapshot, cpu_seconds

SERVICES = ("rabbitmq", "postgresql", "redis")


@dataclass(frozen=True)
class CeilingPlan:
    """How much work each serial part is given."""

    quick: bool
    events: int
    """Events seeded for the relay, which then fill the projection queues (whole orders of
    five events, so a multiple of five)."""
    commands: int
    """Commands pre-filled in the commands queue."""
    timeout_s: float
    """The longest any one part may take to drain its backlog."""
    customers: int = 500
    quiet_s: float = 2.0
    """How long the services are watched, before each part, without it."""

    @classmethod
    def full(cls) -> CeilingPlan:
        return cls(quick=False, events=50_000, commands=20_000, timeout_s=600)

    @classmethod
    def smoke(cls) -> CeilingPlan:
        return cls(quick=True, events=2_000, commands=1_000, timeout_s=60)


@dataclass(frozen=True)
class Window:
    """One part's work between two CPU snapshots: `count` items done by process `process`
    in `wall_s` seconds."""

    process: str
    count: int
    wall_s: float
    before: CpuSnapshot
    after: CpuSnapshot
    quiet: CpuSnapshot | None = None
    """A snapshot taken a while before `before`, with the part waiting: what the services and
    the machine did without it."""


def per(count: float, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def figures(window: Window) -> dict[str, Any]:
    """Rates of one part: per wall second, and per CPU second of its process (the figure that
    holds on a shared machine), of each service, and of the process and services together."""
    spent = cpu_seconds(window.before, window.after)
    own = spent.get(window.process, 0.0)
    services = {name: round(spent.get(name, 0.0), 3) for name in SERVICES}
    together = own + sum(services.values())
    snapshot_wall = max(window.after.at - window.before.at, 1e-9)
    baseline: dict[str, float] = {}
    if window.quiet is not None:
        quiet_wall = max(window.before.at - window.quiet.at, 1e-9)
        without = cpu_seconds(window.quiet, window.before)
        baseline = {
            name: round(without.get(name, 0.0) / quiet_wall, 2) for name in (*SERVICES, "machine")
        }
    return {
        "count": window.count,
        "wall_s": round(window.wall_s, 3),
        "per_s": per(window.count, window.wall_s),
        "cpu_s": round(own, 3),
        "per_cpu_s": per(window.count, own),
        "services_cpu_s": services,
        "per_service_cpu_s": {name: per(window.count, s) for name, s in services.items()},
        "per_cpu_s_with_services": per(window.count, together),
        "process_cores": round(own / snapshot_wall, 2),
        "machine_cores": round(spent["machine"] / snapshot_wall, 2),
        "cores_before_the_part": baseline,
    }


METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([0-9.eE+-]+|NaN)$")


def metric_sum(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The sum of every sample of `name` in a Prometheus text page whose labels include
    `labels` (0 when there is none)."""
    total = 0.0
    for line in text.splitlines():
        found = METRIC_LINE.match(line)
        if not found or found.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', found.group(2) or ""))
        if all(have.get(k) == v for k, v in (labels or {}).items()):
            total += float(found.group(3))
    return total


def logged_at(log: str, message: str) -> datetime | None:
    """The `time` of the last JSON log line whose message is `message`."""
    pattern = re.compile(r'"message": ?"' + re.escape(message) + r'"')
    stamp = re.compile(r'"time": ?"([^"]+)"')
    found = None
    for line in log.splitlines():
        if pattern.search(line):
            match = stamp.search(line)
            if match:
                found = datetime.fromisoformat(match.group(1))
    return found


PARTS = (
    ("relay", "relay: event store → events exchange", "events"),
    ("command_worker", "command worker: commands queue → event store", "commands"),
    ("projector", "projector, every projection: its queues → Redis views", "events"),
)
"""Each part's key in the results, its row's label and what it counts."""


def table(results: Mapping[str, Any]) -> str:
    """The Markdown table docs/scaling.md shows, from `bench/ceilings.json`."""
    rows = [
        "| serial part, alone | done | per second | per CPU-second of the process"
        " | CPU-seconds of RabbitMQ / PostgreSQL / Redis |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label, unit in PARTS:
        part = results.get(key)
        if not part:
            continue
        services = " / ".join(f"{part['services_cpu_s'][s]:.1f}" for s in SERVICES)
        rows.append(
            f"| {label} | {part['count']:,} {unit} | {_number(part['per_s'])}"
            f" | {_number(part['per_cpu_s'])} | {services} |"
        )
    return "\n".join(rows)


def sizing_table(results: Mapping[str, Any], commands_per_s: int = 1000) -> str:
    """The Markdown table of cores per `commands_per_s` commands of the load's mix, from
    `bench/ceilings.json`: each part's process, and each service's CPU split by part (the
    relay and the projector scaled by the events a command made)."""
    per_command = {
        "command_worker": 1.0,
        "relay": results["command_worker"].get("events_per_command", 1.0),
        "projector": results["command_worker"].get("events_per_command", 1.0),
    }

    def cores(part: str, cpu_s: float) -> float:
        return float(cpu_s / results[part]["count"] * per_command[part] * commands_per_s)

    rows = [
        f"| per {commands_per_s:,} commands/s | cores"
        " | of which: command worker / relay / projector |",
        "|---|---:|---:|",
    ]
    for part, label in SIZED.items():
        rows.append(f"| {label} | {cores(part, results[part]['cpu_s']):.2f} | |")
    for service in SERVICES:
        spent = [cores(part, results[part]["services_cpu_s"][service]) for part in SIZED]
        split = " / ".join(f"{value:.2f}" for value in spent)
        rows.append(f"| {SERVICE_NAMES[service]} | {sum(spent):.2f} | {split} |")
    return "\n".join(rows)


SIZED = {"command_worker": "command workers", "relay": "relay leader", "projector": "projectors"}
"""The parts of the sizing table, in its order, and their rows' labels."""
SERVICE_NAMES = {"rabbitmq": "RabbitMQ", "postgresql": "PostgreSQL", "redis": "Redis"}


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


if __name__ == "__main__":
    # `python -m bench.ceilings_figures [results.json]`: the two tables docs/scaling.md shows.
    import sys
    from pathlib import Path

    import orjson

    source = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("ceilings.json"))
    loaded = orjson.loads(source.read_bytes())
    print(table(loaded), sizing_table(loaded), sep="\n\n")
