"""The peer comparison: this project and the naive pipeline of `bench/peer/` under one load.

The end-to-end phase sends a mix of creates and follow-ups, and the peer only creates; so both
get a closed loop of creates alone, one after the other, with the same bodies (`bench/mix.py`),
clients and duration as the end-to-end phase, followed to visibility by the same subscriber
code. The peer runs on the run's slice under names of its own (`peer.*` queues and exchange, a
`peer_events` table, keys and channel under `{prefix}peer:`), and is stopped afterwards.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from bench.peer.contracts import PeerKeys
from bench.stats import with_rate
from harness.processes import Listen, Proc

if TYPE_CHECKING:
    from bench.phases import Bench

OURS = "e2e_creates"
"""Raw results of this project's creates-only loop."""
PEER = "peer_creates"
"""Raw results of the peer's."""
PEER_PROCESS = "peer-"
"""The start of the peer's process names, as `cpu_shares` reports them."""
CREATES_ONLY = {"create": 1.0, "add": 0.0, "ship": 0.0, "cancel": 0.0}
ROLES = ("projector", "worker", "gateway")
"""Start order: each consumer declares its queue before anything publishes to it."""


def creates_loop(bench: Bench, name: str, port: int, channel: str) -> dict[str, Any]:
    config = bench.command_config(port)
    config.update(mix=CREATES_ONLY, channel=channel)
    bench.say(
        f"{name}: closed loop of creates, {bench.plan.clients} clients, {bench.plan.duration_s:g}s"
    )
    result = with_rate(bench.generate(name, config))
    bench.raw[name] = result
    return result


def start_peer(bench: Bench) -> list[Proc]:
    return [
        bench.procs.start(
            f"bench.peer.{role}", name=f"{PEER_PROCESS}{role}", listen=Listen.HTTP, role="peer"
        )
        for role in ROLES
    ]


def run_comparison(bench: Bench) -> None:
    """Creates alone through this project, then through the peer."""
    assert bench.gateway is not None
    assert bench.gateway.port is not None
    if importlib.util.find_spec("faststream") is None:
        bench.notes.append("peer skipped: FastStream is not installed (the bench extra)")
        return
    creates_loop(bench, OURS, bench.gateway.port, bench.keys.command_outcomes_channel)
    bench.settle(OURS)
    bench.say("peer: starting its projector, worker and gateway")
    peer = start_peer(bench)
    try:
        gateway = peer[-1]
        assert gateway.port is not None
        creates_loop(bench, PEER, gateway.port, PeerKeys(bench.iso.prefix).visible_channel)
        died = [proc for proc in peer if not proc.running]
        if died:
            bench.notes.append(
                "peer: " + ", ".join(f"{p.name} died (exit {p.exit_code})" for p in died)
            )
    finally:
        for proc in reversed(peer):
            proc.stop(grace=10)
