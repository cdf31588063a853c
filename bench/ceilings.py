"""`python -m bench --ceilings`: each serial part of the system alone over a backlog, in CPU.

The parts, on a slice of their own (vhost, database, key prefix), one process each:

1. **relay**: events seeded into a fresh store, the relay's checkpoint at 0; one command
   worker with nothing to consume, whose relay publishes them all (timed from its "relay
   leading" line to `events_relayed_total` reaching the count);
2. **projector**: the projection queues those messages filled (the relay's own `event-batch`
   messages), drained by one projector running every projection, until each projection's
   checkpoint is the store's head;
3. **command worker**: the bench's command mix pre-filled in the commands queue, drained by
   one command worker whose relay stands by, until every command has its outcome.

A process's start-up (imports, connections) is kept out of its figures: each one is held
at the door until it is ready. The relay waits for its leader lock, which the bench holds;
the projector, started on the empty store so that it finds nothing to catch up from the store,
is stopped (SIGSTOP) while its queues fill; the command worker's first append waits for the
advisory lock every append takes (shared), which the bench holds exclusively. The CPU of
each process and service is read from /proc when the part is let go and when it is done.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
from redis.asyncio import Redis

from bench import seed
from bench.backlog import command_backlog, fill_commands_queue, kinds
from bench.ceilings_figures import CeilingPlan, Window, figures, logged_at, metric_sum
from bench.plan import PhaseFailed
from bench.system import CpuSnapshot, cpu_snapshot, run_on_uvloop_value
from command_worker.relay import CHECKPOINT, RELAY_LOCK
from common.eventstore.schema import APPEND_LOCK
from common.messaging.topology import Topology
from common.readmodel.keys import Keys
from common.settings import Settings
from harness.isolation import Slice, settings_env
from harness.processes import Proc, Processes

POLL_S = 0.1
"""How often a part's progress is read: a scrape of its metrics, or a Redis GET per
projection. Cheap beside the work, and the error it leaves in a wall time."""


class Ceilings:
    """One run of the three parts on `isolation`, processes started through `procs`."""

    def __init__(
        self,
        plan: CeilingPlan,
        isolation: Slice,
        procs: Processes,
        settings: Settings,
        say: Callable[[str], None] = print,
    ) -> None:
        self.plan = plan
        self.iso = isolation
        self.procs = procs
        self.settings = settings
        self.say = say
        self.registry = seed.registry()
        self.topology = Topology(settings.app_prefix, tuple(self.registry.projections))
        self.metric_prefix = settings.app_prefix.replace("-", "_")
        self.results: dict[str, Any] = {}
        self.notes: list[str] = []

    async def run(self) -> dict[str, Any]:
        projector = self.procs.start("projector_worker", name="projector")
        projector_before = self.scrape(projector)
        projector.signal(signal.SIGSTOP)
        try:
            events, head = await self.seed()
            await self.relay_alone(events)
            await self.projector_alone(projector, events, head, projector_before)
        finally:
            projector.signal(signal.SIGCONT)
        projector.stop()
        await self.command_worker_alone()
        return self.results

    # --- the parts ----------------------------------------------------------------------------

    async def seed(self) -> tuple[int, int]:
        """Seed the plan's events; (how many the store holds, the last position)."""
        self.say(f"ceilings: seeding {self.plan.events:,} events")
        await seed.seed_events(self.iso.database_url, self.plan.events, 7, self.plan.customers)
        conn = await asyncpg.connect(self.iso.database_url)
        try:
            row = await conn.fetchrow("SELECT count(*) AS n, max(position) AS head FROM events")
            checkpoint = await conn.fetchval(
                "SELECT position FROM checkpoints WHERE name = $1", CHECKPOINT
            )
        finally:
            await conn.close()
        if checkpoint:
            raise PhaseFailed(f"the relay's checkpoint is {checkpoint}, not 0, in a fresh store")
        return int(row["n"]), int(row["head"])

    async def relay_alone(self, events: int) -> None:
        """One command worker's relay publishing `events` from position 0."""
        async with HeldLock(self.iso.database_url, RELAY_LOCK) as relay_lock:
            worker = self.procs.start("command_worker", name="relay-worker")
            self.say(f"relay: publishing {events:,} events")
            quiet, before = await self.quiet_baseline()
            await relay_lock.release()
            relayed = f"{self.metric_prefix}_events_relayed_total"
            await self.until(
                lambda: metric_sum(self.scrape(worker), relayed) >= events, "the relay", worker
            )
            after = cpu_snapshot(self.procs.procs)
        leading = logged_at(worker.log(), "relay leading")
        if leading is None:
            raise PhaseFailed(f"no 'relay leading' line:\n{worker.tail()}")
        wall = time.time() - (time.monotonic() - after.at) - leading.timestamp()
        self.results["relay"] = figures(Window(worker.name, events, wall, before, after, quiet))
        worker.stop()

    async def projector_alone(
        self, projector: Proc, events: int, head: int, metrics_before: str
    ) -> None:
        """The projector, stopped since it was ready, draining the queues the relay filled."""
        self.say(f"projector: applying the {events:,} events in each projection queue")
        keys = Keys(self.iso.prefix)
        redis = Redis.from_url(self.iso.redis_url)
        names = list(self.registry.projections)
        try:
            quiet, before = await self.quiet_baseline()
            projector.signal(signal.SIGCONT)

            async def at_head() -> bool:
                for name in names:
                    # A projection's keys carry its layout version (`order_views.v2`).
                    projection = keys.projection(self.registry.projections[name].keys_name())
                    live = await redis.get(projection.generation)
                    checkpoint = live and await redis.get(projection.views(int(live)).checkpoint)
                    if int(checkpoint or 0) < head:
                        return False
                return True

            await self.until_async(at_head, "the projector", projector)
            after = cpu_snapshot(self.procs.procs)
        finally:
            await redis.aclose()
        page = self.scrape(projector)
        projected = f"{self.metric_prefix}_events_projected_total"
        applied = metric_sum(page, projected) - metric_sum(metrics_before, projected)
        if metric_sum(page, f"{self.metric_prefix}_rabbitmq_reconnects_total"):
            self.notes.append(
                "projector: reconnected to RabbitMQ (stopped past the heartbeat timeout?):"
                " its figures include the reconnection"
            )
        wall = after.at - before.at
        part = figures(Window(projector.name, events, wall, before, after, quiet))
        part["projections"] = names
        part["applied_by_all_projections"] = int(applied)
        self.results["projector"] = part
        if applied != events * len(names):
            self.notes.append(
                f"projector: {applied:.0f} events applied, not {events} in each of {names}"
            )

    async def command_worker_alone(self) -> None:
        """One command worker draining a pre-filled commands queue; its relay stands by."""
        commands = command_backlog(self.plan.commands, 11, self.plan.customers)
        events_before = await self.event_count()
        self.say(f"command worker: filling the commands queue with {len(commands):,} commands")
        await fill_commands_queue(
            self.iso.amqp_url, self.topology, self.settings.retry_base_delay_ms, commands
        )
        async with (
            HeldLock(self.iso.database_url, RELAY_LOCK),
            HeldLock(self.iso.database_url, APPEND_LOCK) as appends,
        ):
            worker = self.procs.start("command_worker", name="command-worker")
            await self.until_async(appends.waited_for, "the first append", worker)
            self.say(f"command worker: deciding and appending {len(commands):,} commands")
            quiet, before = await self.quiet_baseline()
            started = time.monotonic()
            await appends.release()
            handled = f"{self.metric_prefix}_commands_total"
            outcomes = ("succeeded", "rejected", "failed")

            def done() -> bool:
                page = self.scrape(worker)
                return sum(metric_sum(page, handled, {"outcome": o}) for o in outcomes) >= len(
                    commands
                )

            await self.until(done, "the command worker", worker)
            after = cpu_snapshot(self.procs.procs)
            wall = time.monotonic() - started
        part = figures(Window(worker.name, len(commands), wall, before, after, quiet))
        part["kinds"] = kinds(commands)
        part["outcomes"] = await self.outcomes([c.command_id for c in commands])
        part["events_per_command"] = round(
            (await self.event_count() - events_before) / len(commands), 3
        )
        part["left_in_queue"] = await self.ready_messages(self.topology.commands_queue)
        self.results["command_worker"] = part
        if part["outcomes"] != {"succeeded": len(commands)}:
            self.notes.append(f"command worker: outcomes {part['outcomes']}, not all succeeded")
        worker.stop()

    # --- reading progress ---------------------------------------------------------------------

    async def quiet_baseline(self) -> tuple[CpuSnapshot, CpuSnapshot]:
        """Two snapshots the plan's `quiet_s` apart while the part waits at the door: what the
        services and the machine do without it (other tenants of a shared machine), then the
        snapshot the part's own figures start from."""
        first = cpu_snapshot(self.procs.procs)
        await asyncio.sleep(self.plan.quiet_s)
        return first, cpu_snapshot(self.procs.procs)

    @staticmethod
    def scrape(proc: Proc) -> str:
        with urllib.request.urlopen(f"{proc.base_url}/metrics", timeout=5) as response:
            return str(response.read().decode())

    async def until(self, condition: Callable[[], bool], what: str, proc: Proc) -> None:
        async def wrapped() -> bool:
            return condition()

        await self.until_async(wrapped, what, proc)

    async def until_async(self, condition: Callable[[], Any], what: str, proc: Proc) -> None:
        """Poll `condition` every `POLL_S` until it holds; `PhaseFailed` when `proc` dies or
        the plan's timeout passes."""
        deadline = time.monotonic() + self.plan.timeout_s
        while not await condition():
            if not proc.running:
                raise PhaseFailed(f"{proc.name} died (exit {proc.exit_code}):\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise PhaseFailed(f"{what} did not finish in {self.plan.timeout_s:g}s")
            await asyncio.sleep(POLL_S)

    async def ready_messages(self, queue: str) -> int:
        """Messages ready in `queue` (passive declare: delivered and unacked ones not counted)."""
        connection = await aio_pika.connect(self.iso.amqp_url)
        try:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.message_count or 0)
        finally:
            await connection.close()

    async def event_count(self) -> int:
        return int(await seed.event_count(self.iso.database_url))

    async def outcomes(self, command_ids: list[Any]) -> dict[str, int]:
        conn = await asyncpg.connect(self.iso.database_url)
        try:
            rows = await conn.fetch(
                "SELECT status, count(*) AS n FROM commands WHERE command_id = ANY($1::uuid[])"
                " GROUP BY status",
                command_ids,
            )
        finally:
            await conn.close()
        return {row["status"]: int(row["n"]) for row in rows}


class HeldLock:
    """A session advisory lock the bench holds (exclusively) until `release` or the exit."""

    def __init__(self, database_url: str, key: int) -> None:
        self.database_url = database_url
        self.key = key
        self.conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> HeldLock:
        self.conn = await asyncpg.connect(self.database_url)
        if not await self.conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key):
            await self.conn.close()
            raise PhaseFailed(f"advisory lock {self.key:#x} is taken")
        return self

    async def waited_for(self) -> bool:
        """Another session is waiting for this lock."""
        assert self.conn is not None
        return bool(
            await self.conn.fetchval(
                "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND classid = ($1::bigint >> 32)::oid AND objid = ($1::bigint & 4294967295)::oid",
                self.key,
            )
        )

    async def release(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


def measure(
    plan: CeilingPlan, isolation: Slice, log_dir: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """Run the three parts on `isolation` (created and destroyed here); the results file's
    content, notes included (a part that failed is named there and left out)."""
    settings = isolation.settings()
    procs = Processes(settings_env(settings), log_dir)
    # SIGTERM unwinds like Ctrl-C, so a stopped projector gets SIGCONT and the slice goes.
    previous = signal.signal(signal.SIGTERM, _interrupted)
    ceilings = Ceilings(plan, isolation, procs, settings, say)
    isolation.create()
    failed: str | None = None
    try:
        run_on_uvloop_value(ceilings.run())
    except (PhaseFailed, RuntimeError) as exc:
        failed = str(exc)
    finally:
        procs.stop_all()
        for problem in isolation.destroy():
            say(f"ceilings: clean-up: {problem}")
        signal.signal(signal.SIGTERM, previous)
    results: dict[str, Any] = {
        **ceilings.results,
        "plan": dataclasses.asdict(plan),
        "cores": len(os.sched_getaffinity(0)),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "notes": ceilings.notes,
        "processes": procs.summary(),
    }
    if failed:
        results["failed"] = failed.splitlines()[0]
    return results


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
