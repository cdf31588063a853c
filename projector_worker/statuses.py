"""Writing command statuses back from the event store's command ledger, for a rebuild of views
Redis lost and for a recovery after Redis lost writes."""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import datetime, timedelta

from redis.asyncio import Redis
from redis.exceptions import RedisError

from common.eventstore.store import CommandRecord, EventStore
from common.readmodel import status_store
from common.readmodel.commands import TERMINAL, CommandStatus, status_items
from common.readmodel.keys import Keys
from common.readmodel.pipelining import shared_script
from projector_worker.redis_views import ViewWriter

COMMAND_BATCH = 2_000

log = logging.getLogger(__name__)


async def restore_command_statuses(
    writer: ViewWriter, store: EventStore, since: datetime, *, only_unsettled: bool = False
) -> int:
    """Write the recorded outcome of every command recorded since `since` on a stream `writer`'s
    projection makes visible back to its status, each expiring when it would have; the
    statuses written. With `only_unsettled`, only where the hash is missing or shows no outcome
    yet (`accepted`): a status that has one is left as it is."""
    restored = 0
    last = None
    ttl = timedelta(seconds=writer.status_ttl_s)
    write_status = shared_script(status_store.WRITE_STATUS)
    while True:
        records = await store.read_commands(last, COMMAND_BATCH, since)
        if not records:
            return restored
        last = records[-1].command_id
        visible = [r for r in records if writer.makes_visible(r.stream_id)]
        if only_unsettled:
            visible = await _unsettled(writer, visible)
        async with writer.redis.pipeline(transaction=False) as pipe:
            for record in visible:
                items = status_items(
                    record.command_id,
                    record.type,
                    record.stream_id,
                    status=CommandStatus(record.status),
                    reason=record.reason,
                    version=record.version,
                    fingerprint=record.fingerprint,
                )
                expires_at = math.ceil((record.recorded_at + ttl).timestamp())
                write = {"set": items, "expires_at": expires_at}
                names, field = status_store.location(writer.root_keys, record.command_id)
                args = [field, status_store.write_args(write)]
                await write_status(names, args, client=pipe)
            await pipe.execute()
        restored += len(visible)


async def _unsettled(writer: ViewWriter, records: list[CommandRecord]) -> list[CommandRecord]:
    """The records whose status is missing or not terminal."""
    read_status = shared_script(status_store.READ_STATUS)
    async with writer.redis.pipeline(transaction=False) as pipe:
        for record in records:
            names, field = status_store.location(writer.root_keys, record.command_id)
            await read_status(names, [field], client=pipe)
        statuses = [status_store.decode(raw) for raw in await pipe.execute()]
    terminal = {status.value for status in TERMINAL}
    return [
        r
        for r, status in zip(records, statuses, strict=True)
        if status is None or status.get("status") not in terminal
    ]


async def sweep_expired_statuses(redis: Redis, keys: Keys, ttl_s: int) -> None:
    """Forever: every `status_store.sweep_interval_s(ttl_s)`, delete the expired command
    statuses. One projector of the deployment sweeps per interval (whichever takes the lease);
    readers never see an expired status anyway, so a missed sweep only holds memory longer."""
    interval = status_store.sweep_interval_s(ttl_s)
    while True:
        await asyncio.sleep(interval)
        try:
            if await redis.set(keys.status_sweep_lease, "1", nx=True, px=int(interval * 1000)):
                removed = await status_store.sweep_statuses(redis, keys)
                if removed:
                    log.info("expired command statuses deleted", extra={"removed": removed})
        except RedisError as exc:
            log.warning("command statuses not swept: %r", exc)
