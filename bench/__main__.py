"""`python -m bench [--quick] [--duration T] [--clients C] ...`: the benchmark, in one run.

Runs on the local RabbitMQ, PostgreSQL and Redis, in a vhost, database and key prefix of its
own (removed at the end), with processes of its own. Prints a table, writes `results.json`
and draws `latency.png` (in `bench/`, or `bench/out/` for `--quick`). Targets are reported as
PASS or MISS; a miss does not fail the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.ceilings import measure
from bench.ceilings_figures import CeilingPlan
from bench.ceilings_figures import table as ceilings_table
from bench.phases import Bench, relative
from bench.plan import PhaseFailed, Plan
from bench.seed import EVENTS_PER_ORDER
from bench.system import OUT
from harness.isolation import Endpoints, Slice
from harness.processes import ROOT


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Phases: publish floor, end-to-end closed loop, open-loop latency at half the "
        "measured rate, Redis memory per order, queries against an HGETALL floor, CPU per "
        "command of 1 vs 2 worker pairs at that rate, rebuild against raw Redis writes, peak RSS "
        "of every process, creates alone against a naive FastStream peer.",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    parser.add_argument(
        "--ceilings",
        action="store_true",
        help="instead of the benchmark: the relay, a command worker and a projector, each "
        "alone over a backlog, in items per CPU-second (writes ceilings.json)",
    )
    parser.add_argument(
        "--ceiling-events", type=int, help="events the relay and the projector work through"
    )
    parser.add_argument(
        "--ceiling-commands", type=int, help="commands the command worker works through"
    )
    parser.add_argument("--clients", type=int, help="concurrent clients of the closed loops")
    parser.add_argument("--duration", type=float, help="seconds of each closed command loop")
    parser.add_argument("--warmup", type=float, help="seconds left out of the steady window")
    parser.add_argument("--floor-duration", type=float, help="seconds of the publish floor")
    parser.add_argument("--latency-duration", type=float, help="seconds of the open loop")
    parser.add_argument(
        "--latency-rate",
        type=float,
        help="commands/s of the open loop, to compare runs (default: half the e2e rate)",
    )
    parser.add_argument("--query-duration", type=float, help="seconds of each query loop")
    parser.add_argument(
        "--query-rounds", type=int, help="rounds of floor/query turns; the best counts"
    )
    parser.add_argument(
        "--floor-rounds", type=int, help="rounds of the publish floor; the best counts"
    )
    parser.add_argument(
        "--rebuild-events", type=int, help="events in the store when rebuilding (seeded up to)"
    )
    parser.add_argument(
        "--generator-check",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="repeat the publish floor from two generator processes (default: on, off in quick)",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="LOG_LEVEL of the measured processes (%(default)s)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="directory for results.json and latency.png (default: bench/, bench/out/ quick)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave the vhost, database and keys for a look"
    )
    parser.add_argument(
        "--traces",
        action="store_true",
        help="tracing on in the measured processes, every span written to a file in the output",
    )
    parser.add_argument(
        "--peer",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="creates alone through this project and a naive FastStream peer (default: on)",
    )
    parser.add_argument("--redis-db", type=int, default=0, help="Redis index (%(default)s)")
    parser.add_argument(
        "--projections",
        type=lambda text: tuple(name.strip() for name in text.split(",") if name.strip()),
        help="the projections the projectors run (default: every registered one)",
    )
    return parser.parse_args(argv)


def plan_of(args: argparse.Namespace) -> Plan:
    plan = Plan.smoke() if args.quick else Plan.full()
    overrides: dict[str, Any] = {
        "clients": args.clients,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "floor_s": args.floor_duration,
        "latency_s": args.latency_duration,
        "latency_rate": args.latency_rate,
        "query_s": args.query_duration,
        "query_rounds": args.query_rounds,
        "floor_rounds": args.floor_rounds,
        "rebuild_events": args.rebuild_events,
        "generator_check": args.generator_check,
        "log_level": args.log_level,
        "projections": args.projections,
        "traces": args.traces or None,
        "peer": args.peer,
    }
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    if plan.warmup_s >= plan.duration_s:
        raise SystemExit("--warmup must be shorter than --duration")
    if plan.clients < 1:
        raise SystemExit("--clients must be at least 1")
    return plan


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def compact(raw: dict[str, Any]) -> dict[str, Any]:
    """Raw results without the long lists (order ids, latency samples) meant for the plot."""
    out: dict[str, Any] = {}
    for name, phase in raw.items():
        if isinstance(phase, dict):
            out[name] = {k: v for k, v in phase.items() if k not in ("orders", "samples")}
        else:
            out[name] = phase
    return out


KEEP_LOGS = 5
"""Log folders of past runs kept under bench/out/."""


def prune_logs(out: Path, keep: int = KEEP_LOGS) -> None:
    """Remove the log folders of all but the `keep` latest runs."""
    runs = [d for d in out.iterdir() if d.is_dir() and len(d.name) == 10 and d.name.isalnum()]
    for old in sorted(runs, key=lambda d: d.stat().st_mtime)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = plan_of(args)
    services = Endpoints(redis_db=args.redis_db)
    missing = services.missing()
    if missing:
        print(
            f"bench: not answering on {services.amqp_host}: {', '.join(missing)}; "
            "start them with `make services`",
            file=sys.stderr,
        )
        return 2
    if args.ceilings:
        return main_ceilings(args, services)
    output = args.output or (OUT if plan.quick else ROOT / "bench")
    isolation = Slice(services, "bench")
    isolation.create()
    bench = Bench(plan, isolation, say=say)
    failed: str | None = None
    try:
        raw = bench.run()
    except (PhaseFailed, RuntimeError) as exc:
        failed = str(exc)
        raw = bench.raw
    finally:
        if args.keep:
            say(f"bench: kept vhost {isolation.vhost}, database {isolation.database}")
        else:
            for problem in isolation.destroy():
                say(f"bench: clean-up: {problem}")
    prune_logs(OUT)
    processes = bench.procs.summary()
    figures = report.figures(raw, processes)
    results: dict[str, Any] = {
        **figures,
        "targets": report.judge(figures),
        "plan": dataclasses.asdict(plan),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "raw": compact(raw),
        "processes": processes,
        "notes": bench.notes + report.automatic_notes(raw),
    }
    lost = report.lost_commands(raw)
    if lost and not failed:
        failed = f"{lost} accepted commands never became visible in the views (see the notes)"
    if failed:
        results["notes"].append(f"the run failed: {failed.splitlines()[0]}")
        if args.output is None:
            output = OUT  # a broken run must not replace the figures of the last good one
    print()
    print(report.render(results))
    report.write_json(output / "results.json", results)
    drawn = "latency" in raw and report.plot(output / "latency.png", raw["latency"], raw.get("e2e"))
    print()
    written = relative(output / "results.json")
    if drawn:
        written += f" and {relative(output / 'latency.png')}"
    say(f"bench: wrote {written}")
    if failed:
        print(f"\nbench: FAILED: {failed}", file=sys.stderr)
        return 1
    return 0


def main_ceilings(args: argparse.Namespace, services: Endpoints) -> int:
    """`--ceilings`: each serial part alone (`bench.ceilings`); `ceilings.json` in `bench/`
    (a full run) or `bench/out/` (`--quick`)."""
    plan = CeilingPlan.smoke() if args.quick else CeilingPlan.full()
    overrides = {"events": args.ceiling_events, "commands": args.ceiling_commands}
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    if plan.events < EVENTS_PER_ORDER or plan.commands < 1:
        raise SystemExit("--ceiling-events must be at least 5 and --ceiling-commands 1")
    isolation = Slice(services, "bench")
    log_dir = OUT / isolation.run_id
    log_dir.mkdir(parents=True, exist_ok=True)
    say(f"ceilings: run {isolation.run_id}, logs in {relative(log_dir)}")
    try:
        results = measure(plan, isolation, log_dir, say)
    except KeyboardInterrupt:
        print("ceilings: interrupted; processes stopped, slice removed", file=sys.stderr)
        return 130
    prune_logs(OUT)
    output = args.output or (OUT if plan.quick or "failed" in results else ROOT / "bench")
    report.write_json(output / "ceilings.json", results)
    print()
    print(ceilings_table(results))
    for note in results["notes"]:
        print(f"note: {note}")
    say(f"ceilings: wrote {relative(output / 'ceilings.json')}")
    if "failed" in results:
        print(f"\nceilings: FAILED: {results['failed']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
