"""Rebuilding one projection from the event store into a new generation, without downtime.

1. Take the rebuild lock (SET NX PX, renewed) so one process rebuilds at a time.
2. Open generation n+1 and set the `rebuilding` marker naming it, in one script. From then on
   every live projector writes each event to both generations (its APPLY call checks the
   marker atomically), so anything applied to the current generation after this point is in the
   new one too.
3. Read the gap-safe horizon (see `common/eventstore/store.py`), wait until it is final, and
   replay every event up to it, in position order, into the new generation. Anything the live
   projectors applied before step 2 has a position below that horizon.
4. Catch up once more to a fresh horizon if the current generation's checkpoint moved past
   the replay, then switch the pointer and drop the marker atomically.
5. Delete the old generation's keys in batches, found by SCAN of its base.

On an empty Redis (no pointer) the same steps restore the views and, for a projection that
aggregates are visible in, the command statuses (from the event store's command ledger);
projectors that start meanwhile wait for the pointer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson

from common.contracts.envelopes import RecordedEvent
from common.domain import Registry
from common.eventstore.store import EventStore, Partition
from common.readmodel.notifications import generation_message
from projector_worker import scripts
from projector_worker.generations import (
    LOCK_TTL_MS,
    Progress,
    RebuildAborted,
    RebuildLock,
    RebuildSummary,
    drop_generation,
)
from projector_worker.helpers import Helper, Helpers
from projector_worker.redis_views import ViewWriter
from projector_worker.replay import GenerationReplay
from projector_worker.statuses import restore_command_statuses

log = logging.getLogger(__name__)


class RebuildBusy(Exception):
    """Another process holds the rebuild lock."""


class Rebuild:
    """One rebuild run into a new generation."""

    def __init__(
        self,
        writer: ViewWriter,
        registry: Registry,
        pool: asyncpg.Pool,
        *,
        batch_size: int = 1000,
        progress: Progress | None = None,
        restore_commands: bool = False,
        cache_size: int = 100_000,
        partitions: int = 1,
        helpers: Helpers | None = None,
    ) -> None:
        self._writer = writer
        self._projection = writer.projection
        self._registry = registry
        self._redis = writer.redis
        self._keys = writer.keys
        self._pool = pool
        self._store = EventStore(pool)
        self._batch_size = batch_size
        self._progress = progress or Progress(stream=None)
        self._restore_commands = restore_commands
        self._partitions = max(partitions, 1)
        self._helpers = helpers or Helpers()
        self._replay = GenerationReplay(writer, registry, self._store, cache_size)
        self._begin = self._redis.register_script(scripts.BEGIN_REBUILD)
        self._switch = self._redis.register_script(scripts.SWITCH)
        self._abandon = self._redis.register_script(scripts.ABANDON)

    async def run(self) -> RebuildSummary:
        """Take the lock and rebuild; `RebuildBusy` when another process is rebuilding."""
        lock = RebuildLock(self._redis, self._keys)
        if not await lock.acquire():
            raise RebuildBusy(f"another process is rebuilding {self._projection.name}")
        return await self.run_locked(lock)

    async def run_locked(self, lock: RebuildLock) -> RebuildSummary:
        started = time.monotonic()
        try:
            lock.start_renewing()
            previous = (await self._writer.generations()).live
            generation = int(
                await self._begin(
                    keys=[
                        self._keys.rebuild_lock,
                        self._keys.generation_counter,
                        self._keys.generation,
                        self._keys.generations,
                        self._keys.rebuilding,
                    ],
                    args=[lock.token, LOCK_TTL_MS],
                )
            )
            if generation < 0:
                raise RebuildAborted("lost the rebuild lock before starting")
            lock.generation = generation
            summary = RebuildSummary(generation, previous, self._projection.name)
            name = self._projection.name
            self._progress.label = f"rebuild {name} g{generation}"
            log.info("rebuilding %s into g%d (current: g%s)", name, generation, previous)
            await self._drop_abandoned(keep={generation, previous})
            try:
                await self._fill(lock, summary)
                old = int(
                    await self._switch(
                        keys=[
                            self._keys.rebuild_lock,
                            self._keys.rebuilding,
                            self._keys.generation,
                        ],
                        args=[
                            lock.token,
                            str(generation),
                            self._keys.versions_channel,
                            generation_message(generation),
                        ],
                    )
                )
            except BaseException:
                await self._abandon(
                    keys=[self._keys.rebuild_lock, self._keys.rebuilding],
                    args=[lock.token, str(generation)],
                )
                raise
            if old < 0:
                raise RebuildAborted("lost the rebuild lock or marker before switching")
            summary.switched_s = time.monotonic() - started
            log.info("queries of %s now read g%d", name, generation)
            if old > 0:
                summary.keys_deleted = await drop_generation(self._redis, self._keys, old)
            summary.seconds = time.monotonic() - started
            return summary
        finally:
            await lock.release()

    async def _drop_abandoned(self, keep: set[int | None]) -> None:
        for raw in await self._redis.smembers(self._keys.generations):
            generation = int(raw)
            if generation not in keep:
                deleted = await drop_generation(self._redis, self._keys, generation)
                log.info("deleted %d keys of abandoned generation g%d", deleted, generation)

    async def _fill(self, lock: RebuildLock, summary: RebuildSummary) -> None:
        generation = summary.generation
        record = bool(self._writer.visible_for) and (
            self._restore_commands or summary.previous is None
        )
        if record:
            since = datetime.now(UTC) - timedelta(seconds=self._writer.status_ttl_s)
            summary.commands_restored = await restore_command_statuses(
                self._writer, self._store, since
            )
        async with self._pool.acquire() as conn:
            up_to = await self._final_horizon(conn, 0)
            if self._partitions > 1:
                await self._replay_partitioned(conn, up_to, lock, summary, record)
                after = up_to
            else:
                after = await self._replay_range(conn, 0, up_to, summary, record, lock=lock)
            if summary.previous is not None:
                current = await self._writer.checkpoint(summary.previous)
                if current > after:
                    up_to = await self._final_horizon(conn, after)
                    after = await self._replay_range(conn, after, up_to, summary, record, lock=lock)
        summary.horizon = after
        log.info("%s g%d caught up to position %d", self._projection.name, generation, after)

    async def _final_horizon(self, conn: asyncpg.Connection, after: int) -> int:
        """The gap-safe horizon once it is final; its positions past `after` join the total."""
        horizon = await EventStore.read_horizon(conn)
        await EventStore.wait_until_final(conn, horizon)
        self._progress.total += max(horizon.last_position - after, 0)
        return horizon.last_position

    async def _replay_partitioned(
        self,
        conn: asyncpg.Connection,
        up_to: int,
        lock: RebuildLock,
        summary: RebuildSummary,
        record: bool,
    ) -> None:
        """Replay up to `up_to` in `partitions` processes side by side (this one and helpers
        started for the others), each applying the streams of its partition in order."""
        count = self._partitions
        taken: list[Helper] = []
        outputs: list[asyncio.StreamReader] = []
        try:
            for index in range(1, count):
                helper = self._helpers.take()
                taken.append(helper)
                argv = [
                    "--projection",
                    self._projection.name,
                    "--generation",
                    str(summary.generation),
                    "--up-to",
                    str(up_to),
                    "--partition",
                    str(Partition(index, count)),
                    "--batch-size",
                    str(self._batch_size),
                    *(["--record-commands"] if record else []),
                ]
                outputs.append(await helper.start(argv))
            async with asyncio.TaskGroup() as group:
                group.create_task(
                    self._replay_range(
                        conn, 0, up_to, summary, record, lock=lock, partition=Partition(0, count)
                    )
                )
                for helper, stdout in zip(taken, outputs, strict=True):
                    group.create_task(self._follow(helper, stdout, summary, lock))
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from group_error
        finally:
            for helper in taken:
                helper.kill()  # if it still runs
                await helper.wait()

    async def _follow(
        self,
        helper: Helper,
        stdout: asyncio.StreamReader,
        summary: RebuildSummary,
        lock: RebuildLock,
    ) -> None:
        """Count a helper's progress into `summary`; fail if it fails."""
        async for line in stdout:
            report = orjson.loads(line)
            summary.events += report.get("events", 0)
            summary.applied += report.get("applied", 0)
            summary.skipped += report.get("skipped", 0)
            summary.ignored += report.get("ignored", 0)
            self._progress.advance(report.get("events", 0))
            if lock.lost:
                raise RebuildAborted("lost the rebuild lock")
        code = await helper.wait()
        if code != 0:
            raise RebuildAborted(f"a partition's replay failed (exit code {code})")

    async def replay_partition(
        self,
        generation: int,
        up_to: int,
        partition: Partition,
        record: bool,
        report: Callable[[dict[str, int]], None],
    ) -> RebuildSummary:
        """A helper's part of `_replay_partitioned`: `report` gets the counts of every batch."""
        summary = RebuildSummary(generation, None, self._projection.name)
        async with self._pool.acquire() as conn:
            await self._replay_range(
                conn, 0, up_to, summary, record, partition=partition, report=report
            )
        return summary

    async def _replay_range(
        self,
        conn: asyncpg.Connection,
        after: int,
        up_to: int,
        summary: RebuildSummary,
        record: bool,
        *,
        lock: RebuildLock | None = None,
        partition: Partition | None = None,
        report: Callable[[dict[str, int]], None] | None = None,
    ) -> int:
        """Replay the positions in (after, up_to] of `partition` (default: all)."""

        def read_after(position: int) -> asyncio.Future[list[RecordedEvent]] | None:
            if position >= up_to:
                return None
            return asyncio.ensure_future(
                EventStore.read_range(conn, position, up_to, self._batch_size, partition)
            )

        # The next batch is read from PostgreSQL while this one is written to Redis.
        reading = read_after(after)
        try:
            while reading is not None:
                events = await reading
                reading = None
                if not events:
                    break
                after = events[-1].position
                reading = read_after(after)
                before = (summary.applied, summary.skipped, summary.ignored)
                await self._replay.apply(events, summary, record)
                summary.events += len(events)
                if report is not None:
                    report(
                        {
                            "events": len(events),
                            "applied": summary.applied - before[0],
                            "skipped": summary.skipped - before[1],
                            "ignored": summary.ignored - before[2],
                        }
                    )
                else:
                    self._progress.advance(len(events))
                if lock is not None and lock.lost:
                    raise RebuildAborted("lost the rebuild lock")
        finally:
            if reading is not None:
                reading.cancel()
                with contextlib.suppress(BaseException):
                    await reading
        return max(after, up_to)


async def ensure_views(
    writer: ViewWriter,
    registry: Registry,
    pool: asyncpg.Pool,
    *,
    batch_size: int = 1000,
    poll_s: float = 0.2,
    progress: Progress | None = None,
) -> RebuildSummary | None:
    """Return once queries have a generation to read: rebuild it if this process gets the lock,
    else wait for the process that has it (or take over when its lock expires)."""
    while True:
        if (await writer.generations()).live is not None:
            return None
        lock = RebuildLock(writer.redis, writer.keys)
        if await lock.acquire():
            if (await writer.generations()).live is not None:
                await lock.release()
                return None
            log.warning(
                "no views of %s in Redis: rebuilding them from the event store",
                writer.projection.name,
            )
            rebuild = Rebuild(writer, registry, pool, batch_size=batch_size, progress=progress)
            summary = await rebuild.run_locked(lock)
            log.info(summary.describe())
            return summary
        await asyncio.sleep(poll_s)
