"""The peer comparison: this project and the naive pipeline of `bench/peer/` under one load.

The end-to-end phase sends a mix of creates and follow-ups, and the peer only creates; so both
get a closed loop of creates alone, with the same bodies (`bench/mix.py`), clients and duration
as the end-to-end phase, followed to visibility by the same subscriber code. The two take turns
(two rounds each, one in a quick run) while both are running, each idle during the other's
round, and each side's best round counts, as for the floors: other work on a shared machine can
only slow a round down. The peer runs on the run's slice under names of its own (`peer.*`
queues and exchange, a `peer_events` table, keys and channel under `{prefix}peer:`), and is
stopped afterwards.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from bench.peer.contracts import PeerKeys
from bench.plan import PhaseFailed
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
FULL_ROUNDS = 2
"""Turns each side takes in a full run; a quick run takes one."""


def creates_loop(bench: Bench, name: str, round_no: int, port: int, channel: str) -> dict[str, Any]:
    config = bench.command_config(port)
    config.update(mix=CREATES_ONLY, channel=channel)
    bench.say(
        f"{name}: closed loop of creates, {bench.plan.clients} clients, "
        f"{bench.plan.duration_s:g}s, round {round_no}"
    )
    return with_rate(bench.generate(f"{name}-{round_no}", config))


def best_visible_round(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the highest visible rate, every round's rate beside it, and the commands
    that never became visible summed over all rounds (each one is a bug, whichever round)."""
    chosen = dict(max(results, key=lambda r: r["visible_rate"]))
    chosen["round_rates"] = [round(r["visible_rate"], 1) for r in results]
    chosen["unsettled"] = sum(int(r.get("unsettled") or 0) for r in results)
    return chosen


def start_peer(bench: Bench) -> list[Proc]:
    return [
        bench.procs.start(
            f"bench.peer.{role}", name=f"{PEER_PROCESS}{role}", listen=Listen.HTTP, role="peer"
        )
        for role in ROLES
    ]


def run_comparison(bench: Bench) -> None:
    """Creates alone through this project and through the peer, taking turns."""
    assert bench.gateway is not None
    assert bench.gateway.port is not None
    if importlib.util.find_spec("faststream") is None:
        bench.notes.append("peer skipped: FastStream is not installed (the bench extra)")
        return
    bench.say("peer: starting its projector, worker and gateway")
    peer = start_peer(bench)
    peer_port = peer[-1].port
    assert peer_port is not None
    sides = (
        (OURS, bench.gateway.port, bench.keys.command_outcomes_channel),
        (PEER, peer_port, PeerKeys(bench.iso.prefix).visible_channel),
    )
    rounds: dict[str, list[dict[str, Any]]] = {OURS: [], PEER: []}
    try:
        for round_no in range(1, (1 if bench.plan.quick else FULL_ROUNDS) + 1):
            for name, port, channel in sides:
                rounds[name].append(creates_loop(bench, name, round_no, port, channel))
                bench.raw[name] = best_visible_round(rounds[name])
                if name == OURS:
                    bench.settle(OURS)
                died = [proc for proc in peer if not proc.running]
                if died:
                    raise PhaseFailed(
                        "; ".join(f"{p.name} died (exit {p.exit_code}):\n{p.tail()}" for p in died)
                    )
    finally:
        for proc in reversed(peer):
            proc.stop(grace=10)
