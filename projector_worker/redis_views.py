"""Writing view changes to Redis: one APPLY script call per event, pipelined where it can be."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from common.contracts.envelopes import RecordedEvent
from common.readmodel.keys import Keys
from common.readmodel.notifications import order_version_message, projected_command_message
from common.readmodel.order_view import OrderView
from common.readmodel.pipelining import AutoPipeline
from common.settings import Settings
from projector_worker import scripts
from projector_worker.projection import COMMAND_OF_EVENT, RunChange, ViewChange

REDIS_CONNECTIONS = 32
"""Redis connections per projector; handlers beyond that queue for one instead of opening more."""


def open_redis(settings: Settings) -> Redis:
    """The projector's (and a rebuild's) Redis client."""
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=REDIS_CONNECTIONS,
        timeout=30,
        socket_connect_timeout=5,
        socket_timeout=30,
    )
    return Redis(connection_pool=pool)


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


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one APPLY call did: `empty` or `stale` (nothing written), else one result per
    generation written to."""

    empty: bool = False
    stale: bool = False
    blocks: tuple[BlockResult, ...] = ()

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


def _int(value: bytes | str | None) -> int | None:
    return int(value) if value else None


class ViewWriter:
    """The projector's access to the views; one per process, shared by every handler."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._apply = redis.register_script(scripts.APPLY)
        self._pipeline = AutoPipeline(redis)

    async def generations(self) -> Generations:
        live, building = await self.redis.mget(self.keys.generation, self.keys.rebuilding)
        return Generations(_int(live), _int(building))

    async def read_views(
        self, order_id: str, generations: Iterable[int]
    ) -> dict[int, OrderView | None]:
        """The order's view in each generation (None where it does not exist), one round trip."""
        targets = list(generations)
        async with self.redis.pipeline(transaction=False) as pipe:
            for generation in targets:
                pipe.hgetall(self.keys.views(generation).order(order_id))
            raws = await pipe.execute()
        return {
            g: (OrderView.from_hash(raw) if raw else None)
            for g, raw in zip(targets, raws, strict=True)
        }

    def _call(
        self,
        event: RecordedEvent,
        change: ViewChange,
        targets: Sequence[int],
        *,
        expect_live: str,
        expect_building: str,
        live_block: int,
        flags: int,
        run: RunChange | None = None,
    ) -> tuple[list[str], list[Any]]:
        order_id = change.view.order_id
        command_id = str(event.metadata.command_id)
        index_keys = change.index_keys()
        position_of = {
            suffix: i for i, suffix in enumerate(index_keys, scripts.BLOCK_FIXED_KEYS + 1)
        }
        per_block = scripts.BLOCK_FIXED_KEYS + len(index_keys)

        keys = [self.keys.generation, self.keys.rebuilding, self.keys.command(command_id)]
        for generation in targets:
            view_keys = self.keys.views(generation)
            keys += [
                view_keys.key(change.order_key),
                view_keys.checkpoint,
                view_keys.members,
                view_keys.key(change.history_key),
            ]
            keys += [view_keys.key(suffix) for suffix in index_keys]

        fields: list[str] = []
        for name, value in change.view.to_hash().items():
            fields += [name, value]
        added: list[str | int] = []
        for suffix, score, member in change.zadd:
            added += [position_of[suffix], score, member]
        removed: list[str | int] = []
        for suffix, member in change.zrem:
            removed += [position_of[suffix], member]
        history = run.history if run is not None else (change.history_entry,)
        encoded = orjson.dumps([fields, [entry.decode() for entry in history], added, removed])
        publish = flags & scripts.FLAG_PUBLISH
        args: list[Any] = [
            expect_live,
            expect_building,
            event.version,
            event.position,
            len(targets),
            per_block,
            live_block,
            flags,
            command_id,
            COMMAND_OF_EVENT.get(event.type, event.type),
            order_id,
            self.keys.command_outcomes_channel,
            projected_command_message(command_id, order_id, event.version) if publish else b"",
            self.keys.order_versions_channel,
            order_version_message(order_id, event.version) if publish else b"",
            encoded,
        ]
        if run is not None:
            args.append(run.first_version)
        return keys, args

    async def apply_live(
        self, event: RecordedEvent, change: ViewChange, generations: Generations
    ) -> ApplyResult:
        """Apply to every current target, notify waiters, record the command's projection."""
        keys, args = self._call(
            event,
            change,
            generations.targets,
            expect_live=str(generations.live or ""),
            expect_building=str(generations.building or ""),
            live_block=1 if generations.live is not None else 0,
            flags=scripts.FLAG_PUBLISH | scripts.FLAG_RECORD_COMMAND,
        )
        raw = await self._apply_script(keys, args)
        return self._result(raw, generations.targets)

    async def _apply_script(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One EVALSHA of APPLY, sharing a round trip with the other handlers' calls."""

        async def stage(pipe: Pipeline) -> None:
            pipe.evalsha(self._apply.sha, len(keys), *keys, *args)

        try:
            [reply] = await self._pipeline.run(stage)
        except NoScriptError:
            # Redis restarted or flushed its script cache: load it once, call again.
            self._apply.sha = await self.redis.script_load(self._apply.script)
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
        run: RunChange | None = None,
    ) -> None:
        """Queue an apply into the generation a rebuild fills (valid while its marker is set).
        With `run`, a run of consecutive events of one order goes as one apply (`event` its
        last, `change` its folded change); a run records no command status."""
        assert run is None or not record_commands, "a run records no command status"
        keys, args = self._call(
            event,
            change,
            (generation,),
            expect_live="*",
            expect_building=str(generation),
            live_block=0,
            flags=scripts.FLAG_RECORD_COMMAND if record_commands else 0,
            run=run,
        )
        await self._apply(keys=keys, args=args, client=pipe)

    @staticmethod
    def _result(raw: Sequence[int], targets: Sequence[int]) -> ApplyResult:
        if raw[0] == scripts.APPLY_EMPTY:
            return ApplyResult(empty=True)
        if raw[0] == scripts.APPLY_STALE:
            return ApplyResult(stale=True)
        blocks = tuple(
            BlockResult(generation, int(raw[2 * i]), int(raw[2 * i + 1]))
            for i, generation in enumerate(targets)
        )
        return ApplyResult(blocks=blocks)

    def result_of(self, raw: Sequence[int], generation: int) -> ApplyResult:
        """Decode the reply of a call queued by `replay_into`."""
        return self._result(raw, (generation,))

    async def close(self) -> None:
        await self._pipeline.close()

    async def checkpoint(self, generation: int) -> int:
        value = await self.redis.get(self.keys.views(generation).checkpoint)
        return int(value) if value else 0
