"""The benchmark's phases, run in order by `Bench.run`.

Floors are measured by the same generator with the same concurrency as what they are compared
with, in the same run. Floors and queries are measured in rounds (the floor before and after
the end-to-end phases, query floor and queries taking turns) and the best round of each
counts: other work on a shared machine can only slow a round down.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench import seed
from bench.mix import create_requests
from bench.peer_phase import run_comparison as run_peer_comparison
from bench.plan import PhaseFailed, Plan
from bench.rebuild_phase import run_rebuild
from bench.stats import (
    best_round,
    memory_by_kind,
    merge_results,
    split_at_append,
    with_rate,
)
from bench.system import OUT, cpu_shares, cpu_snapshot, run_on_uvloop_value
from common.readmodel.keys import Keys
from harness.isolation import Slice, settings_env
from harness.processes import Listen, Proc, Processes
from harness.system import System


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
            run_rebuild(self)
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


SCALING_KEYS = ("rate", "accepted_rate", "visible_rate", "cpu_shares")
"""What the latency phase lends the scaling figure when it stands for one worker pair."""
