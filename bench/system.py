"""The CPU the measured processes, the services and the whole machine used during a phase.

The processes themselves are started and reaped by `harness.processes`, each with its log under
`bench/out/<run>/`; what each one used in all (CPU, peak RSS) is `Processes.summary()`.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.process import run as run_on_uvloop
from harness.processes import ROOT, Proc

OUT = ROOT / "bench" / "out"
"""Logs of every run, and the results of quick or failed ones."""

SERVICE_NAMES = {"beam.smp": "rabbitmq", "postgres": "postgresql", "redis-server": "redis"}


def service_cpu() -> dict[str, float]:
    """CPU seconds used so far by the local RabbitMQ, PostgreSQL and Redis processes (summed
    over each service's live processes; sessions that ended since are not counted)."""
    tick = os.sysconf("SC_CLK_TCK")
    totals = dict.fromkeys(SERVICE_NAMES.values(), 0.0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            raw = (entry / "stat").read_text()
            comm = raw[raw.index("(") + 1 : raw.rindex(")")]
            service = SERVICE_NAMES.get(comm)
            if service is None:
                continue
            fields = raw[raw.rindex(")") + 2 :].split()
            totals[service] += (int(fields[11]) + int(fields[12])) / tick
    return totals


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in first]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return (total - idle) / tick, total / tick


@dataclass
class CpuSnapshot:
    at: float
    procs: dict[str, float]
    services: dict[str, float]
    busy: float
    total: float


def cpu_snapshot(procs: list[Proc]) -> CpuSnapshot:
    busy, total = machine_busy()
    for proc in procs:
        proc.observe_rss()
    return CpuSnapshot(
        at=time.monotonic(),
        procs={p.name: p.cpu_now_s() or 0.0 for p in procs if p.running},
        services=service_cpu(),
        busy=busy,
        total=total,
    )


def cpu_shares(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """Cores used by each process and service between two snapshots, and by the machine."""
    wall = max(after.at - before.at, 1e-9)
    shares = {
        name: round((after.procs[name] - before.procs.get(name, 0.0)) / wall, 3)
        for name in after.procs
        if name in before.procs
    }
    for name, value in after.services.items():
        shares[name] = round(max(value - before.services.get(name, 0.0), 0.0) / wall, 3)
    ours = sum(shares.values())  # the services count as ours
    machine = max(after.busy - before.busy, 0.0) / wall
    shares["machine"] = round(machine, 3)
    shares["outside"] = round(max(machine - ours, 0.0), 3)
    return shares


def run_on_uvloop_value(coroutine: Any) -> Any:
    """Run a coroutine to completion on uvloop and return its value."""
    box: list[Any] = []

    async def wrapper() -> int:
        box.append(await coroutine)
        return 0

    run_on_uvloop(wrapper)
    return box[0]
