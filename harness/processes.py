"""Starting the system's processes (`python -m gateway`, ...) as users do, and stopping them.

Every process is reaped with `wait4`, whose rusage says how much CPU it used; peak RSS is the
kernel's VmHWM, read while the process runs and right before it is stopped. Standard library
only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
_LOUD = re.compile(r'"level": ?"(warning|error|critical)"')
_PR_SET_PDEATHSIG = 1

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status `url` answers with, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def wait_for(condition: Callable[[], T], timeout: float, what: str, every: float = 0.05) -> T:
    """Poll `condition` until it returns a truthy value; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


class Listen(StrEnum):
    """How a started process learns the port it serves on."""

    HTTP = "http"
    """`--host 127.0.0.1 --port N`: the gateway and other HTTP apps."""
    METRICS = "metrics"
    """`METRICS_PORT=N`: the workers' metrics and health server."""
    NONE = "none"
    """No port: one-off commands and load generators."""


class ProcessFailed(RuntimeError):
    """A process exited before it was ready, or did not get ready in time."""


@dataclass
class Usage:
    """CPU time from `wait4`. (Its `ru_maxrss` is no use here: Linux carries the parent's
    high-water mark across exec, so a child started late inherits the parent's peak.)"""

    cpu_s: float


@dataclass
class Proc:
    """One started process, its log file and, once reaped, what it used."""

    name: str
    module: str
    popen: subprocess.Popen[bytes]
    port: int | None
    log_path: Path | None
    """None when the output goes to the caller (`Processes(log_dir=None)`)."""
    args: list[str] = field(default_factory=list)
    role: str = "system"
    host: str = "127.0.0.1"
    started: float = field(default_factory=time.monotonic)
    usage: Usage | None = None
    exit_code: int | None = None
    peak_rss_mb: float | None = None
    """The highest VmHWM seen; read at every poll and right before the process is stopped."""

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.exit_code is None and not self._reap(block=False)

    def ready(self) -> bool:
        return self.port is not None and http_status(f"{self.base_url}/health/ready") == 200

    def wait_ready(self, timeout: float = 45.0) -> None:
        """Until `/health/ready` answers 200; `ProcessFailed` with the log's end if the process
        exits first or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise ProcessFailed(f"{self.name} exited early:\n{self.tail(20000)}")
            if self.ready():
                return
            if time.monotonic() > deadline:
                raise ProcessFailed(f"{self.name} not ready after {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.05)

    def log(self) -> str:
        """Everything the process logged so far (a check for a line must not miss an early
        one because the process has been busy since)."""
        if self.log_path is None:
            return ""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]

    def digest(self, warnings: int = 40, last: int = 15) -> str:
        """The process's last `warnings` warning-or-worse lines and its last `last` lines."""
        lines = self.log().splitlines()
        bad = [line for line in lines if not line.startswith('{"') or _LOUD.search(line)]
        head = [f"exit code: {self.popen.poll()}", "-- warnings and errors:"]
        return "\n".join([*head, *bad[-warnings:], "-- last lines:", *lines[-last:]])

    # --- what it used -----------------------------------------------------------------------

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

    # --- ending it --------------------------------------------------------------------------

    def _reap(self, *, block: bool) -> bool:
        """Collect the exit status and rusage if the process ended; True if it did."""
        if self.exit_code is not None:
            return True
        try:
            pid, status, rusage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            # Reaped by `popen.poll()` or `popen.wait()`: the code is there, the rusage is not.
            self.exit_code = self.popen.returncode if self.popen.returncode is not None else -1
            return True
        if pid == 0:
            return False
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.popen.returncode = self.exit_code
        self.usage = Usage(rusage.ru_utime + rusage.ru_stime)
        return True

    def wait(self, timeout: float) -> bool:
        """True once the process ended; False if it still runs after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self.observe_rss()
            if self._reap(block=False):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL: no goodbye, nothing flushed."""
        self.observe_rss()
        if self.running:
            self.signal(signal.SIGKILL)
        self.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait for the exit code; `subprocess.TimeoutExpired` after `timeout`."""
        self.observe_rss()
        if self.running:
            self.signal(signal.SIGTERM)
        if not self.wait(timeout):
            raise subprocess.TimeoutExpired(self.popen.args, timeout)
        assert self.exit_code is not None
        return self.exit_code

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; reaped either way."""
        try:
            self.terminate(grace)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self._reap(block=True)


def process_environment(
    inherited: Mapping[str, str],
    env: Mapping[str, str],
    extra_env: Mapping[str, str] | None,
    *,
    foreground: bool,
) -> dict[str, str]:
    """A started process's environment: `inherited`, then `env`, then `extra_env`.

    Processes in the caller's foreground (`make run`) log for a person (`LOG_FORMAT=console`)
    unless `inherited` sets a format; processes that log to a file log JSON lines whatever
    `inherited` says, because the harness and the tests read them (`env` or `extra_env` may
    still choose)."""
    base = dict(inherited)
    if foreground:
        base.setdefault("LOG_FORMAT", "console")
    else:
        base["LOG_FORMAT"] = "json"
    return {**base, **env, **(extra_env or {})}


def die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies without cleaning up."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


class Processes:
    """Starts processes with one environment and remembers every one, to stop them together.

    With a `log_dir`, each process writes its stdout and stderr to `<log_dir>/<name>.log`.
    Without one, the processes are the caller's foreground: their merged output is left on
    `popen.stdout` for the caller to relay, they run in a process group of their own (Ctrl-C
    reaches the caller, which then stops them together) and get SIGTERM if the caller dies
    (Linux; start them from the main thread, as the signal follows the starting thread).
    """

    def __init__(self, env: Mapping[str, str], log_dir: Path | None) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self._lock = threading.Lock()

    def start(
        self,
        module: str,
        *args: str,
        name: str | None = None,
        listen: Listen | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        role: str = "system",
        extra_env: Mapping[str, str] | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | IO[bytes] | None = None,
        wait: bool = True,
    ) -> Proc:
        """`python -m module args` from the project's root.

        `listen` defaults to HTTP for the gateway and METRICS for everything else; `port` to a
        free one. `stdout` (with a log dir) sends stdout elsewhere, stderr still to the log.
        With `wait`, a process that listens is waited for until it is ready."""
        listen = listen or (Listen.HTTP if module == "gateway" else Listen.METRICS)
        if listen is not Listen.NONE and port is None:
            port = free_port()
        env = process_environment(os.environ, self.env, extra_env, foreground=self.log_dir is None)
        argv = [sys.executable, "-m", module, *args]
        if listen is Listen.HTTP:
            argv += ["--host", host, "--port", str(port)]
        elif listen is Listen.METRICS:
            env["METRICS_PORT"] = str(port)
        with self._lock:
            name = name or f"{module}-{len(self.procs)}"
            log_path = None if self.log_dir is None else self.log_dir / f"{name}.log"
            popen = self._popen(argv, env, log_path, stdin, stdout)
            proc = Proc(name, module, popen, port, log_path, args=list(args), role=role, host=host)
            self.procs.append(proc)
        if wait and proc.port is not None:
            proc.wait_ready()
        return proc

    def _popen(
        self,
        argv: list[str],
        env: dict[str, str],
        log_path: Path | None,
        stdin: int | None,
        stdout: int | IO[bytes] | None,
    ) -> subprocess.Popen[bytes]:
        if log_path is None:
            return subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )
        with log_path.open("wb") as log_file:
            return subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=stdin,
                stdout=stdout if stdout is not None else log_file,
                stderr=log_file,
            )

    def running(self) -> list[Proc]:
        return [p for p in self.procs if p.running]

    def stop_all(
        self, grace: float = 20.0, hurry: Callable[[], bool] = lambda: False
    ) -> list[Proc]:
        """SIGTERM to every process, then SIGKILL to those still there after `grace` seconds
        (or as soon as `hurry()`); the ones that had to be killed."""
        running = self.running()
        for proc in running:
            proc.observe_rss()
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.running() and time.monotonic() < deadline and not hurry():
            for proc in running:
                proc.observe_rss()
            time.sleep(0.05)
        killed = self.running()
        for proc in killed:
            proc.signal(signal.SIGKILL)
            proc._reap(block=True)
        return killed

    def summary(self) -> list[dict[str, Any]]:
        """Each process's peak RSS, CPU seconds and exit code."""
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


@contextlib.contextmanager
def process_group(env: Mapping[str, str], log_dir: Path | None) -> Iterator[Processes]:
    """`Processes` whose every process is stopped on the way out."""
    started = Processes(env, log_dir)
    try:
        yield started
    finally:
        started.stop_all()
