"""`python -m tests.chaos [--quick] [--scenario NAME ...]`: the fault drills, then the table."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from common.readmodel.connection import ReadFrom
from harness.isolation import Endpoints, answers, new_run_id, settings_env
from harness.load import LoadShape
from harness.processes import process_group
from harness.rabbit_cluster import rabbit_cluster, unavailable_reason
from harness.redis_sentinel import SentinelGroup
from tests.chaos import services as shared
from tests.chaos.report import Row, details, markdown
from tests.chaos.scenarios import BY_NAME, FREEZE_S, SCENARIOS, Scenario, run_scenario
from tests.chaos.system import isolated_settings

HERE = Path(__file__).resolve().parent
FULL = LoadShape()
QUICK = LoadShape(orders=40, additions=6)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos",
        description="Run a bounded load against a real gateway, two command workers and two "
        "projectors, inject one fault per scenario, wait for quiet and check every invariant: "
        "each command answered 202 reaches a terminal status exactly once, streams are "
        "contiguous, the relay is at the last position, the Redis views equal a fresh replay "
        "and the dead-letter queues are empty. Scenarios that restart or freeze RabbitMQ, "
        "PostgreSQL or Redis first wait until no other test or benchmark run is going.",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"a small load ({QUICK.commands} commands a scenario)"
    )
    parser.add_argument(
        "--scenario",
        nargs="+",
        action="extend",
        choices=list(BY_NAME),
        metavar="NAME",
        help="run only these (default: all): " + ", ".join(BY_NAME),
    )
    parser.add_argument(
        "--freeze-seconds",
        type=float,
        default=FREEZE_S,
        metavar="S",
        help=f"how long the *-freeze scenarios keep their service stopped (default: {FREEZE_S:g})",
    )
    parser.add_argument("--list", action="store_true", help="describe the scenarios and exit")
    parser.add_argument(
        "--output",
        type=Path,
        default=HERE / "last-run.md",
        help="where the table is written (default: tests/chaos/last-run.md)",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the processes' logs even when all pass"
    )
    return parser.parse_args(argv)


def say(text: str) -> None:
    print(text, flush=True)


def _stop_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    # Unwinds like Ctrl-C, so every `finally` (services back up, processes stopped) runs.
    raise KeyboardInterrupt


def run_one(
    scenario: Scenario, services: Endpoints, shape: LoadShape, logs: Path, freeze_s: float
) -> Row:
    no_cluster = unavailable_reason() if scenario.cluster else None
    if no_cluster is not None:
        return Row(scenario.name, skipped=f"no local RabbitMQ cluster: {no_cluster}")
    if scenario.restarts is not None and not shared.wait_until_alone(say, scenario.restarts):
        return Row(scenario.name, skipped="other test or benchmark runs kept the machine busy")
    run = new_run_id()
    log_dir = logs / scenario.name
    log_dir.mkdir(parents=True)
    try:
        with contextlib.ExitStack() as stack:
            cluster = stack.enter_context(rabbit_cluster(say=say)) if scenario.cluster else None
            on = cluster.endpoints(services) if cluster is not None else services
            settings = stack.enter_context(isolated_settings(on, run))
            group = None
            if scenario.sentinels:
                group = stack.enter_context(SentinelGroup.started())
                settings = settings.model_copy(
                    update={"redis_url": group.url(0), "redis_read_from": ReadFrom.REPLICAS}
                )
            started = stack.enter_context(
                process_group({**settings_env(settings), **scenario.env}, log_dir)
            )
            outcome = asyncio.run(
                run_scenario(
                    scenario,
                    settings,
                    started,
                    on,
                    shape,
                    freeze_s=freeze_s,
                    sentinels=group,
                    cluster=cluster,
                )
            )
            return outcome.row
    except Exception as exc:
        return Row(scenario.name, problems=[f"the drill itself failed: {exc!r}"])
    finally:
        if scenario.restarts is not None:
            shared.ensure_all(services)


def write_report(
    path: Path, rows: list[Row], shape: LoadShape, quick: bool, chosen: list[str] | None = None
) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join(
        [
            "# Last chaos run",
            "",
            f"`python -m tests.chaos{' --quick' if quick else ''}"
            f"{' --scenario ' + ' '.join(chosen) if chosen else ''}`, {when}, on"
            f" {os.cpu_count()} cores. Each scenario: {shape.orders} orders, about"
            f" {shape.commands} commands over HTTP ({shape.concurrency} in flight, at most"
            f" {shape.rate:.0f} a second), 2 command workers and 2 projectors; the fault comes"
            " once a third of the commands are accepted. See docs/faults.md.",
            "",
            markdown(rows),
            "",
        ]
    )
    problems = details(rows)
    if problems:
        text += "\n" + problems + "\n"
    path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for scenario in SCENARIOS:
            note = f" (disturbs {scenario.restarts})" if scenario.restarts else ""
            say(f"{scenario.name:24} {scenario.summary}{note}")
        return 0
    services = Endpoints()
    if not all(answers("127.0.0.1", p) for p in (5672, 5432, 6379)):
        say("RabbitMQ, PostgreSQL and Redis must answer on 127.0.0.1 (make services)")
        return 2
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    shape = QUICK if args.quick else FULL
    chosen = [BY_NAME[name] for name in args.scenario] if args.scenario else list(SCENARIOS)
    logs = Path(tempfile.mkdtemp(prefix="orders-chaos-"))
    rows: list[Row] = []
    started = time.monotonic()
    try:
        for scenario in chosen:
            say(f"{scenario.name}: {scenario.summary}")
            row = run_one(scenario, services, shape, logs, args.freeze_seconds)
            say(f"  {scenario.name}: {row.result}" + "".join(f"\n    {p}" for p in row.problems))
            rows.append(row)
    finally:
        shared.ensure_all(services)
    say("")
    say(write_report(args.output, rows, shape, args.quick, args.scenario))
    say(f"{len(rows)} scenarios in {time.monotonic() - started:.0f}s; table in {args.output}")
    if all(row.passed for row in rows) and not args.keep_logs:
        shutil.rmtree(logs, ignore_errors=True)
    else:
        say(f"process logs: {logs}")
    return 0 if all(row.passed for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
