"""Automatic pipelining of the Redis calls that concurrent tasks make.

Through redis-py's client API one round trip costs ~100 us of CPU (pool, retry and
observability layers), often more than the work it carries; one per request or per event would
halve a process's throughput and, under load, run the connection pool dry. Callers hand their
commands to one flusher task instead, which writes everything queued since its last round trip
in one packed write on a connection it keeps, and parses the replies with the client's own
parser and reply callbacks: one connection, batches that grow with the load, no added latency
when idle. The gateway sends its status and idempotency writes this way, the projector its
APPLY script calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import AbstractConnection, Connection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

log = logging.getLogger(__name__)

Stage = Callable[[Pipeline], Awaitable[object]]
"""Stages commands on the pipeline it is given. Calls on a pipeline only queue a command, so
any function written for a `Redis` client works, e.g. `lambda p: mark_accepted(p, ...)`."""

_Pending = tuple[Stage, "asyncio.Future[list[Any]]"]
Commands = list[tuple[tuple[str | bytes, ...], Mapping[str, Any]]]
Scripts = dict[str, Any]
"""The Lua source of every script a batch calls by `EVALSHA`, by SHA."""


@functools.cache
def shared_script(source: str) -> AsyncScript:
    """`source` as one script object for the whole process: its SHA computed once (hashing a
    status script on every request cost about 6 us), the same object whichever client or
    pipeline runs it. Call it with that client: `shared_script(S)(keys, args, client=pipe)`."""
    return AsyncScript(None, source.encode())  # type: ignore[arg-type]  # bytes: no encoder used


class AutoPipeline:
    """Runs the staged commands of many callers in shared round trips, in arrival order.

    Only for idempotent commands: a batch that fails on a kept connection is sent once more.
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._stage = redis.pipeline(transaction=False)
        """Only collects commands; never executed itself."""
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._connection: AbstractConnection | None = None

    async def run(self, stage: Stage) -> list[Any]:
        """The replies to the commands `stage` queues; an error reply is raised."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((stage, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="redis-autopipeline")
        return await future

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        await self._drop_connection()

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._send(batch)
        finally:
            self._flusher = None

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            commands, spans, scripts = await self._collect(batch)
            replies = await self._round_trip(commands)
            if scripts and any(isinstance(reply, NoScriptError) for reply in replies):
                replies = await self._load_and_resend(commands, replies, scripts)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), (start, end) in zip(batch, spans, strict=True):
            if future.done():
                continue
            mine = replies[start:end]
            error = next((reply for reply in mine if isinstance(reply, Exception)), None)
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(mine)

    async def _collect(
        self, batch: list[_Pending]
    ) -> tuple[Commands, list[tuple[int, int]], Scripts]:
        stage = self._stage
        stage.command_stack = []
        spans = []
        for queue, _ in batch:
            start = len(stage)
            await queue(stage)
            spans.append((start, len(stage)))
        commands = stage.command_stack
        stage.command_stack = []
        # A registered script called on a pipeline adds itself to its `scripts` (a pipeline
        # loads them before it executes; this one never executes): taken here, or the set
        # would keep one script object for every call ever staged.
        scripts = {script.sha: script.script for script in stage.scripts}
        stage.scripts.clear()
        return commands, spans, scripts

    async def _load_and_resend(
        self, commands: Commands, replies: list[Any], scripts: Scripts
    ) -> list[Any]:
        """Redis did not know some scripts (it restarted, failed over, or flushed its cache):
        load every script of the batch and send again the calls it refused. A refused call did
        not run, so sending it again runs it once."""
        for source in scripts.values():
            await self._round_trip([(("SCRIPT", "LOAD", source), {})])
        refused = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        again = await self._round_trip([commands[i] for i in refused])
        replies = list(replies)
        for i, reply in zip(refused, again, strict=True):
            replies[i] = reply
        return replies

    async def _round_trip(self, commands: Commands) -> list[Any]:
        reused = self._connection is not None
        try:
            return await self._exchange(commands)
        except (RedisConnectionError, OSError):
            if not reused:
                raise
        # A kept connection may have died while idle (Redis restarted): once more on a new one.
        # Safe because every staged command is idempotent (`SET NX`, status marks, and the
        # projector's version-checked APPLY).
        return await self._exchange(commands)

    async def _exchange(self, commands: Commands) -> list[Any]:
        if self._connection is None:
            pool = self._redis.connection_pool
            self._connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        connection = self._connection
        assert isinstance(connection, Connection)
        try:
            await connection.send_packed_command(
                connection.pack_commands([args for args, _ in commands])
            )
            replies: list[Any] = []
            for args, options in commands:
                try:
                    replies.append(await self._redis.parse_response(connection, args[0], **options))
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            # Replies may be left unread: the connection is out of step, never reuse it.
            await self._drop_connection()
            raise

    async def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect()
            with contextlib.suppress(Exception):
                await self._redis.connection_pool.release(connection)
