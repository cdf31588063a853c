"""The benchmark's phases, run in order by `Bench.run`.

Floors are measured by the same generator with the same concurrency as what they are compared
with, in the same run. Floors and queries are measured in rounds (the floor before and after
the end-to-end phases, query floor and queries taking turns) and the best round of each
counts: other work on a shared machine can only slow a round down.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import seed
from bench.mix import create_requests
from bench.peer_phase import run_comparison as run_peer_comparison
from bench.stats import (
    best_round,
    memory_by_kind,
    merge_results,
    rate,
    split_at_append,
    with_rate,
)
from bench.system import OUT, cpu_shares, cpu_snapshot
from common.process import run as run_on_uvloop
from common.readmodel.keys import Keys
from harness.isolation import Slice, settings_env
from harness.processes import Listen, Proc, Processes
from harness.system import System


@dataclass(frozen=True)
class Plan:
    """How long and how hard each phase runs."""

    quick: bool
    clients: int
    duration_s: float
    warmup_s: float
    floor_s: float
    latency_s: float
    query_s: float
    query_rounds: int
    floor_rounds: int
    rebuild_events: int
    drain_timeout_s: float
    latency_rate: float | None = None
    """The open loop's rate; None: half the measured e2e rate (the target's definition)."""
    open_connections: int = 64
    customers: int = 500
    generator_check: bool = True
    rerun_one_worker: bool = True
    """Measure one worker pair at the scaling rate next to two; False: the latency phase,
    at the same rate earlier in the run, stands for it."""
    log_level: str = "INFO"
    projections: tuple[str, ...] = ()
    """The projections the projectors run (`--projections`); empty: every registered one."""
    traces: bool = False
    """Tracing on in the measured processes (`--traces`), every span written to a file: what
    tracing costs, against a run without."""
    peer: bool = True
    """Creates alone through this project and through the naive peer (`bench/peer/`)."""

    @classmethod
    def full(cls) -> Plan:
        return cls(
            quick=False,
            clients=32,
            duration_s=20,
            warmup_s=3,
            floor_s=12,
            latency_s=20,
            query_s=5,
            query_rounds=3,
            floor_rounds=2,
            rebuild_events=50_000,
            drain_timeout_s=180,
        )

    @classmethod
    def smoke(cls) -> Plan:
        return cls(
            quick=True,
            clients=16,
            duration_s=4,
            warmup_s=1,
            floor_s=3,
            latency_s=3,
            query_s=1.5,
            query_rounds=1,
            floor_rounds=1,
            rebuild_events=3_000,
            drain_timeout_s=15,
            generator_check=False,
            rerun_one_worker=False,
        )


class PhaseFailed(Exception):
    """A phase could not run (a process died, a generator hung)."""


class Bench:
    """One benchmark run: isolated services, the processes, the phases, the raw results."""

    def __init__(self, plan: Plan, isolation: Slice, say: Callable[[str], None] = print) -> None:
        self.plan = plan
        self.iso = isolation
        self.say = say
        self.log_dir = OUT / isolation.run_id
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = settings_env(isolation.settings(), plan.log_level)
        if plan.traces:
            env["TRACES_FILE"] = str(self.log_dir / "spans.jsonl")
        self.procs = Processes(env, self.log_dir)
        self.keys = Keys(isolation.prefix)
        self.raw: dict[str, Any] = {"cores": len(os.sched_getaffinity(0))}
        self.notes: list[str] = []
        if plan.projections:
            self.notes.append(f"the projectors ran only {', '.join(plan.projections)}")
        if plan.traces:
            self.notes.append("tracing was on: every span of every command written to a file")
        self.floor: Proc | None = None
        self.system: System | None = None
        self.gateway: Proc | None = None
        self._generators = 0
        self._floor_rounds: dict[str, list[dict[str, Any]]] = {
            "floor_publish": [],
            "floor_publish_2gen": [],
        }

    # --- processes ----------------------------------------------------------------------------

    def start_floor(self) -> Proc:
        return self.procs.start(
            "bench.floor_app", name="floor-app", listen=Listen.HTTP, role="bench"
        )

    def start_system(self) -> Proc:
        subset = self.plan.projections
        chosen = ["--projections", ",".join(subset)] if subset else []
        self.system = System.start(self.procs, projector_args=chosen)
        return self.system.gateway

    def check_alive(self) -> None:
        for proc in self.procs.procs:
            if proc.role == "system" and not proc.running and proc.name != "rebuild":
                raise PhaseFailed(f"{proc.name} died (exit {proc.exit_code}):\n{proc.tail()}")

    # --- generators ---------------------------------------------------------------------------

    def generate(self, name: str, config: dict[str, Any], processes: int = 1) -> dict[str, Any]:
        """Run `processes` generators with `config` split between them; merged result, with
        the CPU share of every process during the load."""
        gens: list[tuple[Proc, Path]] = []
        for i in range(processes):
            self._generators += 1
            part = dict(config)
            part["seed"] = self._generators
            if "connections" in part:
                part["connections"] = max(config["connections"] // processes, 1)
            if "rate" in part:
                part["rate"] = config["rate"] / processes
            result_path = self.log_dir / f"{name}-{i}.result.json"
            part["result_path"] = str(result_path)
            config_path = self.log_dir / f"{name}-{i}.config.json"
            config_path.write_bytes(orjson.dumps(part))
            proc = self.procs.start(
                "bench.load",
                str(config_path),
                name=f"gen-{name}-{i}",
                listen=Listen.NONE,
                role="bench",
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            gens.append((proc, result_path))
        try:
            for proc, _ in gens:
                self._expect(proc, "ready", 30)
            before = cpu_snapshot(self.procs.procs)
            for proc, _ in gens:
                assert proc.popen.stdin is not None
                proc.popen.stdin.write(b"go\n")
                proc.popen.stdin.flush()
            for proc, _ in gens:
                self._expect(proc, "loaded", config["duration_s"] + 30)
            after = cpu_snapshot(self.procs.procs)
            limit = config.get("drain_timeout_s", 0) + 30
            for proc, _ in gens:
                if not proc.wait(limit):
                    raise PhaseFailed(f"{proc.name} did not finish:\n{proc.tail()}")
                if proc.exit_code != 0:
                    raise PhaseFailed(f"{proc.name} failed:\n{proc.tail()}")
        finally:
            for proc, _ in gens:
                proc.stop(grace=2)
        parts = [orjson.loads(path.read_bytes()) for _, path in gens]
        merged = merge_results(parts)
        merged["cpu_shares"] = cpu_shares(before, after)
        self.check_alive()
        return merged

    @staticmethod
    def _expect(proc: Proc, word: str, timeout: float) -> None:
        stream = proc.popen.stdout
        assert stream is not None
        ready, _, _ = select.select([stream], [], [], timeout)
        line = stream.readline().decode().strip() if ready else ""
        if line != word:
            raise PhaseFailed(f"{proc.name}: expected {word!r}, got {line!r}:\n{proc.tail()}")

    def closed(self, port: int, source: str, requests: list[str] | None = None) -> dict[str, Any]:
        config: dict[str, Any] = {
            "mode": "closed",
            "source": source,
            "host": "127.0.0.1",
            "port": port,
            "connections": self.plan.clients,
        }
        if requests is not None:
            config["requests"] = requests
        return config

    def command_config(self, port: int, mode: str = "closed") -> dict[str, Any]:
        config = self.closed(port, "commands")
        config.update(
            mode=mode,
            redis_host=self.iso.endpoints.redis_host,
            redis_port=self.iso.endpoints.redis_port,
            channel=self.keys.command_outcomes_channel,
            customers=self.plan.customers,
            drain_timeout_s=self.plan.drain_timeout_s,
            duration_s=self.plan.duration_s,
            warmup_s=self.plan.warmup_s,
        )
        return config

    # --- phases -------------------------------------------------------------------------------

    def phase_floor_publish(self) -> None:
        """One round of the publish floor (and of the two-generator check); the best round
        of the run is the floor."""
        assert self.floor is not None
        assert self.floor.port is not None
        creates = [r.decode("latin-1") for r, _ in create_requests(0, self.plan.customers)]
        config = self.closed(self.floor.port, "cycle", creates)
        config.update(duration_s=self.plan.floor_s, warmup_s=min(self.plan.warmup_s, 2))
        round_no = len(self._floor_rounds["floor_publish"]) + 1
        self.say(f"floor: publish with confirm, {self.plan.clients} clients, round {round_no}")
        runs = [("floor_publish", 1)]
        if self.plan.generator_check:
            runs.append(("floor_publish_2gen", 2))
        for name, processes in runs:
            result = self.generate(f"{name}-{round_no}", config, processes=processes)
            self._floor_rounds[name].append(with_rate(result))
            self.raw[name] = best_round(self._floor_rounds[name])

    def phase_e2e(self, name: str = "e2e") -> dict[str, Any]:
        assert self.gateway is not None
        assert self.gateway.port is not None
        self.say(f"{name}: closed loop, {self.plan.clients} clients, {self.plan.duration_s:g}s")
        result = with_rate(self.generate(name, self.command_config(self.gateway.port)))
        self.raw[name] = result
        self.settle(name)
        return result

    def open_loop(
        self, name: str, rate: float, duration_s: float, warmup_s: float, **extra: Any
    ) -> dict[str, Any]:
        """The command mix sent at a fixed `rate`, whatever the answers do."""
        assert self.gateway is not None
        assert self.gateway.port is not None
        config = self.command_config(self.gateway.port, mode="open")
        config.update(
            rate=rate,
            connections=self.plan.open_connections,
            duration_s=duration_s,
            warmup_s=warmup_s,
            **extra,
        )
        return with_rate(self.generate(name, config))

    def phase_latency(self, max_rate: float) -> float:
        """The open loop at half `max_rate` (or the plan's rate), timing every command; the
        rate it ran at."""
        half = self.plan.latency_rate or max(max_rate / 2, 1.0)
        if self.plan.latency_rate:
            self.notes.append(f"latency: at the given {half:g} commands/s, not half the e2e rate")
        self.say(f"latency: open loop at {half:.0f} commands/s for {self.plan.latency_s:g}s")
        result = self.open_loop("latency", half, self.plan.latency_s, 0, keep_samples=True)
        appended = run_on_uvloop_value(
            seed.append_times(self.iso.database_url, result["started_epoch"] - 1)
        )
        result["samples"], result["appended_ms"], result["appended_to_visible_ms"] = (
            split_at_append(result.get("samples", []), result["started_epoch"], appended)
        )
        self.raw["latency"] = result
        self.settle("latency")
        return half

    def phase_redis_memory(self) -> None:
        """What the read side keeps in Redis per order once the mixed load has settled: every
        key of the run (views, indexes, command statuses), before the query phase copies views
        to the floor's keys, over the orders created."""
        iso = self.iso
        self.say("redis memory: MEMORY USAGE of every key of the run")
        orders = run_on_uvloop_value(seed.orders_created(iso.database_url))
        usage = run_on_uvloop_value(seed.key_memory(iso.redis_url, iso.prefix))
        self.raw["redis_memory"] = {
            "orders_created": orders,
            "keys": len(usage),
            "bytes": sum(size for _, size in usage),
            "by_kind": memory_by_kind(usage, iso.prefix),
        }

    def phase_queries(self) -> None:
        assert self.floor is not None
        assert self.floor.port is not None
        assert self.gateway is not None
        assert self.gateway.port is not None
        orders = self.raw.get("e2e", {}).get("orders", [])[:2000]
        copied = run_on_uvloop_value(
            seed.copy_views_to_floor(self.iso.redis_url, self.iso.prefix, orders)
        )
        if not copied:
            self.notes.append("queries skipped: no visible orders to read")
            return
        order_paths = [f"GET /orders/{o} HTTP/1.1\r\nHost: bench\r\n\r\n" for o in copied]
        customer_paths = [
            f"GET /customers/cust-{c}/orders HTTP/1.1\r\nHost: bench\r\n\r\n"
            for c in range(self.plan.customers)
        ]
        runs = (
            ("floor_hgetall", self.floor.port, order_paths),
            ("query_order", self.gateway.port, order_paths),
            ("query_customer", self.gateway.port, customer_paths),
        )
        # Floor and queries take turns, so a neighbour's burst spoils one round, not a side.
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in runs}
        for round_no in range(1, self.plan.query_rounds + 1):
            self.say(
                f"queries: round {round_no}/{self.plan.query_rounds}: floor HGETALL, "
                f"GET /orders/{{id}}, customer page; {self.plan.clients} clients, "
                f"{self.plan.query_s:g}s each"
            )
            for name, port, paths in runs:
                config = self.closed(port, "cycle", paths)
                config.update(
                    duration_s=self.plan.query_s, warmup_s=min(0.5, self.plan.query_s / 4)
                )
                rounds[name].append(with_rate(self.generate(f"{name}-{round_no}", config)))
        for name, results in rounds.items():
            self.raw[name] = best_round(results)

    def phase_scaling(self, rate: float) -> None:
        """The open loop at one `rate` below saturation with one worker pair, then with two:
        what a second pair costs per command, not what it adds on a saturated machine."""
        if self.plan.rerun_one_worker:
            self.scaling_round("scale_1", rate)
        else:
            latency = self.raw["latency"]
            self.raw["scale_1"] = {key: latency[key] for key in SCALING_KEYS if key in latency}
            self.raw["scale_1"]["measured_in"] = "latency"
        self.say("scaling: starting a second command worker and projector")
        assert self.system is not None
        self.system.start_command_worker()
        self.system.start_projector()
        self.scaling_round("scale_2", rate)

    def scaling_round(self, name: str, rate: float) -> None:
        self.say(f"{name}: open loop at {rate:.0f} commands/s for {self.plan.duration_s:g}s")
        self.raw[name] = self.open_loop(name, rate, self.plan.duration_s, self.plan.warmup_s)
        self.settle(name)

    def phase_rebuild(self) -> None:
        iso = self.iso
        have = run_on_uvloop_value(seed.event_count(iso.database_url))
        missing = self.plan.rebuild_events - have
        if missing > 0:
            self.say(f"rebuild: seeding {missing} events (the store has {have})")
            run_on_uvloop_value(
                seed.seed_events(iso.database_url, missing, 99, self.plan.customers)
            )
        self.settle("seeding", timeout_s=max(60.0, self.plan.rebuild_events / 500))
        events = run_on_uvloop_value(seed.event_count(iso.database_url))
        orders = self.raw.get("e2e", {}).get("orders", [])
        view = (
            run_on_uvloop_value(seed.sample_view(iso.redis_url, iso.prefix, orders[0]))
            if orders
            else None
        )
        self.say(f"rebuild: raw pipelined HSET+ZADD, {events} events")
        raw = run_on_uvloop_value(
            seed.raw_redis_writes(iso.redis_url, iso.prefix, events, 1000, view)
        )
        iso.delete_keys(f"{seed.raw_floor_keys(iso.prefix).base}*")
        self.raw["raw_redis"] = raw
        name = seed.ORDER_VIEWS
        self.say(f"rebuild: python -m projector_worker rebuild {name}, {events} events")
        before = cpu_snapshot(self.procs.procs)
        started = time.monotonic()
        proc = self.procs.start(
            "projector_worker", "rebuild", name, "--quiet", name="rebuild", listen=Listen.NONE
        )
        if not proc.wait(600):
            proc.stop()
            raise PhaseFailed(f"rebuild did not finish in 600s:\n{proc.tail()}")
        wall = time.monotonic() - started
        after = cpu_snapshot(self.procs.procs)
        if proc.exit_code != 0:
            raise PhaseFailed(f"rebuild failed (exit {proc.exit_code}):\n{proc.tail()}")
        shares = cpu_shares(before, after)
        if proc.usage is not None:
            # It came and went between the snapshots: its own rusage says what it used.
            shares["rebuild"] = round(proc.usage.cpu_s / wall, 3)
            shares["outside"] = round(max(shares["outside"] - shares["rebuild"], 0.0), 3)
        summary = parse_rebuild_summary(proc.tail())
        seconds = summary["seconds"] if summary else wall
        replayed = summary["events"] if summary else events
        if summary is None:
            self.notes.append("rebuild summary line not found: timed the whole process instead")
        self.raw["rebuild"] = {
            "events": replayed,
            "seconds": seconds,
            "process_wall_s": wall,
            "events_per_s": rate(replayed, seconds),
            "cpu_shares": shares,
        }

    def settle(self, after: str, timeout_s: float = 60.0) -> None:
        """Wait until the projectors applied every stored event before the next phase."""
        iso = self.iso
        caught_up, lag = run_on_uvloop_value(
            seed.wait_caught_up(
                iso.database_url, iso.redis_url, iso.prefix, timeout_s, self.plan.projections
            )
        )
        if not caught_up:
            self.notes.append(f"after {after}: the views were still {lag} events behind")

    # --- the run ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        try:
            self.say(f"bench: run {self.iso.run_id}, logs in {relative(self.log_dir)}")
            self.floor = self.start_floor()
            self.phase_floor_publish()
            self.say("system: starting the gateway, a command worker and a projector")
            self.gateway = self.start_system()
            e2e = self.phase_e2e()
            open_rate = self.phase_latency(e2e["visible_rate"])
            self.phase_redis_memory()
            self.phase_queries()
            if self.plan.peer:
                run_peer_comparison(self)
            for _ in range(self.plan.floor_rounds - 1):
                self.phase_floor_publish()
            self.phase_scaling(open_rate)
            self.phase_rebuild()
        finally:
            self.say("bench: stopping the processes")
            self.procs.stop_all()
        self.raw["wall_s"] = time.monotonic() - started
        return self.raw


def relative(path: Path) -> str:
    """`path` as the user would type it from the current directory, if it is below it."""
    if not path.is_absolute():
        return str(path)
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return path.name


def run_on_uvloop_value(coroutine: Any) -> Any:
    """Run a coroutine to completion on uvloop and return its value."""
    box: list[Any] = []

    async def wrapper() -> int:
        box.append(await coroutine)
        return 0

    run_on_uvloop(wrapper)
    return box[0]


SCALING_KEYS = ("rate", "accepted_rate", "visible_rate", "cpu_shares")
"""What the latency phase lends the scaling figure when it stands for one worker pair."""


SUMMARY = re.compile(r"rebuild (?:of \S+ )?done: .*?(\d+) events read .*? switched after ([\d.]+)s")
"""The replay is timed up to the switch; deleting the old generation's keys comes after."""


def parse_rebuild_summary(log: str) -> dict[str, float] | None:
    """Events and seconds to the switch from `projector_worker rebuild`'s closing line, if
    present."""
    found = SUMMARY.findall(log)
    if not found:
        return None
    events, seconds = found[-1]
    return {"events": int(events), "seconds": float(seconds)}
