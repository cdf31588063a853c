#!/usr/bin/env python3
"""Run the whole system in the foreground against the local services.

One gateway, N command workers and M projectors, each line of their output prefixed with the
process name. Ctrl-C (or SIGTERM) stops them all gracefully; if one of them dies on its own,
the rest are stopped too and this script exits non-zero. Standard library only, so it runs
before anything is installed (`--help` at least).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
COLOURS = ("36", "33", "35", "32", "34", "91", "96", "93", "95", "92")
PR_SET_PDEATHSIG = 1


@dataclass
class Child:
    """One process of the system and the thread that relays its output."""

    name: str
    argv: list[str]
    env: dict[str, str]
    url: str
    popen: subprocess.Popen[bytes] | None = None
    relay: threading.Thread | None = field(default=None, repr=False)


class Output:
    """Writes whole lines from several threads, each behind its process's coloured name."""

    def __init__(self, stream: IO[str], width: int, colour: bool) -> None:
        self._stream = stream
        self._width = width
        self._colour = colour
        self._lock = threading.Lock()

    def prefix(self, name: str, index: int) -> str:
        label = f"{name:<{self._width}} |"
        if not self._colour:
            return label + " "
        return f"\x1b[{COLOURS[index % len(COLOURS)]}m{label}\x1b[0m "

    def line(self, text: str) -> None:
        with self._lock:
            try:
                self._stream.write(text if text.endswith("\n") else text + "\n")
                self._stream.flush()
            except BrokenPipeError:
                # The reader went away (`| head`); keep draining the children regardless.
                os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())

    def relay(self, pipe: IO[bytes], prefix: str) -> None:
        for raw in iter(pipe.readline, b""):
            self.line(prefix + raw.decode("utf-8", "replace").rstrip("\r\n"))
        pipe.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the gateway, command workers and projectors in the foreground.",
        epilog="Every process gets this environment: the domains from DOMAINS (every "
        "projector runs all their projections), the services from AMQP_URL, DATABASE_URL, "
        "REDIS_URL, ...; the defaults point at 127.0.0.1.",
    )
    parser.add_argument("--command-workers", type=int, default=1, metavar="N", help="(%(default)s)")
    parser.add_argument(
        "--projector-workers", type=int, default=1, metavar="M", help="(%(default)s)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="gateway address (%(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="gateway port (%(default)s)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9100,
        help="METRICS_PORT of the first worker; the next workers count up (%(default)s)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds the processes get to stop after SIGTERM before SIGKILL (%(default)s)",
    )
    args = parser.parse_args(argv)
    if args.command_workers < 1 or args.projector_workers < 0:
        parser.error("need at least one command worker and no negative count of projectors")
    return args


def has_entry_point(module: str) -> bool:
    return (ROOT / module / "__main__.py").is_file()


def plan(args: argparse.Namespace, say: Output) -> list[Child]:
    """The processes to start, in start order."""
    base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    python = sys.executable
    children = [
        Child(
            "gateway",
            [python, "-m", "gateway", "--host", args.host, "--port", str(args.port)],
            base_env,
            f"http://{args.host}:{args.port}",
        )
    ]
    workers = [("command", "command_worker", args.command_workers)]
    if args.projector_workers and not has_entry_point("projector_worker"):
        say.line("run: projector_worker/__main__.py does not exist yet; starting no projector")
    else:
        workers.append(("projector", "projector_worker", args.projector_workers))
    metrics_port = args.metrics_port
    for short, module, count in workers:
        for i in range(1, count + 1):
            children.append(
                Child(
                    f"{short}-{i}",
                    [python, "-m", module],
                    {**base_env, "METRICS_PORT": str(metrics_port)},
                    f"http://127.0.0.1:{metrics_port}",
                )
            )
            metrics_port += 1
    return children


def banner(children: list[Child], say: Output) -> None:
    gateway, workers = children[0], children[1:]
    rows = [("API", gateway.url), ("API docs", f"{gateway.url}/docs")]
    rows += [(w.name, f"{w.url}/metrics  {w.url}/health/ready") for w in workers]
    rows.append(("RabbitMQ", "http://127.0.0.1:15672  (guest / guest)"))
    width = max(len(label) for label, _ in rows)
    say.line("\n".join(f"  {label:<{width}}  {url}" for label, url in rows))
    say.line("  Ctrl-C stops everything.")


def die_with_parent() -> None:
    """In the child before exec: get SIGTERM if this script is killed without cleaning up."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


def start(children: list[Child], say: Output) -> None:
    # Every process first, then the relay threads: preexec_fn is only safe without threads.
    for child in children:
        child.popen = subprocess.Popen(
            child.argv,
            cwd=ROOT,
            env=child.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Own process group: Ctrl-C reaches only this script, which then stops the
            # children together instead of each one getting SIGINT on its own.
            process_group=0,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
    for index, child in enumerate(children):
        assert child.popen is not None
        assert child.popen.stdout is not None
        child.relay = threading.Thread(
            target=say.relay,
            args=(child.popen.stdout, say.prefix(child.name, index)),
            daemon=True,
        )
        child.relay.start()


def running(children: list[Child]) -> list[Child]:
    return [c for c in children if c.popen is not None and c.popen.poll() is None]


def stop(children: list[Child], grace: float, hurry: threading.Event, say: Output) -> None:
    """SIGTERM to every child, then SIGKILL to those still there after `grace` seconds."""
    for child in running(children):
        assert child.popen is not None
        with contextlib.suppress(ProcessLookupError):
            child.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while running(children) and time.monotonic() < deadline and not hurry.is_set():
        time.sleep(0.1)
    for child in running(children):
        assert child.popen is not None
        say.line(f"run: {child.name} did not stop in time; killing it")
        with contextlib.suppress(ProcessLookupError):
            child.popen.kill()
        child.popen.wait()
    for child in children:
        if child.relay is not None:
            child.relay.join(timeout=2)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    probe = Output(sys.stdout, 0, colour=False)
    for module in ("gateway", "command_worker"):
        if not has_entry_point(module):
            probe.line(f"run: {module}/__main__.py does not exist; nothing to run")
            return 1
    children = plan(args, probe)
    say = Output(sys.stdout, max(len(c.name) for c in children), colour)

    stopping = threading.Event()
    hurry = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():
            hurry.set()
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)

    banner(children, say)
    start(children, say)
    failed: Child | None = None
    while not stopping.is_set():
        failed = next((c for c in children if c.popen and c.popen.poll() is not None), None)
        if failed is not None:
            break
        stopping.wait(0.2)

    if failed is not None:
        assert failed.popen is not None
        say.line(f"run: {failed.name} exited with code {failed.popen.returncode}; stopping")
    else:
        say.line("run: stopping (Ctrl-C again to kill at once)")
    stop(children, args.grace, hurry, say)
    return 1 if failed is not None else 0


if __name__ == "__main__":
    sys.exit(main())
