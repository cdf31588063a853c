"""One Lua script called by many concurrent handlers, sent in shared pipelines.

A redis-py round trip costs more CPU than the script itself; with hundreds of events in flight,
one round trip per event spends the projector's time in socket writes and runs the connection
pool dry. Handlers hand their calls to one flusher task instead, which sends everything queued
since its last round trip as one pipeline of EVALSHA: batches grow with the load, and an idle
projector adds no latency. (The gateway's `AutoPipeline` does the same for its writes; this
one is specialised for a single script so it needs no SCRIPT EXISTS round trip per batch.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

MAX_BATCH = 500

Call = tuple[Sequence[str], Sequence[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    """`await batcher(keys, args)` runs the script as EVALSHA, batched with other callers."""

    def __init__(self, redis: Redis, source: str) -> None:
        self._redis = redis
        self._script = redis.register_script(source)
        self._pending: list[Call] = []
        self._flusher: asyncio.Task[None] | None = None

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((keys, args, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="apply-batcher")
        return await future

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        for _keys, _args, future in self._pending:
            future.cancel()
        self._pending.clear()

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                await self._send(batch)
        finally:
            self._flusher = None

    async def _send(self, batch: list[Call]) -> None:
        try:
            replies = await self._execute(batch)
            if any(isinstance(reply, NoScriptError) for reply in replies):
                # Redis restarted or flushed its script cache: load once, send again.
                self._script.sha = await self._redis.script_load(self._script.script)
                replies = await self._execute(batch)
        except asyncio.CancelledError:
            for _keys, _args, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _keys, _args, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_keys, _args, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _execute(self, batch: list[Call]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args, _future in batch:
                pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))
