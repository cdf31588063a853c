"""The measured processes and what they use: CPU, peak RSS, and the machine's CPU.

Processes are started as users start them (`python -m gateway`, ...), each with its log under
`bench/out/<run>/`, and reaped with `wait4`, whose rusage gives each one's CPU time. Peak RSS
is the kernel's VmHWM, read while each process runs and right before it is stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- processes -------------------------------------------------------------------------------


@dataclass
class Usage:
    """CPU time from `wait4`. (Its `ru_maxrss` is no use here: Linux carries the parent's
    high-water mark across exec, so a child started late inherits the parent's peak.)"""

    cpu_s: float


@dataclass
class Proc:
    """One started process and, once reaped, its usage."""

    name: str
    role: str
    popen: subprocess.Popen[bytes]
    port: int | None
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    usage: Usage | None = None
    exit_code: int | None = None
    peak_rss_mb: float | None = None
    """The highest VmHWM seen; read at every poll and right before the process is stopped."""

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.exit_code is None and not self._reap(block=False)

    def ready_url(self) -> str | None:
        return f"http://127.0.0.1:{self.port}/health/ready" if self.port else None

    def wait_ready(self, timeout: float = 45.0) -> None:
        url = self.ready_url()
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise RuntimeError(f"{self.name} exited early:\n{self.tail()}")
            if url is not None and http_ok(url):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def observe_rss(self) -> None:
        """Read VmHWM, the kernel's peak resident set of this process image so far."""
        if self.exit_code is not None:
            return
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    value = int(line.split()[1]) / 1024
                    self.peak_rss_mb = max(self.peak_rss_mb or 0.0, value)
                    return

    def cpu_now_s(self) -> float | None:
        """User + system CPU seconds used so far, from /proc/<pid>/stat."""
        with contextlib.suppress(OSError, IndexError, ValueError):
            raw = Path(f"/proc/{self.pid}/stat").read_text()
            fields = raw[raw.rindex(")") + 2 :].split()
            ticks = int(fields[11]) + int(fields[12])
            return ticks / os.sysconf("SC_CLK_TCK")
        return None

    def _reap(self, *, block: bool) -> bool:
        """Collect the exit status and rusage if the process ended; True if it did."""
        if self.exit_code is not None:
            return True
        try:
            pid, status, rusage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self.exit_code = self.popen.returncode if self.popen.returncode is not None else -1
            return True
        if pid == 0:
            return False
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.popen.returncode = self.exit_code
        self.usage = Usage(rusage.ru_utime + rusage.ru_stime)
        return True

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self.observe_rss()
            if self._reap(block=False):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; reaped either way."""
        self.observe_rss()
        if self._reap(block=False):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        if not self.wait(grace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._reap(block=True)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


class Processes:
    """Starts processes with the run's environment and remembers every one."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def start(
        self,
        name: str,
        module: str,
        *args: str,
        role: str = "system",
        http: bool = False,
        metrics: bool = False,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | IO[bytes] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> Proc:
        """`python -m module args`. `http` adds `--host/--port`; `metrics` sets METRICS_PORT;
        without `stdout`, output goes to the process's log file."""
        port = free_port() if (http or metrics) else None
        env = {**os.environ, **self.env, **(extra_env or {})}
        argv = [sys.executable, "-m", module, *args]
        if http:
            argv += ["--host", "127.0.0.1", "--port", str(port)]
        if metrics:
            env["METRICS_PORT"] = str(port)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log_file:
            popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=stdin,
                stdout=stdout if stdout is not None else log_file,
                stderr=log_file,
            )
        proc = Proc(name, role, popen, port, log_path)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        running = [p for p in self.procs if p.running]
        for proc in running:
            proc.observe_rss()
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        for proc in running:
            proc.stop(grace=20.0)

    def summary(self) -> list[dict[str, Any]]:
        out = []
        for proc in self.procs:
            proc.observe_rss()
            cpu = proc.usage.cpu_s if proc.usage else proc.cpu_now_s()
            out.append(
                {
                    "name": proc.name,
                    "role": proc.role,
                    "max_rss_mb": round(proc.peak_rss_mb, 1) if proc.peak_rss_mb else None,
                    "cpu_s": round(cpu, 2) if cpu is not None else None,
                    "exit_code": proc.exit_code,
                }
            )
        return out


# --- CPU of the whole machine and of the services --------------------------------------------

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
