"""Catching a projection's views up from the event store after Redis lost writes.

A loss (see `losses.py`) comes with a position: the highest one the views still hold. Events
applied late may sit below it, so the check starts `RECOVERY_MARGIN_S` earlier: at the last
position recorded that long before the event at the loss point. Every stream the projection
follows with events after that start is compared, window by window, with its views in the
generations being written; each one behind is caught up through the live, version-checked
path, under the projector's lock of that stream, while live events keep being applied. For the
projection that aggregates are visible in, command statuses recorded since that moment whose
hash is missing or shows no outcome are written back from the command ledger first, so a
status restored as `succeeded` shows the command visible only once its stream is caught up.

One recovery runs at a time per projection and process; a loss noticed meanwhile runs another
one after it, from the lower position of the two. A failed one is retried by the watchdog.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from common.eventstore.store import EventStore
from common.observability import metrics
from projector_worker.catchup import LiveApplier
from projector_worker.losses import LossDetector, Trigger
from projector_worker.redis_views import ViewWriter
from projector_worker.statuses import restore_command_statuses

log = logging.getLogger(__name__)

WINDOW = 5_000
"""Positions whose streams are read and compared with the views per round."""
CONCURRENCY = 16
"""Streams caught up at once."""
RETRY_MAX_S = 30.0
"""The longest wait before a failed recovery is tried again (it doubles from 1 s)."""


@dataclass
class RecoverySummary:
    projection: str
    trigger: Trigger
    loss_point: int
    start: int = 0
    """Streams with events after this position were checked."""
    streams_checked: int = 0
    streams_caught_up: int = 0
    events_applied: int = 0
    statuses_restored: int = 0
    seconds: float = 0.0

    @property
    def found_any(self) -> bool:
        return bool(self.streams_caught_up or self.statuses_restored)

    def describe(self) -> str:
        return (
            f"{self.streams_caught_up} of {self.streams_checked} streams changed since position"
            f" {self.start} were behind and caught up ({self.events_applied} events),"
            f" {self.statuses_restored} command statuses written back, in {self.seconds:.2f}s"
        )


Hold = Callable[[str], AbstractAsyncContextManager[None]]
"""The projector's lock of one stream."""


class Recovery:
    """Recoveries of one projection in one projector process."""

    def __init__(
        self,
        writer: ViewWriter,
        applier: LiveApplier,
        store: EventStore,
        hold: Hold,
        losses: LossDetector,
        *,
        margin_s: float,
    ) -> None:
        self._writer = writer
        self._projection = writer.projection
        self._applier = applier
        self._store = store
        self._hold = hold
        self._losses = losses
        self._margin_s = margin_s
        self._pending: tuple[int | None, Trigger] | None = None
        """The next recovery: its loss point (None: the live checkpoint when it starts)."""
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._retry_at = 0.0
        losses.listen(self.request)

    def request(self, since: int | None, trigger: Trigger) -> None:
        """Recover from `since` in the background, now or after the running recovery."""
        self._owe(since, trigger)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"recover-{self._projection.name}")

    async def watch(self) -> None:
        """The watchdog's turn: compare the write count with what this process saw, and retry
        a recovery that failed."""
        mark = self._losses.mark()
        state = await self._writer.live_state()
        if state is not None:
            self._losses.after_read(mark, state)
        idle = self._task is None or self._task.done()
        if idle and self._pending is not None and time.monotonic() >= self._retry_at:
            self._task = asyncio.create_task(self._run(), name=f"recover-{self._projection.name}")

    def _owe(self, since: int | None, trigger: Trigger) -> None:
        """Add a recovery to the pending one: the lower loss point of the two (None, the live
        checkpoint when it runs, is never below a loss point already known)."""
        pending = self._pending
        if pending is None or (since is not None and (pending[0] is None or since < pending[0])):
            self._pending = (since, trigger)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while self._pending is not None:
            since, trigger = self._pending
            self._pending = None
            try:
                await self.recover(since, trigger)
            except Exception as exc:
                self._owe(since, trigger)
                self._failures += 1
                delay = min(2.0 ** (self._failures - 1), RETRY_MAX_S)
                self._retry_at = time.monotonic() + delay
                log.warning(
                    "could not check %s against the event store (trying again in %.0fs): %r",
                    self._projection.name,
                    delay,
                    exc,
                    extra={"projection": self._projection.name},
                )
                return
            self._failures = 0

    async def recover(self, since: int | None, trigger: Trigger) -> RecoverySummary | None:
        """Catch up every stream that changed since `RECOVERY_MARGIN_S` before the event at
        `since` (None: the live checkpoint now), and the command statuses recorded since then;
        None when Redis has no views (their rebuild restores everything)."""
        started = time.monotonic()
        name = self._projection.name
        if since is None:
            state = await self._writer.live_state()
            if state is None:
                return None
            since = state.checkpoint
        summary = RecoverySummary(name, trigger, since)
        summary.start, moment = await self._store.position_before(since, self._margin_s)
        head = await self._store.head()
        if self._writer.visible_for:
            oldest = datetime.now(UTC) - timedelta(seconds=self._writer.status_ttl_s)
            summary.statuses_restored = await restore_command_statuses(
                self._writer,
                self._store,
                max(moment, oldest) if moment is not None else oldest,
                only_unsettled=True,
            )
        after = summary.start
        while after < head:
            up_to = min(after + WINDOW, head)
            await self._catch_up_window(after, up_to, summary)
            after = up_to
        summary.seconds = time.monotonic() - started
        metrics.PROJECTION_RECOVERIES.labels(name, trigger.value).inc()
        metrics.STREAMS_RECOVERED.labels(name).inc(summary.streams_caught_up)
        metrics.STATUSES_RECOVERED.labels(name).inc(summary.statuses_restored)
        fields = {
            "projection": name,
            "trigger": trigger.value,
            "position": since,
            "streams_caught_up": summary.streams_caught_up,
            "statuses_restored": summary.statuses_restored,
        }
        if trigger is not Trigger.START or summary.found_any:
            log.warning(
                "recovered %s from the event store after Redis lost writes (%s, loss point %d): %s",
                name,
                trigger.described,
                since,
                summary.describe(),
                extra=fields,
            )
        else:
            log.info(
                "checked %s against the event store: %s", name, summary.describe(), extra=fields
            )
        return summary

    async def _catch_up_window(self, after: int, up_to: int, summary: RecoverySummary) -> None:
        followed = [
            (stream_id, version)
            for stream_id, version in await self._store.stream_versions(after, up_to)
            if self._projection.follows(stream_id)
        ]
        summary.streams_checked += len(followed)
        behind = await self._behind(followed)
        limit = asyncio.Semaphore(CONCURRENCY)

        async def catch_up(stream_id: str, version: int) -> None:
            async with limit, self._hold(stream_id):
                applied = await self._applier.catch_up_stream(stream_id, version)
            if applied:
                summary.streams_caught_up += 1
                summary.events_applied += applied

        async with asyncio.TaskGroup() as group:
            for stream_id, version in behind:
                group.create_task(catch_up(stream_id, version))

    async def _behind(self, streams: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """The streams whose view is below the given version in a generation being written."""
        targets = (await self._writer.generations()).targets
        if not streams or not targets:
            return []  # no views: their rebuild replays everything
        views = [self._writer.keys.views(g) for g in targets]
        async with self._writer.redis.pipeline(transaction=False) as pipe:
            for stream_id, _version in streams:
                key = self._projection.view_key(stream_id)
                for view_keys in views:
                    pipe.hget(view_keys.key(key), "version")
            found = await pipe.execute()
        behind = []
        for index, (stream_id, version) in enumerate(streams):
            held = found[index * len(targets) : (index + 1) * len(targets)]
            if any(int(v or 0) < version for v in held):
                behind.append((stream_id, version))
        return behind
