"""`python -m command_worker`: consume commands, append events, relay them to orders.events."""

from __future__ import annotations

import argparse
import sys

from common.messaging.dead_letters import add_dlq_parser, run_dlq_command
from common.messaging.topology import COMMANDS_QUEUE
from common.observability.logging import configure_logging
from common.process import run
from common.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m command_worker",
        description="Consume orders.commands, decide with the Order aggregate, append events to "
        "the PostgreSQL event store and relay committed events to the orders.events exchange. "
        "Configured by environment variables (AMQP_URL, DATABASE_URL, REDIS_URL, ...; see "
        "README).",
    )
    subparsers = parser.add_subparsers(dest="command")
    subparsers.add_parser("run", help="run the worker (the default)")
    add_dlq_parser(subparsers, COMMANDS_QUEUE)
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.command == "dlq":
        return run_dlq_command(args, settings, COMMANDS_QUEUE)
    configure_logging("command_worker", settings.log_level)
    from command_worker.service import CommandWorker

    return run(CommandWorker(settings).run)


if __name__ == "__main__":
    sys.exit(main())
