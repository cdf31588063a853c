"""Rebuilding the views from the event store into a new generation, without downtime.

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
5. Delete the old generation's keys in batches from its `members` set.

On an empty Redis (no pointer) the same steps restore the views and the command statuses
(from the `commands` table); projectors that start meanwhile wait for the pointer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import asyncpg
import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from common.contracts.envelopes import RecordedEvent
from common.contracts.orders import OrderEvent
from common.eventstore.store import EventStore, Partition
from common.readmodel.keys import Keys
from common.readmodel.notifications import generation_message
from common.readmodel.order_view import OrderView
from projector_worker import scripts
from projector_worker.helpers import Helper, Helpers
from projector_worker.projection import ProjectionError, parse_payload, plan, plan_run
from projector_worker.redis_views import ViewWriter

log = logging.getLogger(__name__)

LOCK_TTL_MS = 30_000
RENEW_EVERY_S = 5.0
DELETE_BATCH = 500
COMMAND_BATCH = 2_000


class RebuildBusy(Exception):
    """Another process holds the rebuild lock."""


class RebuildAborted(Exception):
    """The rebuild lost its lock or its generation (Redis emptied meanwhile); nothing switched."""


@dataclass
class RebuildSummary:
    generation: int
    previous: int | None
    events: int = 0
    applied: int = 0
    skipped: int = 0
    commands_restored: int = 0
    keys_deleted: int = 0
    horizon: int = 0
    switched_s: float = 0.0
    """From the start to queries reading the new generation: the replay."""
    seconds: float = 0.0
    """From the start to the end, the old generation's keys deleted."""

    def describe(self) -> str:
        rate = self.events / self.switched_s if self.switched_s > 0 else 0.0
        switched = (
            f"g{self.previous} -> g{self.generation}"
            if self.previous
            else (f"g{self.generation} (Redis was empty)")
        )
        text = (
            f"rebuild done: {switched}; {self.events} events read up to position "
            f"{self.horizon}, {self.applied} applied, switched after {self.switched_s:.1f}s"
            f" ({rate:.0f}/s)"
        )
        if self.skipped:
            text += f"; {self.skipped} invalid events skipped"
        if self.commands_restored:
            text += f"; {self.commands_restored} command statuses restored"
        if self.previous:
            text += f"; {self.keys_deleted} keys of g{self.previous} deleted"
        return text + f"; done in {self.seconds:.1f}s"


class Progress:
    """Events done, rate and ETA on a text stream, at most once a second."""

    def __init__(self, stream: TextIO | None = sys.stderr, every_s: float = 1.0) -> None:
        self._stream = stream
        self._every_s = every_s
        self._started = time.monotonic()
        self._last = 0.0
        self.done = 0
        self.total = 0
        self.label = "rebuild"

    def advance(self, events: int) -> None:
        self.done += events
        now = time.monotonic()
        if now - self._last >= self._every_s:
            self._last = now
            self.write(self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        text = f"{self.label}: {self.done} events, {rate:.0f}/s"
        if self.total > 0:
            share = min(self.done / self.total, 1.0)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            text += f", ~{share:.0%} of {self.total}, ETA {max(eta, 0):.0f}s"
        return text

    def write(self, text: str) -> None:
        if self._stream is not None:
            print(text, file=self._stream, flush=True)


class RebuildLock:
    """The one-rebuilder lock: a random token under a key with a TTL, renewed in the background
    together with the `rebuilding` marker."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self.token = secrets.token_hex(16)
        self.generation: int | None = None
        self.lost = False
        self._renewer: asyncio.Task[None] | None = None
        self._renew = redis.register_script(scripts.RENEW)
        self._release = redis.register_script(scripts.RELEASE)

    async def acquire(self) -> bool:
        return bool(
            await self._redis.set(self._keys.rebuild_lock, self.token, nx=True, px=LOCK_TTL_MS)
        )

    def start_renewing(self) -> None:
        self._renewer = asyncio.create_task(self._renew_forever(), name="rebuild-lock")

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            try:
                kept = await self._renew(
                    keys=[self._keys.rebuild_lock, self._keys.rebuilding],
                    args=[self.token, LOCK_TTL_MS, str(self.generation or "")],
                )
            except Exception as exc:
                log.warning("could not renew the rebuild lock: %r", exc)
                continue
            if not kept:
                log.error("the rebuild lock or marker was lost")
                self.lost = True
                return

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        with contextlib.suppress(Exception):
            await self._release(keys=[self._keys.rebuild_lock], args=[self.token])


async def drop_generation(redis: Redis, keys: Keys, generation: int) -> int:
    """Delete every key of `generation` in batches, from its members set (no SCAN)."""
    members = keys.views(generation).members
    deleted = 0
    while True:
        batch = await redis.spop(members, DELETE_BATCH)
        if not batch:
            break
        deleted += int(await redis.unlink(*batch))
    await redis.unlink(members)
    await redis.srem(keys.generations, generation)
    return deleted


class Rebuild:
    """One rebuild run into a new generation."""

    def __init__(
        self,
        writer: ViewWriter,
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
        self._redis = writer.redis
        self._keys = writer.keys
        self._pool = pool
        self._store = EventStore(pool)
        self._batch_size = batch_size
        self._progress = progress or Progress(stream=None)
        self._restore_commands = restore_commands
        self._partitions = max(partitions, 1)
        self._helpers = helpers or Helpers()
        self._views: OrderedDict[str, OrderView] = OrderedDict()
        self._cache_size = cache_size
        self._begin = self._redis.register_script(scripts.BEGIN_REBUILD)
        self._switch = self._redis.register_script(scripts.SWITCH)
        self._abandon = self._redis.register_script(scripts.ABANDON)

    async def run(self) -> RebuildSummary:
        """Take the lock and rebuild; `RebuildBusy` when another process is rebuilding."""
        lock = RebuildLock(self._redis, self._keys)
        if not await lock.acquire():
            raise RebuildBusy("another process is rebuilding the views")
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
            summary = RebuildSummary(generation=generation, previous=previous)
            self._progress.label = f"rebuild g{generation}"
            log.info("rebuilding the views into g%d (current: g%s)", generation, previous)
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
                            self._keys.order_versions_channel,
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
            log.info("queries now read g%d", generation)
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
        record = self._restore_commands or summary.previous is None
        if record:
            summary.commands_restored = await self._restore_command_statuses()
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
        log.info("g%d caught up to position %d", generation, after)

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
        summary = RebuildSummary(generation=generation, previous=None)
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
                applied, skipped = summary.applied, summary.skipped
                await self._apply_batch(events, summary, record)
                summary.events += len(events)
                if report is not None:
                    report(
                        {
                            "events": len(events),
                            "applied": summary.applied - applied,
                            "skipped": summary.skipped - skipped,
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

    async def _apply_batch(
        self, events: list[RecordedEvent], summary: RebuildSummary, record: bool
    ) -> None:
        generation = summary.generation
        parsed: list[tuple[RecordedEvent, OrderEvent]] = []
        for event in events:
            try:
                parsed.append((event, parse_payload(event)))
            except ProjectionError as exc:
                summary.skipped += 1
                log.error("skipping event %s at %d: %s", event.event_id, event.position, exc)
        await self._load_views(parsed, generation)

        # Each order's events here that follow its known view without a gap form its run.
        runs: dict[str, list[tuple[RecordedEvent, OrderEvent]]] = {}
        gaps: dict[str, int] = {}
        for event, payload in parsed:
            stream_id = event.stream_id
            if stream_id in gaps:
                gaps[stream_id] = event.version
                continue
            run = runs.get(stream_id)
            if run is not None:
                known = run[-1][0].version
            else:
                before = self._views.get(stream_id)
                known = before.version if before is not None else 0
            if known >= event.version:
                continue
            if known != event.version - 1:
                gaps[stream_id] = event.version
                continue
            runs.setdefault(stream_id, []).append((event, payload))

        queued: list[tuple[RecordedEvent, int]] = []
        async with self._redis.pipeline(transaction=False) as pipe:
            for run in runs.values():
                queued += await self._queue_run(pipe, run, generation, record, summary, gaps)
            replies = await pipe.execute() if queued else []
        for (event, count), reply in zip(queued, replies, strict=True):
            result = self._writer.result_of(reply, generation)
            if result.empty or result.stale:
                raise RebuildAborted("the views were emptied or the rebuild was replaced")
            if result.gap:
                # Also a run that live projectors entered midway: the catch-up below applies
                # what is missing, event by event.
                gaps[event.stream_id] = max(gaps.get(event.stream_id, 0), event.version)
                self._views.pop(event.stream_id, None)
            elif result.applied:
                summary.applied += count
        for stream_id, version in gaps.items():
            summary.applied += await self._catch_up_stream(stream_id, version, generation, record)

    async def _queue_run(
        self,
        pipe: Pipeline,
        run: list[tuple[RecordedEvent, OrderEvent]],
        generation: int,
        record: bool,
        summary: RebuildSummary,
        gaps: dict[str, int],
    ) -> list[tuple[RecordedEvent, int]]:
        """Queue one order's run: as one call (`plan_run`), or event by event when command
        statuses are restored (they are recorded per event) or an event cannot apply. An
        event that cannot apply is skipped, and the rest of the run is left to the catch-up."""
        stream_id = run[0][0].stream_id
        before = self._views.get(stream_id)
        last = run[-1][0]
        if not record and len(run) > 1:
            try:
                folded = plan_run(before, run)
            except ProjectionError:
                pass  # planned again below, event by event, to skip just the bad one
            else:
                await self._writer.replay_into(
                    pipe, last, folded.change, generation, record_commands=False, run=folded
                )
                self._remember(folded.change.view)
                return [(last, len(run))]
        queued: list[tuple[RecordedEvent, int]] = []
        for event, payload in run:
            try:
                change = plan(before, event, payload)
            except ProjectionError as exc:
                summary.skipped += 1
                log.error("skipping event %s at %d: %s", event.event_id, event.position, exc)
                if event is not last:
                    gaps[stream_id] = max(gaps.get(stream_id, 0), last.version)
                break
            await self._writer.replay_into(pipe, event, change, generation, record_commands=record)
            queued.append((event, 1))
            before = change.view
            self._remember(before)
        return queued

    async def _load_views(
        self, parsed: list[tuple[RecordedEvent, OrderEvent]], generation: int
    ) -> None:
        """Read from Redis the views of orders that continue in this batch and are not cached."""
        missing: dict[str, None] = {}
        for event, _payload in parsed:
            if event.version > 1 and event.stream_id not in self._views:
                missing.setdefault(event.stream_id, None)
        if not missing:
            return
        view_keys = self._keys.views(generation)
        async with self._redis.pipeline(transaction=False) as pipe:
            for order_id in missing:
                pipe.hgetall(view_keys.order(order_id))
            raws = await pipe.execute()
        for raw in raws:
            if raw:
                self._remember(OrderView.from_hash(raw))

    def _remember(self, view: OrderView) -> None:
        self._views[view.order_id] = view
        self._views.move_to_end(view.order_id)
        if len(self._views) > self._cache_size:
            self._views.popitem(last=False)

    async def _catch_up_stream(
        self, stream_id: str, up_to_version: int, generation: int, record: bool
    ) -> int:
        """Apply a stream's events from the store, in version order, up to `up_to_version`."""
        stream = await self._store.read_stream(stream_id)
        view: OrderView | None = None
        applied = 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for event in stream[:up_to_version]:
                try:
                    change = plan(view, event, parse_payload(event))
                except ProjectionError as exc:
                    log.error("cannot replay %s past version %d: %s", stream_id, event.version, exc)
                    break
                await self._writer.replay_into(
                    pipe, event, change, generation, record_commands=record
                )
                view = change.view
            replies = await pipe.execute()
        for reply in replies:
            result = self._writer.result_of(reply, generation)
            if result.empty or result.stale:
                raise RebuildAborted("the views were emptied or the rebuild was replaced")
            applied += int(result.applied)
        if view is not None:
            self._remember(view)
        return applied

    async def _restore_command_statuses(self) -> int:
        """Write every command's recorded outcome from PostgreSQL back to its status hash."""
        restored = 0
        last = None
        while True:
            rows = await self._pool.fetch(
                "SELECT command_id, type, stream_id, status, reason, version FROM commands"
                " WHERE $1::uuid IS NULL OR command_id > $1 ORDER BY command_id LIMIT $2",
                last,
                COMMAND_BATCH,
            )
            if not rows:
                return restored
            async with self._redis.pipeline(transaction=False) as pipe:
                for row in rows:
                    pipe.hset(
                        self._keys.command(row["command_id"]),
                        mapping={
                            "command_id": str(row["command_id"]),
                            "type": row["type"],
                            "order_id": row["stream_id"],
                            "status": row["status"],
                            "reason": row["reason"] or "",
                            "version": row["version"],
                        },
                    )
                await pipe.execute()
            restored += len(rows)
            last = rows[-1]["command_id"]


async def ensure_views(
    writer: ViewWriter,
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
            log.warning("no views in Redis: rebuilding them from the event store")
            rebuild = Rebuild(writer, pool, batch_size=batch_size, progress=progress)
            summary = await rebuild.run_locked(lock)
            log.info(summary.describe())
            return summary
        await asyncio.sleep(poll_s)
