"""Writing one projection's changes to Redis: one APPLY script call per event, pipelined where
it can be."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from common.contracts.envelopes import RecordedEvent
from common.domain import split_stream_id
from common.readmodel import status_store
from common.readmodel.commands import STATUS_TTL_S, CommandStatus, status_items
from common.readmodel.connection import connect_redis
from common.readmodel.keys import Keys
from common.readmodel.layout import CHECKPOINT
from common.readmodel.notifications import projected_command_message, stream_version_message
from common.readmodel.pipelining import AutoPipeline
from common.readmodel.projection import Projection, ViewChange
from common.settings import Settings
from projector_worker import scripts

REDIS_CONNECTIONS = 32
"""Redis connections per projector; handlers beyond that queue for one instead of opening more."""


def open_redis(settings: Settings) -> Redis:
    """The projector's (and a rebuild's) Redis client."""
    return connect_redis(
        settings.redis_url,
        max_connections=REDIS_CONNECTIONS,
        blocking_timeout=settings.redis_timeout_s,
        socket_connect_timeout=min(5.0, settings.redis_timeout_s),
        socket_timeout=settings.redis_timeout_s,
    )


@dataclass(frozen=True, slots=True)
class Generations:
    """Where views are written: the generation queries read and the one a rebuild fills."""

    live: int | None
    building: int | None

    @property
    def empty(self) -> bool:
        """Neither exists: Redis lost the views."""
        return self.live is None and self.building is None

    @property
    def targets(self) -> tuple[int, ...]:
        return tuple(g for g in (self.live, self.building) if g is not None)


@dataclass(frozen=True, slots=True)
class BlockResult:
    generation: int
    code: int
    version_before: int
    checkpoint_before: int


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one APPLY call did: `empty` or `stale` (nothing written), else one result per
    generation written to, and the projection's write count before the call."""

    empty: bool = False
    stale: bool = False
    blocks: tuple[BlockResult, ...] = ()
    live: int | None = None
    """The generation queries read, when the call wrote to it."""
    writes_before: int = 0

    @property
    def writes_after(self) -> int:
        return self.writes_before + int(self.applied)

    @property
    def live_checkpoint_before(self) -> int | None:
        """The checkpoint of the generation queries read, as the call found it."""
        return next((b.checkpoint_before for b in self.blocks if b.generation == self.live), None)

    @property
    def applied(self) -> bool:
        return any(b.code == scripts.BLOCK_APPLIED for b in self.blocks)

    @property
    def gap(self) -> bool:
        return any(b.code == scripts.BLOCK_GAP for b in self.blocks)

    @property
    def lowest_version(self) -> int:
        """The lowest version any written generation had before the call."""
        return min((b.version_before for b in self.blocks), default=0)


@dataclass(frozen=True, slots=True)
class LiveState:
    """The projection's write count, the generation queries read and its checkpoint, as one
    atomic read found them."""

    writes: int
    live: int
    checkpoint: int
    server: str = ""
    """The `run_id` of the Redis server that answered: another one after a failover."""


def _int(value: bytes | str | None) -> int | None:
    return int(value) if value else None


class ViewWriter:
    """A projector's access to one projection's views; one per projection and process, shared
    by every handler.

    When the projection is the one an event's aggregate is `visible_in`, applying the event to
    the generation queries read also records it on the command's status and notifies
    waiting gateways (see `common/readmodel/notifications.py`)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        projection: Projection[Any],
        visible_for: Iterable[str] = (),
        *,
        status_ttl_s: int = STATUS_TTL_S,
    ) -> None:
        self.redis = redis
        self.status_ttl_s = status_ttl_s
        """Time to live of the command statuses this writer records."""
        self.root_keys = keys
        self.keys = keys.projection(projection.keys_name())
        self.projection = projection
        self.visible_for = frozenset(visible_for)
        """The stream types whose aggregate is visible in this projection."""
        self._apply = redis.register_script(scripts.APPLY)
        self._advance = redis.register_script(scripts.ADVANCE)
        self._pipeline = AutoPipeline(redis)

    async def generations(self) -> Generations:
        live, building = await self.redis.mget(self.keys.generation, self.keys.rebuilding)
        return Generations(_int(live), _int(building))

    async def read_views(self, stream_id: str, generations: Iterable[int]) -> dict[int, Any]:
        """The stream's view in each generation (None where it does not exist), one round
        trip."""
        targets = list(generations)
        key = self.projection.view_key(stream_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for generation in targets:
                pipe.hgetall(self.keys.views(generation).key(key))
            raws = await pipe.execute()
        return {
            g: (self.projection.from_hash(raw) if raw else None)
            for g, raw in zip(targets, raws, strict=True)
        }

    def makes_visible(self, stream_id: str) -> bool:
        """Whether clients wait for this projection to show the stream's commands."""
        return split_stream_id(stream_id)[0] in self.visible_for

    def _call(
        self,
        event: RecordedEvent,
        change: ViewChange,
        targets: Sequence[int],
        *,
        expect_live: str,
        expect_building: str,
        live_block: int,
        record_command: bool,
        notify: bool,
    ) -> tuple[list[str], list[Any]]:
        stream_id = change.stream_id
        command_id = str(event.metadata.command_id)
        index_keys = change.index_keys()
        position_of = {
            suffix: i for i, suffix in enumerate(index_keys, scripts.BLOCK_FIXED_KEYS + 1)
        }
        per_block = scripts.BLOCK_FIXED_KEYS + len(index_keys)

        (status_key, legacy_status_key), status_field = status_store.location(
            self.root_keys, command_id
        )
        keys = [
            self.keys.generation,
            self.keys.rebuilding,
            status_key,
            self.keys.writes,
            legacy_status_key,
        ]
        for generation in targets:
            view_keys = self.keys.views(generation)
            keys += [
                view_keys.key(change.view_key),
                view_keys.checkpoint,
                view_keys.key(change.history_key or change.view_key),
            ]
            keys += [view_keys.key(suffix) for suffix in index_keys]

        fields: list[str] = []
        for name, value in change.fields.items():
            fields += [name, value]
        added: list[str | int] = []
        for suffix, score, member in change.zadd:
            added += [position_of[suffix], score, member]
        removed: list[str | int] = []
        for suffix, member in change.zrem:
            removed += [position_of[suffix], member]
        counted: list[str | int] = []
        for suffix, name, delta in change.hincrby:
            counted += [position_of[suffix], name, delta]
        ranked: list[str | int] = []
        for suffix, member, delta in change.zincrby:
            ranked += [position_of[suffix], member, delta]
        history = [entry.decode() for entry in change.history]
        encoded = orjson.dumps([fields, history, added, removed, counted, ranked])
        named: dict[str, Any] = {
            "expect_live": expect_live,
            "expect_building": expect_building,
            "version": change.version,
            "first": change.first_version,
            "position": event.position,
            "blocks": len(targets),
            "per_block": per_block,
            "live_block": live_block,
        }
        if record_command:
            metadata = event.metadata
            items = status_items(
                command_id, metadata.command_type or event.type, stream_id, version=change.version
            )
            named["command"] = {
                "fill": items,
                "set": {"status": CommandStatus.SUCCEEDED.value},
                "projected": change.version,
                "ttl_s": self.status_ttl_s,
            }
        if notify:
            named["notify"] = [
                [
                    self.root_keys.command_outcomes_channel,
                    projected_command_message(command_id, stream_id, change.version).decode(),
                ],
                [
                    self.keys.versions_channel,
                    stream_version_message(stream_id, change.version).decode(),
                ],
            ]
        return keys, [orjson.dumps(named), encoded, status_field if record_command else b""]

    async def apply_live(
        self, event: RecordedEvent, change: ViewChange, generations: Generations
    ) -> ApplyResult:
        """Apply to every current target, notify waiters, record the command's projection."""
        records = self.makes_visible(event.stream_id)
        keys, args = self._call(
            event,
            change,
            generations.targets,
            expect_live=str(generations.live or ""),
            expect_building=str(generations.building or ""),
            live_block=1 if generations.live is not None else 0,
            record_command=records,
            notify=records,
        )
        raw = await self._apply_script(keys, args)
        return self._result(raw, generations.targets, generations.live)

    async def _apply_script(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One EVALSHA of APPLY, sharing a round trip with the other handlers' calls."""

        async def stage(pipe: Pipeline) -> None:
            # A Redis that restarted or flushed its scripts: the pipeline loads it and calls again.
            await self._apply(keys, args, client=pipe)

        [reply] = await self._pipeline.run(stage)
        return reply

    async def replay_into(
        self,
        pipe: Pipeline,
        event: RecordedEvent,
        change: ViewChange,
        generation: int,
        *,
        record_commands: bool,
    ) -> None:
        """Queue an apply into the generation a rebuild fills (valid while its marker is set).
        A change may fold a run of consecutive events of one stream (`event` its last); such a
        run records no command status."""
        assert change.first_version == change.version or not record_commands
        keys, args = self._call(
            event,
            change,
            (generation,),
            expect_live="*",
            expect_building=str(generation),
            live_block=0,
            record_command=record_commands and self.makes_visible(event.stream_id),
            notify=False,
        )
        await self._apply(keys=keys, args=args, client=pipe)

    @staticmethod
    def _result(raw: Sequence[int], targets: Sequence[int], live: int | None) -> ApplyResult:
        if raw[0] == scripts.APPLY_EMPTY:
            return ApplyResult(empty=True)
        if raw[0] == scripts.APPLY_STALE:
            return ApplyResult(stale=True)
        blocks = tuple(
            BlockResult(generation, int(raw[3 * i]), int(raw[3 * i + 1]), int(raw[3 * i + 2]))
            for i, generation in enumerate(targets)
        )
        return ApplyResult(blocks=blocks, live=live, writes_before=int(raw[3 * len(targets)]))

    def result_of(self, raw: Sequence[int], generation: int) -> ApplyResult:
        """Decode the reply of a call queued by `replay_into` (into a generation queries do not
        read yet)."""
        return self._result(raw, (generation,), None)

    async def close(self) -> None:
        await self._pipeline.close()

    async def advance(self, position: int) -> None:
        """Move the checkpoints of the generations being written up to `position`, which the
        projection passed without a change."""
        await self._advance(
            keys=[self.keys.generation, self.keys.rebuilding],
            args=[self.keys.prefix, position, CHECKPOINT],
        )

    async def live_state(self) -> LiveState | None:
        """The write count, the generation queries read, its checkpoint and the server's
        identity, read atomically (MULTI, checking that the pointer is still the one read
        first); None without such a generation."""
        pointer = await self.redis.get(self.keys.generation)
        while (live := _int(pointer)) is not None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.get(self.keys.writes)
                pipe.get(self.keys.generation)
                pipe.get(self.keys.views(live).checkpoint)
                pipe.info("server")
                writes, pointer, checkpoint, server = await pipe.execute()
            if _int(pointer) == live:
                run_id = str(server.get("run_id", ""))
                return LiveState(_int(writes) or 0, live, _int(checkpoint) or 0, run_id)
        return None

    async def checkpoint(self, generation: int) -> int:
        value = await self.redis.get(self.keys.views(generation).checkpoint)
        return int(value) if value else 0
