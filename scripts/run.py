#!/usr/bin/env python3
"""Run the whole system in the foreground against the local services.

One gateway, N command workers and M projectors, each line of their output prefixed with the
process name; they log short lines for a person (`LOG_FORMAT=console`, coloured on a terminal)
unless LOG_FORMAT is set. Ctrl-C (or SIGTERM) stops them all gracefully; if one of them dies on
its own, the rest are stopped too and this script exits non-zero. The processes are started by the
harness the tests and the benchmark use (`harness.system`), which needs the standard library
only, so this runs before anything is installed (`--help` at least).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the harness, whether the project is installed or not

from harness.processes import Processes  # noqa: E402
from harness.system import System  # noqa: E402

COLOURS = ("36", "33", "35", "32", "34", "91", "96", "93", "95", "92")


class Output:
    """Writes whole lines from several threads, each behind its process's coloured name."""

    def __init__(self, stream: IO[str], colour: bool) -> None:
        self._stream = stream
        self.colour = colour
        self._lock = threading.Lock()

    def prefix(self, name: str, index: int, width: int) -> str:
        label = f"{name:<{width}} |"
        if not self.colour:
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


def banner(system: System, say: Output) -> None:
    rows = [("API", system.gateway.base_url), ("API docs", f"{system.gateway.base_url}/docs")]
    rows += [
        (w.name, f"{w.base_url}/metrics  {w.base_url}/health/ready")
        for w in [*system.command_workers, *system.projectors]
    ]
    rows.append(("RabbitMQ", "http://127.0.0.1:15672  (guest / guest)"))
    width = max(len(label) for label, _ in rows)
    say.line("\n".join(f"  {label:<{width}}  {url}" for label, url in rows))
    say.line("  Ctrl-C stops everything.")


def relay_output(system: System, say: Output) -> list[threading.Thread]:
    """One thread per process, relaying its output behind its name."""
    width = max(len(p.name) for p in system.procs)
    threads = []
    for index, proc in enumerate(system.procs):
        assert proc.popen.stdout is not None
        thread = threading.Thread(
            target=say.relay,
            args=(proc.popen.stdout, say.prefix(proc.name, index, width)),
            daemon=True,
        )
        thread.start()
        threads.append(thread)
    return threads


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    say = Output(sys.stdout, colour=sys.stdout.isatty() and "NO_COLOR" not in os.environ)
    stopping = threading.Event()
    hurry = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():
            hurry.set()
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)

    # Every process first, then the relay threads: the harness's preexec_fn is only safe
    # without threads.
    # The processes log for a person (LOG_FORMAT=console unless set); their output reaches the
    # terminal through a pipe, so they are told when to colour it.
    env = {"PYTHONUNBUFFERED": "1"}
    if say.colour and "FORCE_COLOR" not in os.environ:
        env["FORCE_COLOR"] = "1"
    processes = Processes(env, log_dir=None)
    system = System.start(
        processes,
        command_workers=args.command_workers,
        projectors=args.projector_workers,
        host=args.host,
        gateway_port=args.port,
        metrics_port=args.metrics_port,
        wait=False,
    )
    banner(system, say)
    relays = relay_output(system, say)
    failed = None
    while not stopping.is_set():
        failed = next((p for p in system.procs if not p.running), None)
        if failed is not None:
            break
        stopping.wait(0.2)

    if failed is not None:
        say.line(f"run: {failed.name} exited with code {failed.exit_code}; stopping")
    else:
        say.line("run: stopping (Ctrl-C again to kill at once)")
    for proc in processes.stop_all(args.grace, hurry.is_set):
        say.line(f"run: {proc.name} did not stop in time; killed it")
    for relay in relays:
        relay.join(timeout=2)
    return 1 if failed is not None else 0


if __name__ == "__main__":
    sys.exit(main())
