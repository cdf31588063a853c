"""Running the real processes (`python -m gateway`, ...) the way users do, for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_LOUD = re.compile(r'"level": ?"(warning|error|critical)"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def wait_for(condition: Callable[[], object], timeout: float, what: str, every: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll `condition` until it returns a truthy value; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


@dataclass
class Proc:
    """One running process of the system, with its log file."""

    module: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        return http_status(f"{self.base_url}/health/ready") == 200

    def wait_ready(self, timeout: float = 30) -> None:
        def check() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.module} exited early:\n{self.log()[-20000:]}")
            return self.ready()

        wait_for(check, timeout, f"{self.module} to be ready")

    def log(self) -> str:
        """Everything the process logged so far (a check for a line must not miss an early
        one because the process has been busy since)."""
        return self.log_path.read_text(errors="replace")

    def digest(self, warnings: int = 40, last: int = 15) -> str:
        """The process's last `warnings` warning-or-worse lines and its last `last` lines."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        bad = [line for line in lines if not line.startswith('{"') or _LOUD.search(line)]
        head = [f"exit code: {self.popen.poll()}", "-- warnings and errors:"]
        return "\n".join([*head, *bad[-warnings:], "-- last lines:", *lines[-last:]])

    def kill(self) -> None:
        """SIGKILL: no goodbye, nothing flushed."""
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait for the exit code."""
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout)


class ProcessFactory:
    """Starts processes with a shared environment; stops every one at teardown."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def start(
        self, module: str, *args: str, extra_env: dict[str, str] | None = None, wait: bool = True
    ) -> Proc:
        port = free_port()
        env = {**os.environ, **self.env, **(extra_env or {})}
        cmd = [sys.executable, "-m", module, *args]
        if module == "gateway":
            cmd += ["--host", "127.0.0.1", "--port", str(port)]
        else:
            env["METRICS_PORT"] = str(port)
        log_path = self.log_dir / f"{module}-{len(self.procs)}.log"
        with log_path.open("wb") as log_file:
            popen = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
            )
        proc = Proc(module, popen, port, log_path, list(args))
        self.procs.append(proc)
        if wait:
            proc.wait_ready()
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                try:
                    proc.terminate(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


@contextlib.contextmanager
def process_factory(env: dict[str, str], log_dir: Path) -> Iterator[ProcessFactory]:
    factory = ProcessFactory(env, log_dir)
    try:
        yield factory
    finally:
        factory.stop_all()
