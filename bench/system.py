"""The CPU the measured processes, the services and the whole machine used during a phase.

The processes themselves are started and reaped by `harness.processes`, each with its log under
`bench/out/<run>/`; what each one used in all (CPU, peak RSS) is `Processes.summary()`.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.process import run as run_on_uvloop
from harness.processes import ROOT, Proc

OUT = ROOT / "bench" / "out"
"""Logs of every run, and the results of quick or failed ones."""

SERVICE_NAMES = {"beam.smp": "rabbitmq", "postgres": "postgresql", "redis-server": "redis"}
SERVICE_PORTS = {"rabbitmq": 5672, "postgresql": 5432, "redis": 6379}
"""Where the services the bench uses listen. Other instances on the machine (a second RabbitMQ
node, a Redis replica or Sentinel that a test started on ports of its own) are not counted."""


@dataclass(frozen=True, slots=True)
class ServiceProc:
    """One process of a service, as /proc shows it at a snapshot."""

    service: str
    started: int
    """Its start time in clock ticks after boot: a pid reused meanwhile is another process."""
    cpu_s: float


def _proc_stats() -> dict[int, tuple[str, int, int, float]]:
    """(command name, parent pid, start time, CPU seconds) of every live process."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            raw = (entry / "stat").read_text()
            comm = raw[raw.index("(") + 1 : raw.rindex(")")]
            fields = raw[raw.rindex(")") + 2 :].split()
            cpu = (int(fields[11]) + int(fields[12])) / tick
            stats[int(entry.name)] = (comm, int(fields[1]), int(fields[19]), cpu)
    return stats


def _listening_inodes(ports: set[int]) -> dict[str, int]:
    """Socket inodes (as `socket:[N]` links name them) of TCP listeners on `ports`."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if fields[3] == "0A" and port in ports:  # 0A: LISTEN
                    found[f"socket:[{fields[9]}]"] = port
    return found


def service_processes(
    ports: dict[str, int] = SERVICE_PORTS,
) -> dict[int, ServiceProc]:
    """The live processes of each service: the one listening on its port and all its
    descendants (PostgreSQL's backends, RabbitMQ's helpers). A service whose listener is not
    found here (in a container) counts every process named like it."""
    stats = _proc_stats()
    inodes = _listening_inodes(set(ports.values()))
    listener: dict[int, int] = {}
    for pid, (comm, parent, _, _) in stats.items():
        if comm not in SERVICE_NAMES or stats.get(parent, ("",))[0] == comm:
            continue  # not a service, or not the root of one (a backend, a worker)
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                port = inodes.get(os.readlink(fd))
                if port is not None:
                    listener[port] = pid
                    break
    children: dict[int, list[int]] = {}
    for pid, (_, parent, _, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    out: dict[int, ServiceProc] = {}
    for service, port in ports.items():
        root = listener.get(port)
        if root is None:
            members = [pid for pid, st in stats.items() if SERVICE_NAMES.get(st[0]) == service]
        else:
            members, stack = [], [root]
            while stack:
                pid = stack.pop()
                members.append(pid)
                stack.extend(children.get(pid, ()))
        for pid in members:
            _, _, started, cpu = stats[pid]
            out[pid] = ServiceProc(service, started, cpu)
    return out


def service_cpu(procs: dict[int, ServiceProc]) -> dict[str, float]:
    """CPU seconds used so far by each service's live processes."""
    totals = dict.fromkeys(SERVICE_NAMES.values(), 0.0)
    for proc in procs.values():
        totals[proc.service] += proc.cpu_s
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
    service_procs: dict[int, ServiceProc] = field(default_factory=dict)
    """The services' processes one by one (empty: only the totals in `services` are known)."""


def service_seconds(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds each service used between two snapshots: process by process when known, so
    a process that started meanwhile counts whole and one that ended (a session closed) takes
    nothing away from the others; else the difference of the totals."""
    if not (before.service_procs and after.service_procs):
        return {
            name: max(value - before.services.get(name, 0.0), 0.0)
            for name, value in after.services.items()
        }
    spent = dict.fromkeys(after.services, 0.0)
    for pid, proc in after.service_procs.items():
        earlier = before.service_procs.get(pid)
        if earlier is None or earlier.started != proc.started:
            spent[proc.service] += proc.cpu_s
        else:
            spent[proc.service] += max(proc.cpu_s - earlier.cpu_s, 0.0)
    return spent


def cpu_snapshot(procs: list[Proc]) -> CpuSnapshot:
    busy, total = machine_busy()
    for proc in procs:
        proc.observe_rss()
    services = service_processes()
    return CpuSnapshot(
        at=time.monotonic(),
        procs={p.name: p.cpu_now_s() or 0.0 for p in procs if p.running},
        services=service_cpu(services),
        busy=busy,
        total=total,
        service_procs=services,
    )


def cpu_seconds(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds each process and service used between two snapshots, and the whole
    machine's busy seconds (`machine`)."""
    spent = {
        name: max(after.procs[name] - before.procs[name], 0.0)
        for name in after.procs
        if name in before.procs
    }
    spent.update(service_seconds(before, after))
    spent["machine"] = max(after.busy - before.busy, 0.0)
    return spent


def cpu_shares(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """Cores used by each process and service between two snapshots, by the machine, and by
    whatever else ran on it (`outside`)."""
    wall = max(after.at - before.at, 1e-9)
    spent = cpu_seconds(before, after)
    machine = spent.pop("machine") / wall
    shares = {name: round(seconds / wall, 3) for name, seconds in spent.items()}
    ours = sum(shares.values())  # the services count as ours
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
