"""The cluster drills: the node leading the commands queue is lost under load.

The scenario runs on a three-node cluster of its own (`harness.rabbit_cluster`), every process
given all three nodes in `AMQP_URL`. Once a third of the load is accepted, the node that leads
`<app>.commands` is stopped (`rabbitmqctl stop`) or its VM killed (kill -9). Quorum queues
keep a majority (two of three) and elect a new leader; the processes that were connected to
that node must carry on through another, and every invariant of the other drills must hold.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from common.messaging.topology import Topology
from harness.processes import Proc
from harness.system import amqp_sessions

if TYPE_CHECKING:
    from tests.chaos.scenarios import Drill

MOVE_S = 60.0
"""How long the processes of the lost node may take to open a session on another one."""


def lose_commands_leader(kill: bool) -> Callable[[Drill], Awaitable[None]]:
    """Stop (or kill -9) the node leading the commands queue; a follow-up checks that every
    process that was on it opens a session on another node."""

    async def inject(drill: Drill) -> None:
        cluster = drill.cluster
        assert cluster is not None, "a cluster scenario runs on a cluster"
        queue = Topology(drill.settings.app_prefix).commands_queue
        leader = await asyncio.to_thread(cluster.leader_of, drill.vhost, queue)
        moving = drill.system.on_node(leader.label)
        drill.say(
            f"    {'kill -9' if kill else 'rabbitmqctl stop'} {leader.name} (leads {queue});"
            f" on it: {', '.join(p.name for p in moving) or 'no process'}"
        )
        if not moving:
            drill.notes.append(f"no process was connected to {leader.name}: nothing to move")
        drill.fault_started = time.monotonic()
        if kill:
            leader.kill()
        else:
            await asyncio.to_thread(cluster.stop, leader)
        drill.follow_ups.append(
            asyncio.create_task(_moved(drill, leader.label, moving), name="moved")
        )

    return inject


async def _moved(drill: Drill, lost: str, procs: list[Proc]) -> None:
    """Wait until each process that was on `lost` has its latest session on another node."""
    deadline = time.monotonic() + MOVE_S
    while True:
        stuck = [p for p in procs if p.running and amqp_sessions(p)[-1:] == [lost]]
        if not stuck:
            break
        if time.monotonic() > deadline:
            drill.notes.append(
                f"still on the lost node after {MOVE_S:g}s: {', '.join(p.name for p in stuck)}"
            )
            return
        await asyncio.sleep(0.2)
    moves = [f"{p.name} -> {amqp_sessions(p)[-1]}" for p in procs if p.running]
    drill.say(f"    moved in {time.monotonic() - drill.fault_started:.1f}s: {', '.join(moves)}")
