"""The faults, one scenario at a time, each injected into a system under load.

A scenario runs like this: start a gateway, two command workers and two projectors on a vhost,
database and key prefix of their own; start the load; once a third of it is accepted, inject
the fault; probe until a new order is visible again (the time to recover); let the load finish;
wait until the system is quiet; then check every invariant (`tests/support/invariants.py`).
A scenario `when_idle` injects after the load instead, and measures recovery by reads alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg
import httpx

from common.messaging.nodes import vhost_of
from common.readmodel import reading
from common.readmodel.connection import connect_redis
from common.settings import Settings
from harness.isolation import Endpoints, new_run_id
from harness.load import LoadDriver, LoadShape, time_to_read, time_to_recover
from harness.processes import Proc, Processes
from harness.rabbit_cluster import RabbitCluster
from harness.redis_sentinel import SentinelGroup
from harness.system import System
from tests.chaos import services as shared
from tests.chaos.cluster import lose_commands_leader
from tests.chaos.freezing import Process, frozen
from tests.chaos.report import Row
from tests.chaos.system import wait_for_quiet
from tests.support.invariants import Verdict, judge

Say = Callable[[str], None]

FREEZE_S = 20.0
"""How long a freeze scenario keeps its service stopped: well past the retry budget (about
7.5 s with the defaults), so retries alone cannot ride it out."""

SHORT_TIMEOUTS = {"REDIS_TIMEOUT_S": "5", "DB_STATEMENT_TIMEOUT_S": "5"}
"""Worker timeouts well inside a freeze, so calls fail during it and the workers must pause
(with the 30 s defaults a 20 s freeze is merely waited out)."""
PAUSED = "does not answer: pausing"
"""What a worker logs when it pauses its consumers for an outage."""


@dataclass
class Drill:
    """What an injection works on, and where it notes what it saw go wrong."""

    services: Endpoints
    settings: Settings
    system: System
    say: Say
    notes: list[str] = field(default_factory=list)
    follow_ups: list[asyncio.Task[None]] = field(default_factory=list)
    """What goes on after the fault itself (a successor starting), concurrently with probing."""
    fault_started: float = field(default_factory=time.monotonic)
    """When the fault began; an injection that has to get ready first moves it."""
    freeze_s: float = FREEZE_S
    """How long a freeze lasts."""
    sentinels: SentinelGroup | None = None
    """The system's own Redis primary, replicas and Sentinels, for a scenario that has them."""
    cluster: RabbitCluster | None = None
    """The RabbitMQ cluster the system runs on, for a cluster scenario."""

    @property
    def vhost(self) -> str:
        return vhost_of(self.settings.amqp_url)


Inject = Callable[[Drill], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    inject: Inject | None
    restarts: str | None = None
    """The shared service it restarts or freezes: it then needs the machine to itself."""
    when_idle: bool = False
    """Inject once the load is over and the system quiet; recovery is then measured by reads
    alone (no new command may be what brings the system back)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Settings of the system's processes that differ from the production defaults."""
    expect_logged: str | None = None
    """A line some worker must have logged, or the fault did not do what it is there to do."""
    sentinels: bool = False
    """Run the system on a Redis primary, two replicas and three Sentinels of its own
    (`harness/redis_sentinel.py`), reading views from the replicas, instead of the shared
    Redis."""
    cluster: bool = False
    """Runs on a three-node RabbitMQ cluster of its own, started and removed by the drill."""


# --- the injections -----------------------------------------------------------------------------


def _replace(drill: Drill, start: Callable[[], Proc]) -> None:
    """Start a successor a second later, as a supervisor would, while probing goes on."""

    async def successor() -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(start)

    drill.follow_ups.append(asyncio.create_task(successor(), name="successor"))


async def kill_command_worker(drill: Drill) -> None:
    victim = drill.system.relay_leader()
    drill.say(f"    kill -9 command worker {victim.pid} (the relay leader)")
    victim.kill()
    _replace(drill, drill.system.start_command_worker)


async def kill_projector(drill: Drill) -> None:
    victim = drill.system.alive(drill.system.projectors)[0]
    drill.say(f"    kill -9 projector {victim.pid}")
    victim.kill()
    _replace(drill, drill.system.start_projector)


async def _sigterm(drill: Drill, victim: Proc, goodbye: str, start: Callable[[], Proc]) -> None:
    drill.say(f"    SIGTERM {victim.module} {victim.pid}")
    code = await asyncio.to_thread(victim.terminate, 60)
    if code != 0:
        drill.notes.append(f"{victim.module} exited with {code} after SIGTERM")
    elif goodbye not in victim.log():
        drill.notes.append(f"{victim.module} did not log {goodbye} after SIGTERM")
    _replace(drill, start)


async def sigterm_command_worker(drill: Drill) -> None:
    await _sigterm(
        drill,
        drill.system.relay_leader(),
        "command worker stopped",
        drill.system.start_command_worker,
    )


async def sigterm_projector(drill: Drill) -> None:
    victim = drill.system.alive(drill.system.projectors)[0]
    await _sigterm(drill, victim, '"stopped"', drill.system.start_projector)


async def close_amqp_connections(drill: Drill) -> None:
    await asyncio.to_thread(shared.wait_until_listed, drill.services, drill.vhost)
    drill.fault_started = time.monotonic()
    closed = await asyncio.to_thread(shared.close_connections, drill.services, drill.vhost)
    drill.say(f"    closed {closed} AMQP connections from the management API")
    if closed == 0:
        drill.notes.append("no AMQP connection to close")


async def restart_rabbitmq(drill: Drill) -> None:
    drill.say("    rabbitmqctl stop_app; rabbitmqctl start_app")
    await asyncio.to_thread(shared.restart_rabbitmq, drill.services)


async def restart_postgres(drill: Drill) -> None:
    drill.say("    PostgreSQL stopped for 2 s, then started")
    await asyncio.to_thread(shared.restart_postgres, drill.services)


async def restart_redis(drill: Drill) -> None:
    drill.say("    Redis shut down without saving for 2 s, then started empty")
    await asyncio.to_thread(shared.restart_redis, drill.services)


HELD_S = 1.0
"""How long the replica to be promoted misses the primary's writes before the primary dies."""


async def fail_over_redis(drill: Drill) -> None:
    group = drill.sentinels
    assert group is not None
    held = group.hold_replication(scripts=(reading.VIEW, reading.VIEW_VERSION, reading.HISTORY))
    drill.say(f"    {held.role} stops applying the primary's writes for {HELD_S:g} s")
    await asyncio.sleep(HELD_S)
    drill.fault_started = time.monotonic()
    failover = await asyncio.to_thread(group.kill_primary)
    drill.say(
        f"    primary SIGKILLed; the Sentinels promoted {failover.promoted.role} in"
        f" {failover.seconds:.1f} s"
    )
    if failover.promoted is not held:
        drill.notes.append(f"{failover.promoted.role} was promoted, not {held.role}")


@dataclass(frozen=True)
class FrozenService:
    """What a freeze needs to know of one shared service."""

    name: str
    pid: Callable[[Endpoints], int]
    """Its main process, which is stopped with every descendant."""
    ensure: Callable[[Endpoints], None]
    """Makes sure it answers again (starting it if need be)."""
    spare: Callable[[Process], bool] = lambda _: False
    """Descendants left running."""


def freeze(service: FrozenService) -> Inject:
    """SIGSTOP every process of `service` for `Drill.freeze_s`, then SIGCONT; the load goes on
    meanwhile. The processes are continued and the service checked however the freeze ends
    (Ctrl-C and SIGTERM included); after a freeze that ran its course, the check goes on while
    probing starts, so the time to recover is the system's, not the check's."""

    async def inject(drill: Drill) -> None:
        root = await asyncio.to_thread(service.pid, drill.services)
        try:
            with frozen(root, drill.freeze_s, service.spare) as stopped:
                drill.fault_started = time.monotonic()
                names = sorted({p.name for p in stopped})
                drill.say(
                    f"    SIGSTOP {len(stopped)} {service.name} processes ({', '.join(names)})"
                    f" for {drill.freeze_s:g} s"
                )
                await asyncio.sleep(drill.freeze_s)
        except BaseException:
            await asyncio.to_thread(service.ensure, drill.services)
            raise
        drill.say(f"    SIGCONT {service.name}")
        drill.follow_ups.append(
            asyncio.create_task(
                asyncio.to_thread(service.ensure, drill.services), name=f"{service.name} answers"
            )
        )

    return inject


CLUSTER = "the machine (three more RabbitMQ nodes)"
"""What a cluster scenario disturbs: nothing shared, but two cores' worth of CPU."""

POSTGRES = FrozenService("PostgreSQL", shared.postmaster_pid, shared.ensure_postgres)
REDIS = FrozenService("Redis", shared.redis_pid, shared.ensure_redis)
RABBITMQ = FrozenService(
    "RabbitMQ",
    shared.rabbitmq_pid,
    shared.ensure_rabbitmq,
    # The port mapper serves every Erlang node of the machine, and the CLI tools with them.
    spare=lambda p: p.name == "epmd",
)


SCENARIOS = (
    Scenario("baseline", "no fault: the load alone, for comparison", None),
    Scenario(
        "kill-9-command-worker",
        "SIGKILL the command worker whose relay leads; a successor starts a second later",
        kill_command_worker,
    ),
    Scenario(
        "kill-9-projector",
        "SIGKILL a projector; a successor starts a second later",
        kill_projector,
    ),
    Scenario(
        "sigterm-command-worker",
        "SIGTERM the relay leader (it must drain and exit 0); a successor starts",
        sigterm_command_worker,
    ),
    Scenario(
        "sigterm-projector",
        "SIGTERM a projector (it must drain and exit 0); a successor starts",
        sigterm_projector,
    ),
    Scenario(
        "amqp-connections-closed",
        "close every AMQP connection of the system from the management API",
        close_amqp_connections,
    ),
    Scenario(
        "rabbitmq-restart",
        "stop and start the RabbitMQ application (every connection drops)",
        restart_rabbitmq,
        restarts="RabbitMQ",
    ),
    Scenario(
        "postgres-restart",
        "stop PostgreSQL for 2 s, then start it (every session ends)",
        restart_postgres,
        restarts="PostgreSQL",
    ),
    Scenario(
        "redis-restart",
        "shut Redis down without saving for 2 s and start it empty: views must come back",
        restart_redis,
        restarts="Redis",
    ),
    Scenario(
        "redis-restart-idle",
        "the same once the load is over: views must come back with no new event to apply",
        restart_redis,
        restarts="Redis",
        when_idle=True,
    ),
    Scenario(
        "postgres-freeze",
        f"SIGSTOP the postmaster and every backend for --freeze-seconds ({FREEZE_S:g}), then"
        " SIGCONT: statements time out, the workers must pause; nothing may be dead-lettered",
        freeze(POSTGRES),
        restarts="PostgreSQL",
        env=SHORT_TIMEOUTS,
        expect_logged=PAUSED,
    ),
    Scenario(
        "redis-freeze",
        f"SIGSTOP redis-server for --freeze-seconds ({FREEZE_S:g}), then SIGCONT: calls time"
        " out, the workers must pause; nothing may be dead-lettered",
        freeze(REDIS),
        restarts="Redis",
        env=SHORT_TIMEOUTS,
        expect_logged=PAUSED,
    ),
    Scenario(
        "rabbitmq-freeze",
        f"SIGSTOP the broker's Erlang VM and its helpers for --freeze-seconds ({FREEZE_S:g}),"
        " then SIGCONT: publishes go unconfirmed, deliveries stop; nothing may be dead-lettered",
        freeze(RABBITMQ),
        restarts="RabbitMQ",
    ),
    Scenario(
        "redis-failover",
        f"on a primary, two replicas and three Sentinels (reads from the replicas): the replica"
        f" to be promoted misses {HELD_S:g} s of writes, then the primary is SIGKILLed; the views"
        " must catch up what the promoted replica lacks",
        fail_over_redis,
        sentinels=True,
        expect_logged="after Redis lost writes",
    ),
    Scenario(
        "rabbit-node-stop",
        "on a three-node cluster, stop the node leading the commands queue (rabbitmqctl stop);"
        " its processes must carry on through another node",
        lose_commands_leader(kill=False),
        restarts=CLUSTER,
        cluster=True,
    ),
    Scenario(
        "rabbit-node-kill-9",
        "on a three-node cluster, kill -9 the VM of the node leading the commands queue; its"
        " processes must carry on through another node",
        lose_commands_leader(kill=True),
        restarts=CLUSTER,
        cluster=True,
    ),
)
BY_NAME = {s.name: s for s in SCENARIOS}


# --- running one --------------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    """One scenario's row, with the verdict behind it."""

    row: Row
    verdict: Verdict


async def run_scenario(
    scenario: Scenario,
    settings: Settings,
    processes: Processes,
    services: Endpoints,
    shape: LoadShape,
    *,
    say: Say = print,
    command_workers: int = 2,
    projectors: int = 2,
    quiet_timeout_s: float = 180.0,
    freeze_s: float = FREEZE_S,
    sentinels: SentinelGroup | None = None,
    cluster: RabbitCluster | None = None,
) -> ScenarioResult:
    system = await asyncio.to_thread(
        System.start, processes, command_workers=command_workers, projectors=projectors
    )
    drill = Drill(
        services, settings, system, say, freeze_s=freeze_s, sentinels=sentinels, cluster=cluster
    )
    run = new_run_id()
    async with httpx.AsyncClient(base_url=system.gateway.base_url, timeout=30) as client:
        driver = LoadDriver(client, shape)
        load = asyncio.create_task(driver.run(run), name="load")
        try:
            if scenario.when_idle:
                await load
                await wait_for_quiet(settings, list(driver.accepted), quiet_timeout_s)
            else:
                await driver.until_accepted(shape.commands // 3)
            say(f"  {scenario.name}: fault after {len(driver.accepted)} commands accepted")
            drill.fault_started = time.monotonic()
            if scenario.inject is not None:
                await scenario.inject(drill)
            if scenario.when_idle:
                recovery_s = await time_to_read(driver, drill.fault_started)
            else:
                recovery_s = await time_to_recover(driver, drill.fault_started, run)
            await asyncio.gather(*drill.follow_ups)
            await load
        finally:
            for task in (load, *drill.follow_ups):
                if not task.done():
                    task.cancel()
            await asyncio.gather(load, *drill.follow_ups, return_exceptions=True)
    accepted = list(driver.accepted)
    answers = ", ".join(f"{n} {what}" for what, n in sorted(driver.answers.items()))
    say(f"  {scenario.name}: load done ({len(accepted)} accepted; {answers}); waiting for quiet")
    quiet_s, still = await wait_for_quiet(settings, accepted, quiet_timeout_s)
    verdict = await _judge(settings, accepted)
    row = Row.of(scenario.name, verdict, recovery_s, quiet_s)
    if still:
        row.problems.append(f"not quiet after {quiet_s:.0f}s: {still}")
    row.problems += drill.notes
    row.problems += system.exited()
    workers = [*system.command_workers, *system.projectors]
    if scenario.expect_logged and not any(scenario.expect_logged in w.log() for w in workers):
        row.problems.append(f"no worker logged {scenario.expect_logged!r}")
    if driver.refused:
        request, status, text = driver.refused[0]
        row.problems.append(
            f"{len(driver.refused)} commands refused, e.g. {request.kind} {status} {text}"
        )
    if driver.given_up:
        row.problems.append(f"{len(driver.given_up)} commands never accepted")
    return ScenarioResult(row, verdict)


async def _judge(settings: Settings, accepted: list[UUID]) -> Verdict:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
    redis = connect_redis(settings.redis_url)
    try:
        return await judge(settings, pool, redis, accepted)
    finally:
        await redis.aclose()
        await pool.close()
