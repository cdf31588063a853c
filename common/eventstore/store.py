"""Appending to and reading from the event store.

Appends: one call of the `append_to_stream` SQL function per command. The unique key
(stream_id, version) turns a stale expected version into `WrongExpectedVersion`; the primary key
of `commands` turns a redelivered command into `DuplicateCommand`. Both fail loudly: nothing is
ever silently dropped.

Reads in global order: positions come from a sequence when a row is inserted, but transactions
commit in another order, so "everything below the highest position I can see" is not final: a
transaction that took position 7 may still commit after 8 was read. `read_horizon` finds a
position below which the log is final: it reads the sequence's last value P, *then* the
transaction ids R of the appenders running at that moment: the transactions of this database
that hold the shared advisory lock `APPEND_LOCK`. Only those can hold positions: every insert
into `events` takes the lock and its transaction id before it takes a position (the append
functions as their first statements, any other insert through a statement trigger; see
`schema.py`). So every transaction that took a position <= P held the lock and had its id
before P was read, and keeps both until it ends: when R is read it has ended or it is in R.
(Missing from either `pg_locks` or `pg_stat_activity` means ended: PostgreSQL clears a
backend's transaction id when its outcome becomes visible, and releases its locks after that.)
Once every transaction in R has ended, every position <= P is committed and visible or rolled
back for good. A transaction that takes the lock after P was read takes positions > P: it
cannot make the horizon wrong, and it is not waited for. Nor is a write transaction on another
table, which never takes the lock: a `psql` session left open during a manual fix holds no
position back.

Not a snapshot's xmax: PostgreSQL sets it to the latest *completed* id + 1, so a running
transaction with a newer id than the last one to finish is in no snapshot's list of running ids.
A relay trusting it skipped the events of such a transaction (seen under load: two batches
committing out of order).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from common.contracts.envelopes import EventMetadata, RecordedEvent


class WrongExpectedVersion(Exception):
    """Another writer appended to the stream since it was loaded."""


class DuplicateCommand(Exception):
    """The command was handled before; its recorded outcome stands."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    event_id: UUID
    type: str
    data: dict[str, Any]
    metadata: EventMetadata
    schema_version: int = 1


@dataclass(frozen=True, slots=True)
class StoredEvent:
    version: int
    type: str
    data: dict[str, Any]
    schema_version: int = 1


@dataclass(frozen=True, slots=True)
class CommandRecord:
    command_id: UUID
    type: str
    stream_id: str
    status: str
    reason: str | None
    version: int
    fingerprint: str | None
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """One command's part of a batch: its outcome row and the events it appends (maybe none)."""

    command_id: UUID
    command_type: str
    stream_id: str
    status: str
    reason: str | None
    version: int
    """The stream's version after the command."""
    fingerprint: str | None
    events: Sequence[NewEvent] = ()


@dataclass(frozen=True, slots=True)
class Horizon:
    """Positions up to `last_position` are final once the transactions `running` have ended."""

    last_position: int
    running: tuple[int, ...] = ()
    """Ids (32-bit, as `pg_stat_activity` shows them) of the appenders (holders of
    `APPEND_LOCK` in this database) that were running right after `last_position` was read."""

    @property
    def final(self) -> bool:
        return not self.running


@dataclass(frozen=True, slots=True)
class Appender:
    """The session of an appender whose transaction the horizon is waiting for, as
    `pg_stat_activity` shows it: enough to find it (a forgotten `psql` session, a stuck
    worker)."""

    pid: int
    application_name: str
    client_addr: str | None
    """None for a Unix socket."""
    state: str | None
    query_start: datetime | None
    transaction_id: int

    def __str__(self) -> str:
        started = self.query_start.isoformat() if self.query_start is not None else None
        return (
            f"pid {self.pid} (application_name {self.application_name!r}, client"
            f" {self.client_addr or 'local'}, state {self.state}, query_start {started},"
            f" transaction {self.transaction_id})"
        )


@dataclass(frozen=True, slots=True)
class HeldBack:
    """The horizon has waited `waited_s` so far for `appenders` to end their transactions."""

    waited_s: float
    appenders: tuple[Appender, ...]


@dataclass(frozen=True, slots=True)
class Partition:
    """Every stream belongs to exactly one of `count` partitions (by a hash of its id), so
    partitions can be replayed side by side, each stream in order."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Partition:
        """`"i/n"`, 0 <= i < n."""
        index, _, count = text.partition("/")
        partition = cls(int(index), int(count))
        if not 0 <= partition.index < partition.count:
            raise ValueError(f"not a partition: {text!r}")
        return partition

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True, slots=True)
class Backlog:
    """What lies after a reader's position in the log."""

    positions: int
    """The log's head position minus the reader's (0 when it is at the head or beyond)."""
    oldest_age_s: float
    """How long the first event after the reader's position has been committed; 0 if none."""


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _stored(row: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        row["version"], row["type"], orjson.loads(row["data"]), row["schema_version"]
    )


def _record(row: asyncpg.Record) -> RecordedEvent:
    return RecordedEvent(
        event_id=row["event_id"],
        position=row["position"],
        stream_id=row["stream_id"],
        version=row["version"],
        type=row["type"],
        schema_version=row["schema_version"],
        data=orjson.loads(row["data"]),
        metadata=EventMetadata.model_validate_json(row["metadata"]),
        recorded_at=row["recorded_at"],
    )


_RUNNING_HERE = "SELECT running_transactions()"
"""The ids of the running appenders' transactions (a PL/pgSQL function, see `schema.py`, which
`read_horizon` also calls). `pg_stat_activity` shows every backend's transaction id to any
user, from the id the backend holds, not from a snapshot. Transactions that do not hold
`APPEND_LOCK` cannot take positions, and are left out: one left open (a report, a forgotten
session, a migration, a transaction in another database) would otherwise stop the relay."""

_APPENDERS = (
    "SELECT pid, application_name, host(client_addr) AS client_addr, state, query_start,"
    " backend_xid::text::bigint AS transaction_id FROM pg_stat_activity"
    " WHERE datname = current_database() AND backend_xid::text::bigint = ANY($1::bigint[])"
    " ORDER BY pid"
)

EVENT_COLUMNS = (
    "position, stream_id, version, event_id, type, schema_version, data, metadata, recorded_at"
)


class EventStore:
    """The event store over a connection pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def load_stream(self, stream_id: str) -> list[StoredEvent]:
        rows = await self.pool.fetch(
            "SELECT version, type, data, schema_version FROM events WHERE stream_id = $1"
            " ORDER BY version",
            stream_id,
        )
        return [_stored(r) for r in rows]

    async def append_to_stream(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int,
        *,
        command_id: UUID,
        command_type: str,
        fingerprint: str | None,
    ) -> list[int]:
        """Append `events` after `expected_version` and record the command, atomically.
        Returns the events' global positions."""
        try:
            positions = await self.pool.fetchval(
                "SELECT append_to_stream($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb[],"
                " $10::jsonb[])",
                command_id,
                command_type,
                stream_id,
                expected_version,
                fingerprint,
                [e.event_id for e in events],
                [e.type for e in events],
                [e.schema_version for e in events],
                [_json(e.data) for e in events],
                [e.metadata.model_dump_json() for e in events],
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "commands_pkey":
                raise DuplicateCommand(str(command_id)) from exc
            if exc.constraint_name == "events_stream_version_key":
                raise WrongExpectedVersion(f"{stream_id}@{expected_version}") from exc
            raise
        return list(positions)

    async def load_streams(
        self, conn: asyncpg.Connection, stream_ids: Sequence[str]
    ) -> dict[str, list[StoredEvent]]:
        """Every event of each stream, in version order; one round trip."""
        rows = await conn.fetch(
            "SELECT stream_id, version, type, data, schema_version FROM events"
            " WHERE stream_id = ANY($1::text[]) ORDER BY stream_id, version",
            list(stream_ids),
        )
        streams: dict[str, list[StoredEvent]] = {sid: [] for sid in stream_ids}
        for r in rows:
            streams[r["stream_id"]].append(_stored(r))
        return streams

    async def get_commands(
        self, conn: asyncpg.Connection, command_ids: Sequence[UUID]
    ) -> dict[UUID, CommandRecord]:
        rows = await conn.fetch(
            "SELECT command_id, type, stream_id, status, reason, version, fingerprint,"
            " recorded_at FROM commands WHERE command_id = ANY($1::uuid[])",
            list(command_ids),
        )
        return {r["command_id"]: CommandRecord(**dict(r)) for r in rows}

    async def append_batch(
        self, conn: asyncpg.Connection, outcomes: Sequence[CommandOutcome]
    ) -> None:
        """Record every outcome and append every event in one transaction. Events of a command
        take versions `version - len(events) + 1 .. version` of its stream. Any conflict fails
        the whole batch: `WrongExpectedVersion` or `DuplicateCommand`."""
        event_rows = [
            (o.stream_id, o.version - len(o.events) + i, e)
            for o in outcomes
            for i, e in enumerate(o.events, start=1)
        ]
        try:
            await conn.execute(
                "SELECT append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,"
                " $13::jsonb[], $14::jsonb[])",
                [o.command_id for o in outcomes],
                [o.command_type for o in outcomes],
                [o.stream_id for o in outcomes],
                [o.status for o in outcomes],
                [o.reason for o in outcomes],
                [o.version for o in outcomes],
                [o.fingerprint for o in outcomes],
                [stream for stream, _, _ in event_rows],
                [version for _, version, _ in event_rows],
                [e.event_id for _, _, e in event_rows],
                [e.type for _, _, e in event_rows],
                [e.schema_version for _, _, e in event_rows],
                [_json(e.data) for _, _, e in event_rows],
                [e.metadata.model_dump_json() for _, _, e in event_rows],
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "commands_pkey":
                raise DuplicateCommand(exc.detail or "") from exc
            if exc.constraint_name == "events_stream_version_key":
                raise WrongExpectedVersion(exc.detail or "") from exc
            raise

    async def record_command(
        self,
        *,
        command_id: UUID,
        command_type: str,
        stream_id: str,
        status: str,
        reason: str | None,
        version: int,
        fingerprint: str | None,
    ) -> CommandRecord:
        """Record a command that appended nothing (rejected or failed); first record wins."""
        await self.pool.execute(
            "INSERT INTO commands (command_id, type, stream_id, status, reason, version,"
            " fingerprint) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (command_id) DO NOTHING",
            command_id,
            command_type,
            stream_id,
            status,
            reason,
            version,
            fingerprint,
        )
        record = await self.get_command(command_id)
        assert record is not None
        return record

    async def read_commands(
        self, after: UUID | None, limit: int, recorded_since: datetime | None = None
    ) -> list[CommandRecord]:
        """Up to `limit` recorded commands with ids after `after`, in id order (to page through
        them all); with `recorded_since`, only those recorded since then."""
        rows = await self.pool.fetch(
            "SELECT command_id, type, stream_id, status, reason, version, fingerprint,"
            " recorded_at FROM commands WHERE ($1::uuid IS NULL OR command_id > $1)"
            " AND ($3::timestamptz IS NULL OR recorded_at >= $3)"
            " ORDER BY command_id LIMIT $2",
            after,
            limit,
            recorded_since,
        )
        return [CommandRecord(**dict(r)) for r in rows]

    async def get_command(self, command_id: UUID) -> CommandRecord | None:
        row = await self.pool.fetchrow(
            "SELECT command_id, type, stream_id, status, reason, version, fingerprint,"
            " recorded_at FROM commands WHERE command_id = $1",
            command_id,
        )
        return CommandRecord(**dict(row)) if row is not None else None

    # --- reading the log in global order ---------------------------------------------------

    @staticmethod
    async def read_horizon(conn: asyncpg.Connection) -> Horizon:
        """The `read_horizon` SQL function: the two reads in order, in one round trip. Call it
        outside a transaction block, or first in one: `pg_stat_activity` is read once per
        transaction and then kept."""
        row = await conn.fetchrow("SELECT last_position, running FROM read_horizon()")
        return Horizon(last_position=row["last_position"], running=tuple(row["running"]))

    @staticmethod
    async def wait_until_final(
        conn: asyncpg.Connection,
        horizon: Horizon,
        *,
        poll_s: float = 0.0005,
        wake: asyncio.Event | None = None,
        held_back: Callable[[HeldBack], None] | None = None,
        held_back_every_s: float = 1.0,
    ) -> None:
        """Wait until every transaction in `horizon.running` has ended.

        Appends last milliseconds, so the poll starts at half a millisecond and never sleeps
        more than 5 ms: the wait adds at most that to an event's way to the projectors. `wake`,
        set when an append commits (the relay's NOTIFY listener), cuts a sleep short. (An id is
        only reused after 2^32 others, so a new transaction is never mistaken for one of
        these.) `held_back` is told who is still being waited for once `held_back_every_s` has
        passed, and again every `held_back_every_s` until the wait ends."""
        waiting = set(horizon.running)
        delay = poll_s
        started = time.monotonic()
        report_at = started + held_back_every_s
        while waiting:
            if wake is not None:
                wake.clear()  # before the read: a commit after it still wakes the sleep below
            waiting.intersection_update(await conn.fetchval(_RUNNING_HERE))
            if not waiting:
                return
            now = time.monotonic()
            if held_back is not None and now >= report_at:
                rows = await conn.fetch(_APPENDERS, sorted(waiting))
                held_back(HeldBack(now - started, tuple(Appender(**dict(r)) for r in rows)))
                report_at = now + held_back_every_s
            if wake is None:
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), delay)
            delay = min(delay * 2, 0.005)

    @staticmethod
    async def read_range(
        conn: asyncpg.Connection,
        after: int,
        up_to: int,
        limit: int,
        partition: Partition | None = None,
    ) -> list[RecordedEvent]:
        """Committed events with after < position <= up_to, in position order; with a
        `partition`, only the events of its streams."""
        if partition is None or partition.count == 1:
            rows = await conn.fetch(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 AND position <= $2"
                " ORDER BY position LIMIT $3",
                after,
                up_to,
                limit,
            )
        else:
            rows = await conn.fetch(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 AND position <= $2"
                " AND (hashtext(stream_id) & 2147483647) % $4 = $5 ORDER BY position LIMIT $3",
                after,
                up_to,
                limit,
                partition.count,
                partition.index,
            )
        return [_record(r) for r in rows]

    async def read_stream(self, stream_id: str) -> list[RecordedEvent]:
        rows = await self.pool.fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 ORDER BY version", stream_id
        )
        return [_record(r) for r in rows]

    async def backlog_after(self, position: int) -> Backlog:
        """How far a reader at `position` is behind the log, in positions and in seconds."""
        row = await self.pool.fetchrow(
            "SELECT (SELECT coalesce(max(position), 0) FROM events) AS head,"
            " (SELECT extract(epoch FROM clock_timestamp() - recorded_at)::float8 FROM events"
            "  WHERE position > $1 ORDER BY position LIMIT 1) AS age",
            position,
        )
        assert row is not None
        return Backlog(max(int(row["head"]) - position, 0), max(float(row["age"] or 0.0), 0.0))

    async def position_before(self, position: int, seconds: float) -> tuple[int, datetime | None]:
        """The last position recorded at least `seconds` before the event at `position`, and
        that moment: (0, None) when there is no such event, (0, the moment) when the log starts
        later. Walks the primary key back from `position`: its cost grows with the events of
        those seconds, not with the log."""
        row = await self.pool.fetchrow(
            "WITH at AS (SELECT recorded_at - make_interval(secs => $2) AS moment FROM events"
            " WHERE position = $1)"
            " SELECT (SELECT moment FROM at) AS moment, coalesce((SELECT position FROM events"
            " WHERE position <= $1 AND recorded_at <= (SELECT moment FROM at)"
            " ORDER BY position DESC LIMIT 1), 0) AS position",
            position,
            float(seconds),
        )
        assert row is not None
        return int(row["position"]), row["moment"]

    async def stream_versions(self, after: int, up_to: int) -> list[tuple[str, int]]:
        """Each stream with events at positions in (after, up_to], and its highest version
        among them."""
        rows = await self.pool.fetch(
            "SELECT stream_id, max(version) AS version FROM events"
            " WHERE position > $1 AND position <= $2 GROUP BY stream_id",
            after,
            up_to,
        )
        return [(r["stream_id"], int(r["version"])) for r in rows]

    async def head(self) -> int:
        """The highest position committed so far (0 for an empty log)."""
        return int(await self.pool.fetchval("SELECT coalesce(max(position), 0) FROM events"))

    @staticmethod
    async def get_checkpoint(conn: asyncpg.Connection, name: str) -> int:
        value = await conn.fetchval("SELECT position FROM checkpoints WHERE name = $1", name)
        return int(value) if value is not None else 0

    @staticmethod
    async def set_checkpoint(conn: asyncpg.Connection, name: str, position: int) -> None:
        await conn.execute(
            "INSERT INTO checkpoints (name, position) VALUES ($1, $2)"
            " ON CONFLICT (name) DO UPDATE SET position = GREATEST(checkpoints.position,"
            " EXCLUDED.position)",
            name,
            position,
        )
