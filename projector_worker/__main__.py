"""`python -m projector_worker [run | rebuild | status | dlq]`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import orjson

from common.domain import Registry, load_domains
from common.eventstore.database import create_pool, prepare_database
from common.eventstore.store import Partition
from common.messaging.dead_letters import add_dlq_parser, run_dlq_command
from common.messaging.topology import Topology
from common.observability.logging import configure_logging
from common.observability.tracing import configure_tracing, shutdown_tracing
from common.process import install_stop_signals, run
from common.readmodel.keys import Keys
from common.settings import get_settings
from projector_worker.generations import Progress, RebuildAborted
from projector_worker.helpers import Forked, Helpers
from projector_worker.rebuild import Rebuild, RebuildBusy
from projector_worker.redis_views import ViewWriter, open_redis
from projector_worker.runner import writer_for

# The consumer (`run`) is imported where it starts, so a rebuild's partition helpers do not
# load it.

DEFAULT_PARTITIONS = min(os.cpu_count() or 1, 4)


def parse_args(registry: Registry, argv: list[str] | None = None) -> argparse.Namespace:
    names = list(registry.projections)
    parser = argparse.ArgumentParser(
        prog="python -m projector_worker",
        description="Runs the projections of the loaded domains (DOMAINS): each consumes its "
        "own queue and keeps its own Redis views. Settings come from the environment "
        "(REDIS_URL, DATABASE_URL, AMQP_URL, ...).",
    )
    parser.add_argument(
        "--projections",
        type=lambda text: _projection_list(text, names),
        default=names,
        help=f"comma-separated projections to run (default: all of {', '.join(names)})",
    )
    commands = parser.add_subparsers(dest="command", metavar="{run,rebuild,status,dlq}")
    commands.add_parser("run", help="consume events and keep the views (the default)")
    rebuild = commands.add_parser(
        "rebuild",
        help="replay the event store into a new generation of a projection's views and switch "
        "to it, while the current views keep serving",
    )
    which = rebuild.add_mutually_exclusive_group(required=True)
    which.add_argument("name", nargs="?", choices=names, help="the projection to rebuild")
    which.add_argument("--all", action="store_true", help="rebuild every projection, in turn")
    rebuild.add_argument(
        "--batch-size", type=int, default=1000, help="events read and applied per round trip"
    )
    rebuild.add_argument(
        "--restore-commands",
        action="store_true",
        help="also rewrite the status of every command whose aggregate is visible in "
        "the projection, from the event store",
    )
    rebuild.add_argument(
        "--partitions",
        type=int,
        default=DEFAULT_PARTITIONS,
        help="processes replaying side by side, each the streams of one partition "
        "(default: the CPU count, at most 4: %(default)s)",
    )
    rebuild.add_argument("--quiet", action="store_true", help="no progress lines")
    # Started by `rebuild --partitions N` for partitions 1..N-1; not for people.
    part = commands.add_parser("replay-partition")
    part.add_argument("--projection", choices=names, required=True)
    part.add_argument("--generation", type=int, required=True)
    part.add_argument("--up-to", type=int, required=True)
    part.add_argument("--partition", type=Partition.parse, required=True)
    part.add_argument("--batch-size", type=int, default=1000)
    part.add_argument("--record-commands", action="store_true")
    commands.add_parser(
        "status", help="print each projection's generations and checkpoint, then exit"
    )
    dlq = add_dlq_parser(commands, "a projection's queue")
    dlq.add_argument(
        "--projection", choices=names, default=names[0], help="whose queue (default: %(default)s)"
    )
    return parser.parse_args(argv)


def _projection_list(text: str, known: list[str]) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown projection(s) {', '.join(unknown) or '(none)'}; known: {', '.join(known)}"
        )
    return chosen


async def _serve(registry: Registry, names: list[str]) -> int:
    from projector_worker.runner import Projector

    settings = get_settings()
    projector = Projector(settings, registry, names)
    stop = asyncio.Event()
    install_stop_signals(stop)
    await projector.run(stop)
    return 0


async def _rebuild(args: argparse.Namespace, registry: Registry, helpers: Helpers) -> int:
    settings = get_settings()
    await prepare_database(settings.database_url)
    pool = await create_pool(settings.database_url, 2, settings.db_statement_timeout_s)
    redis = open_redis(settings)
    keys = Keys(settings.redis_key_prefix)
    names = list(registry.projections) if args.all else [args.name]
    try:
        for name in names:
            progress = Progress(stream=None if args.quiet else sys.stderr)
            rebuild = Rebuild(
                writer_for(
                    redis,
                    keys,
                    registry,
                    registry.projections[name],
                    status_ttl_s=settings.command_status_ttl_s,
                ),
                registry,
                pool,
                batch_size=args.batch_size,
                progress=progress,
                restore_commands=args.restore_commands,
                partitions=args.partitions,
                helpers=helpers,
            )
            try:
                summary = await rebuild.run()
            except (RebuildBusy, RebuildAborted) as exc:
                print(f"rebuild of {name} failed: {exc}", file=sys.stderr)
                return 1
            print(summary.describe(), file=sys.stderr)
    finally:
        await pool.close()
        await redis.aclose()
    return 0


async def _replay_partition(args: argparse.Namespace, registry: Registry) -> int:
    """One partition of a rebuild's replay; a JSON line of counts on stdout per batch."""
    settings = get_settings()
    pool = await create_pool(settings.database_url, 2, settings.db_statement_timeout_s)
    redis = open_redis(settings)
    keys = Keys(settings.redis_key_prefix)

    def report(counts: dict[str, int]) -> None:
        sys.stdout.write(orjson.dumps(counts).decode() + "\n")
        sys.stdout.flush()

    try:
        writer = writer_for(
            redis,
            keys,
            registry,
            registry.projections[args.projection],
            status_ttl_s=settings.command_status_ttl_s,
        )
        rebuild = Rebuild(writer, registry, pool, batch_size=args.batch_size)
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


async def _status(registry: Registry) -> int:
    settings = get_settings()
    keys = Keys(settings.redis_key_prefix)
    redis = open_redis(settings)
    try:
        for name, projection in registry.projections.items():
            writer = ViewWriter(redis, keys, projection)
            generations = await writer.generations()
            checkpoint = await writer.checkpoint(generations.live) if generations.live else 0
            await writer.close()
            print(
                f"{name}: generation {generations.live or '-'} (checkpoint {checkpoint}),"
                f" rebuilding {generations.building or '-'}"
            )
    finally:
        await redis.aclose()
    return 0


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    registry = load_domains(settings.domain_names)
    args = parse_args(registry, argv)
    if args.command == "dlq":
        topology = Topology(settings.app_prefix, tuple(registry.projections))
        queue = topology.projection_queue(args.projection)
        return run_dlq_command(args, settings, topology, queue)
    configure_logging("projector", settings.log_level, settings.log_format)
    if args.command == "rebuild":
        # Forked now, before any connection or event loop: loaded helpers start at once.
        forked = args.partitions - 1 if Forked.supported() else 0
        helpers = Helpers([Forked(main) for _ in range(forked)])
        try:
            return run(lambda: _rebuild(args, registry, helpers))
        finally:
            helpers.discard_unused()
    if args.command == "replay-partition":
        return run(lambda: _replay_partition(args, registry))
    if args.command == "status":
        return run(lambda: _status(registry))
    configure_tracing("projector", settings.traces_file)
    try:
        return run(lambda: _serve(registry, args.projections))
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    sys.exit(main())
