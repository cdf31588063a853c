"""The system as one unit: a gateway, N command workers and M projectors on one environment.

The environment (`Processes.env`) decides where they run: a slice of the services of their own
(`harness.isolation.Slice.env`) for tests, drills and the benchmark, the local defaults for
`make run`. Standard library only.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from harness.processes import Proc, Processes


@dataclass
class System:
    """The running processes; replacements are started the way a supervisor would."""

    processes: Processes
    gateway: Proc
    command_workers: list[Proc] = field(default_factory=list)
    projectors: list[Proc] = field(default_factory=list)
    projector_args: tuple[str, ...] = ()
    """Arguments of every projector (`--projections a,b`)."""
    next_metrics_port: int | None = None
    """The next worker's METRICS_PORT; None: a free port each."""

    @classmethod
    def start(
        cls,
        processes: Processes,
        *,
        command_workers: int = 1,
        projectors: int = 1,
        gateway_port: int | None = None,
        host: str = "127.0.0.1",
        metrics_port: int | None = None,
        projector_args: Sequence[str] = (),
        wait: bool = True,
    ) -> System:
        """Start the gateway (on `gateway_port`, else a free one), then the command workers,
        then the projectors (on `metrics_port` counting up, else free ports), named `gateway`,
        `command-1`, ..., `projector-1`, ...; with `wait`, return once every one is ready."""
        gateway = processes.start(
            "gateway", name="gateway", port=gateway_port, host=host, wait=False
        )
        system = cls(
            processes,
            gateway,
            projector_args=tuple(projector_args),
            next_metrics_port=metrics_port,
        )
        for _ in range(command_workers):
            system.start_command_worker(wait=False)
        for _ in range(projectors):
            system.start_projector(wait=False)
        if wait:
            for proc in system.procs:
                proc.wait_ready()
        return system

    @property
    def procs(self) -> list[Proc]:
        """Every process started, in start order, replacements included."""
        return [self.gateway, *self.command_workers, *self.projectors]

    def _metrics_port(self) -> int | None:
        port = self.next_metrics_port
        if port is not None:
            self.next_metrics_port = port + 1
        return port

    def start_command_worker(self, *, wait: bool = True) -> Proc:
        return self._start_worker("command_worker", "command", self.command_workers, wait=wait)

    def start_projector(self, *, wait: bool = True) -> Proc:
        return self._start_worker(
            "projector_worker", "projector", self.projectors, *self.projector_args, wait=wait
        )

    def _start_worker(
        self, module: str, role: str, started: list[Proc], *args: str, wait: bool
    ) -> Proc:
        """One more worker of `module`, named `<role>-<n>`, added to `started`."""
        proc = self.processes.start(
            module, *args, name=f"{role}-{len(started) + 1}", port=self._metrics_port(), wait=wait
        )
        started.append(proc)
        return proc

    @staticmethod
    def alive(procs: Iterable[Proc]) -> list[Proc]:
        return [p for p in procs if p.running]

    def relay_leader(self) -> Proc:
        """The command worker whose relay took the leader lock last (from the logs)."""
        latest: tuple[str, Proc] | None = None
        for proc in self.alive(self.command_workers):
            for line in proc.log().splitlines():
                if '"relay leading"' not in line:
                    continue
                with contextlib.suppress(ValueError, AttributeError):
                    at = str(json.loads(line).get("time", ""))
                    if latest is None or at > latest[0]:
                        latest = (at, proc)
        return latest[1] if latest else self.alive(self.command_workers)[0]

    def on_node(self, node: str) -> list[Proc]:
        """The running processes whose latest RabbitMQ session is on `node` (`host:port`)."""
        return [p for p in self.alive(self.procs) if amqp_sessions(p)[-1:] == [node]]

    def exited(self) -> list[str]:
        """Processes that died without being asked to, with the end of their logs."""
        return [
            f"{p.module} exited with {p.exit_code}: {p.tail(500)}"
            for p in self.procs
            if not p.running and p.exit_code not in (0, -9)
        ]


def amqp_sessions(proc: Proc) -> list[str]:
    """The node (`host:port`) of each RabbitMQ session the process opened, in order, from the
    `rabbitmq connected` lines of its log."""
    nodes = []
    for line in proc.log().splitlines():
        if '"rabbitmq connected"' not in line:
            continue
        with contextlib.suppress(ValueError, AttributeError, KeyError):
            nodes.append(str(json.loads(line)["node"]))
    return nodes
