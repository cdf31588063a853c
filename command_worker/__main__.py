"""`python -m command_worker`: consume commands, append events, relay them to orders.events."""

from __future__ import annotations

import argparse
import sys

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
    parser.parse_args(argv)
    settings = get_settings()
    configure_logging("command_worker", settings.log_level)
    from command_worker.service import CommandWorker

    return run(CommandWorker(settings).run)


if __name__ == "__main__":
    sys.exit(main())
