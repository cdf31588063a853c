"""`python -m command_worker`: consume commands, append events, relay them to the events
exchange."""

from __future__ import annotations

import argparse
import sys

from common.domain import load_domains
from common.messaging.dead_letters import add_dlq_parser, run_dlq_command
from common.messaging.topology import Topology
from common.observability.logging import configure_logging
from common.observability.tracing import configure_tracing, shutdown_tracing
from common.process import run
from common.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m command_worker",
        description="Consume the commands queue, decide with the aggregates of the loaded "
        "domains (DOMAINS), append events to the PostgreSQL event store and relay committed "
        "events to the events exchange. Configured by environment variables (AMQP_URL, "
        "DATABASE_URL, REDIS_URL, ...; see docs/settings.md).",
    )
    settings = get_settings()
    registry = load_domains(settings.domain_names)
    topology = Topology(settings.app_prefix, tuple(registry.projections))
    subparsers = parser.add_subparsers(dest="command")
    subparsers.add_parser("run", help="run the worker (the default)")
    add_dlq_parser(subparsers, topology.commands_queue)
    args = parser.parse_args(argv)
    if args.command == "dlq":
        return run_dlq_command(args, settings, topology, topology.commands_queue)
    configure_logging("command_worker", settings.log_level, settings.log_format)
    configure_tracing("command-worker", settings.traces_file)
    from command_worker.service import CommandWorker

    try:
        return run(CommandWorker(settings, registry).run)
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    sys.exit(main())
