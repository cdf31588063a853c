"""`python -m projector_worker [run | rebuild | status | dlq]`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import orjson

from common.eventstore.database import create_pool, prepare_database
from common.eventstore.store import Partition
from common.messaging.dead_letters import add_dlq_parser, run_dlq_command
from common.messaging.topology import PROJECTOR_QUEUE
from common.observability.logging import configure_logging
from common.process import install_stop_signals, run
from common.readmodel.keys import Keys
from common.settings import get_settings
from projector_worker.helpers import Forked, Helpers
from projector_worker.rebuild import Progress, Rebuild, RebuildAborted, RebuildBusy
from projector_worker.redis_views import ViewWriter, open_redis

# The consumer (`run`) is imported where it starts, so a rebuild's partition helpers do not
# load it.

DEFAULT_PARTITIONS = min(os.cpu_count() or 1, 4)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m projector_worker",
        description="Builds the Redis order views from the events on orders.projector. "
        "Settings come from the environment (REDIS_URL, DATABASE_URL, AMQP_URL, ...).",
    )
    commands = parser.add_subparsers(dest="command", metavar="{run,rebuild,status,dlq}")
    commands.add_parser("run", help="consume events and keep the views (the default)")
    rebuild = commands.add_parser(
        "rebuild",
        help="replay the event store into a new generation of the views and switch to it, "
        "while the current views keep serving",
    )
    rebuild.add_argument(
        "--batch-size", type=int, default=1000, help="events read and applied per round trip"
    )
    rebuild.add_argument(
        "--restore-commands",
        action="store_true",
        help="also rewrite every command status hash from the commands table",
    )
    rebuild.add_argument(
        "--partitions",
        type=int,
        default=DEFAULT_PARTITIONS,
        help="processes replaying side by side, each the orders of one partition "
        "(default: the CPU count, at most 4: %(default)s)",
    )
    rebuild.add_argument("--quiet", action="store_true", help="no progress lines")
    # Started by `rebuild --partitions N` for partitions 1..N-1; not for people.
    part = commands.add_parser("replay-partition")
    part.add_argument("--generation", type=int, required=True)
    part.add_argument("--up-to", type=int, required=True)
    part.add_argument("--partition", type=Partition.parse, required=True)
    part.add_argument("--batch-size", type=int, default=1000)
    part.add_argument("--record-commands", action="store_true")
    commands.add_parser("status", help="print the generations and the checkpoint, then exit")
    add_dlq_parser(commands, PROJECTOR_QUEUE)
    return parser.parse_args(argv)


async def _serve() -> int:
    from projector_worker.runner import Projector

    settings = get_settings()
    projector = Projector(settings)
    stop = asyncio.Event()
    install_stop_signals(stop)
    await projector.run(stop)
    return 0


async def _rebuild(args: argparse.Namespace, helpers: Helpers) -> int:
    settings = get_settings()
    await prepare_database(settings.database_url)
    pool = await create_pool(settings.database_url, 2)
    redis = open_redis(settings)
    progress = Progress(stream=None if args.quiet else sys.stderr)
    try:
        rebuild = Rebuild(
            ViewWriter(redis, Keys(settings.redis_key_prefix)),
            pool,
            batch_size=args.batch_size,
            progress=progress,
            restore_commands=args.restore_commands,
            partitions=args.partitions,
            helpers=helpers,
        )
        summary = await rebuild.run()
    except (RebuildBusy, RebuildAborted) as exc:
        print(f"rebuild failed: {exc}", file=sys.stderr)
        return 1
    finally:
        await pool.close()
        await redis.aclose()
    print(summary.describe(), file=sys.stderr)
    return 0


async def _replay_partition(args: argparse.Namespace) -> int:
    """One partition of a rebuild's replay; a JSON line of counts on stdout per batch."""
    settings = get_settings()
    pool = await create_pool(settings.database_url, 2)
    redis = open_redis(settings)

    def report(counts: dict[str, int]) -> None:
        sys.stdout.write(orjson.dumps(counts).decode() + "\n")
        sys.stdout.flush()

    try:
        rebuild = Rebuild(
            ViewWriter(redis, Keys(settings.redis_key_prefix)), pool, batch_size=args.batch_size
        )
        await rebuild.replay_partition(
            args.generation, args.up_to, args.partition, args.record_commands, report
        )
    except RebuildAborted as exc:
        print(f"replay of partition {args.partition} failed: {exc}", file=sys.stderr)
        return 1
    finally:
        await pool.close()
        await redis.aclose()
    return 0


async def _status() -> int:
    settings = get_settings()
    keys = Keys(settings.redis_key_prefix)
    redis = open_redis(settings)
    try:
        writer = ViewWriter(redis, keys)
        generations = await writer.generations()
        checkpoint = await writer.checkpoint(generations.live) if generations.live else 0
        print(f"generation: {generations.live or '-'} (checkpoint {checkpoint})")
        print(f"rebuilding: {generations.building or '-'}")
    finally:
        await redis.aclose()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = get_settings()
    if args.command == "dlq":
        return run_dlq_command(args, settings, PROJECTOR_QUEUE)
    configure_logging("projector", settings.log_level)
    if args.command == "rebuild":
        # Forked now, before any connection or event loop: loaded helpers start at once.
        forked = args.partitions - 1 if Forked.supported() else 0
        helpers = Helpers([Forked(main) for _ in range(forked)])
        try:
            return run(lambda: _rebuild(args, helpers))
        finally:
            helpers.discard_unused()
    if args.command == "replay-partition":
        return run(lambda: _replay_partition(args))
    if args.command == "status":
        return run(_status)
    return run(_serve)


if __name__ == "__main__":
    sys.exit(main())
