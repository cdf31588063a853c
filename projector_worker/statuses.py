"""Writing command statuses back from the event store's command ledger, for a rebuild of views
Redis lost and for a recovery after Redis lost writes."""

from __future__ import annotations

from datetime import datetime, timedelta

from common.eventstore.store import CommandRecord, EventStore
from common.readmodel.commands import TERMINAL, CommandStatus, status_fields
from projector_worker.redis_views import ViewWriter

COMMAND_BATCH = 2_000


async def restore_command_statuses(
    writer: ViewWriter, store: EventStore, since: datetime, *, only_unsettled: bool = False
) -> int:
    """Write the recorded outcome of every command recorded since `since` on a stream `writer`'s
    projection makes visible back to its status hash, each expiring when it would have; the
    statuses written. With `only_unsettled`, only where the hash is missing or shows no outcome
    yet (`accepted`): a status that has one is left as it is."""
    restored = 0
    last = None
    ttl = timedelta(seconds=writer.status_ttl_s)
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
                fields = status_fields(
                    record.command_id,
                    record.type,
                    record.stream_id,
                    status=CommandStatus(record.status),
                    reason=record.reason,
                    version=record.version,
                    fingerprint=record.fingerprint,
                )
                key = writer.root_keys.command(record.command_id)
                pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
                pipe.expireat(key, record.recorded_at + ttl)
            await pipe.execute()
        restored += len(visible)


async def _unsettled(writer: ViewWriter, records: list[CommandRecord]) -> list[CommandRecord]:
    """The records whose status hash is missing or not terminal."""
    async with writer.redis.pipeline(transaction=False) as pipe:
        for record in records:
            pipe.hget(writer.root_keys.command(record.command_id), "status")
        statuses = await pipe.execute()
    terminal = {status.value.encode() for status in TERMINAL}
    return [r for r, status in zip(records, statuses, strict=True) if status not in terminal]
