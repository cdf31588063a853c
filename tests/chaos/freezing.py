"""Freezing a process tree with SIGSTOP, and continuing it whatever happens.

A frozen server keeps its listening socket, so the kernel still accepts connections and buffers
what clients send, but nothing answers: what a stalled VM, a long GC pause or a hung disk look
like to a client, and unlike an outage no connection is ever refused or reset.

`frozen` continues every process it stopped in its `finally`, and a watchdog of its own session
continues them too if the drill dies without running it (SIGKILL, a lost terminal).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
WATCHDOG_GRACE_S = 15.0
"""How long after the planned thaw the watchdog continues the processes itself."""


@dataclass(frozen=True)
class Process:
    """One process as /proc tells it; `started` (clock ticks after boot) tells a reused pid."""

    pid: int
    name: str
    state: str
    parent: int
    started: int


def process(pid: int) -> Process | None:
    """The process `pid`, or None once it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The name is in parentheses and may hold spaces and parentheses itself.
    head, _, rest = stat.rpartition(")")
    fields = rest.split()
    return Process(pid, head.partition("(")[2], fields[0], int(fields[1]), int(fields[19]))


def _processes() -> list[Process]:
    found = (process(int(p.name)) for p in PROC.iterdir() if p.name.isdigit())
    return [p for p in found if p is not None]


def tree(root: int) -> list[Process]:
    """`root` and its descendants, parents before children."""
    children: dict[int, list[Process]] = {}
    top = None
    for p in _processes():
        children.setdefault(p.parent, []).append(p)
        if p.pid == root:
            top = p
    if top is None:
        return []
    ordered = [top]
    for p in ordered:
        ordered.extend(children.get(p.pid, []))
    return ordered


def _signal(p: Process, signum: signal.Signals) -> None:
    """Send `signum` to `p` unless it is gone or its pid now belongs to another process."""
    now = process(p.pid)
    if now is None or now.started != p.started:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(p.pid, signum)


def _wait_stopped(procs: list[Process], timeout_s: float = 5.0) -> None:
    """Wait until each of `procs` is stopped, or a zombie its stopped parent will not reap."""
    deadline = time.monotonic() + timeout_s
    for p in procs:
        while (now := process(p.pid)) is not None and now.state not in "TtZX":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{p.name} {p.pid} did not stop within {timeout_s:.0f}s")
            time.sleep(0.01)


def _stop_tree(root: int, spare: Callable[[Process], bool], stopped: list[Process]) -> None:
    """SIGSTOP `root` and its descendants except those `spare` keeps running. Round after round
    until no new process appears, since a process may fork until it is stopped itself; each is
    listed in `stopped` before its signal is sent, so an interruption leaves none unlisted."""
    seen: set[int] = set()
    while True:
        new = [p for p in tree(root) if p.pid not in seen]
        if not new:
            return
        seen.update(p.pid for p in new)
        round_ = [p for p in new if not spare(p)]
        for p in round_:
            stopped.append(p)
            _signal(p, signal.SIGSTOP)
        _wait_stopped(round_)


def continue_all(procs: list[Process]) -> None:
    """SIGCONT each of `procs`, children first."""
    for p in reversed(procs):
        _signal(p, signal.SIGCONT)


def _watchdog(procs: list[Process], after_s: float) -> subprocess.Popen[bytes]:
    """A process of its own session (so Ctrl-C on the drill's terminal does not reach it) that
    sends SIGCONT to `procs` after `after_s`, unless it is killed first."""
    return subprocess.Popen(
        [
            "sh",
            "-c",
            'sleep "$1"; shift; kill -CONT "$@" 2>/dev/null',
            "watchdog",
            f"{after_s:.0f}",
            *(str(p.pid) for p in procs),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@contextlib.contextmanager
def frozen(
    root: int, seconds: float, spare: Callable[[Process], bool] = lambda _: False
) -> Iterator[list[Process]]:
    """Stop `root` and every descendant (but those `spare` keeps running) for the `with` block,
    meant to last about `seconds`; yields the stopped processes. They are continued on leaving
    it, however that happens; if this process dies first, the watchdog continues them
    `WATCHDOG_GRACE_S` after `seconds`."""
    stopped: list[Process] = []
    watchdog = None
    try:
        _stop_tree(root, spare, stopped)
        watchdog = _watchdog(stopped, seconds + WATCHDOG_GRACE_S)
        yield stopped
    finally:
        continue_all(stopped)
        if watchdog is not None:
            # Its own process group: the shell and its `sleep` go together.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(watchdog.pid, signal.SIGKILL)
            watchdog.wait()
