"""Schema migrations, applied in order under an advisory lock, each exactly once.

`append_to_stream` and `append_batch` are functions so an append is one round trip and one
transaction, and so their statements run in a known order: first the appender marks itself
with a transaction-level shared advisory lock on `APPEND_LOCK`, then the command rows are
written, which gives the transaction its id (xid8), and only then do the events take their
positions. The relay's gap-safe horizon (see `store.py`) depends on that order: it waits only
for transactions that hold the lock, so a write transaction on any other table (a `psql`
session left open during a manual fix) holds nothing back.

Every insert into `events` takes the lock and its transaction id first, not only these
functions' inserts: a statement trigger (migration 6) does both before the statement's first
row takes a position from the column's default (PostgreSQL fires BEFORE STATEMENT triggers
before the statement reads its first row), so a manual `INSERT` or `COPY` holds the horizon
back like an append does. An insert must not name its own `position` from a `nextval` taken
earlier: that position would have been taken without the lock.
"""

from __future__ import annotations

APPEND_LOCK = 0x6170_7065_6E64  # "append"
"""The key of the advisory lock (transaction-level, shared) every appender holds from its first
statement to its end. Shared: appenders never wait for each other."""
_APPEND_LOCK_IN_PG_LOCKS = (
    f"l.locktype = 'advisory' AND l.classid = {APPEND_LOCK >> 32}::oid"
    f" AND l.objid = {APPEND_LOCK & 0xFFFF_FFFF}::oid AND l.objsubid = 1"
)
"""How `pg_locks` shows the lock: a bigint key is split into classid (high half) and objid (low
half), with objsubid 1 (2 is for a key of two integers)."""

MIGRATIONS: tuple[str, ...] = (
    # 1: the log, the command ledger and the relay's progress.
    """
    CREATE TABLE events (
        position        bigserial   PRIMARY KEY,
        transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
        stream_id       text        NOT NULL,
        version         integer     NOT NULL CHECK (version > 0),
        event_id        uuid        NOT NULL UNIQUE,
        type            text        NOT NULL,
        data            jsonb       NOT NULL,
        metadata        jsonb       NOT NULL,
        recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
        CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
    );

    CREATE TABLE commands (
        command_id   uuid        PRIMARY KEY,
        type         text        NOT NULL,
        stream_id    text        NOT NULL,
        status       text        NOT NULL CHECK (status IN ('succeeded', 'rejected', 'failed')),
        reason       text,
        version      integer     NOT NULL,
        fingerprint  text,
        recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp()
    );

    CREATE TABLE checkpoints (
        name      text   PRIMARY KEY,
        position  bigint NOT NULL
    );

    CREATE FUNCTION append_to_stream(
        p_command_id uuid, p_command_type text, p_stream_id text, p_expected_version integer,
        p_fingerprint text, p_event_ids uuid[], p_types text[], p_data jsonb[], p_metadata jsonb[]
    ) RETURNS bigint[] LANGUAGE plpgsql AS $$
    DECLARE
        positions bigint[];
        n integer := cardinality(p_event_ids);
    BEGIN
        INSERT INTO commands (command_id, type, stream_id, status, version, fingerprint)
        VALUES (p_command_id, p_command_type, p_stream_id, 'succeeded',
                p_expected_version + n, p_fingerprint);
        WITH inserted AS (
            INSERT INTO events (stream_id, version, event_id, type, data, metadata)
            SELECT p_stream_id, p_expected_version + e.ord, e.event_id, e.type, e.data, e.metadata
            FROM unnest(p_event_ids, p_types, p_data, p_metadata)
                 WITH ORDINALITY AS e(event_id, type, data, metadata, ord)
            ORDER BY e.ord
            RETURNING position
        )
        SELECT array_agg(position ORDER BY position) INTO positions FROM inserted;
        PERFORM pg_notify('events_appended', '');
        RETURN positions;
    END
    $$;
    """,
    # 2: many commands' outcomes and events in one call, one transaction.
    """
    CREATE FUNCTION append_batch(
        p_command_ids uuid[], p_command_types text[], p_stream_ids text[], p_statuses text[],
        p_reasons text[], p_versions integer[], p_fingerprints text[],
        p_event_streams text[], p_event_versions integer[], p_event_ids uuid[],
        p_event_types text[], p_data jsonb[], p_metadata jsonb[]
    ) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO commands (command_id, type, stream_id, status, reason, version, fingerprint)
        SELECT * FROM unnest(p_command_ids, p_command_types, p_stream_ids, p_statuses,
                             p_reasons, p_versions, p_fingerprints);
        IF cardinality(p_event_ids) > 0 THEN
            INSERT INTO events (stream_id, version, event_id, type, data, metadata)
            SELECT e.stream_id, e.version, e.event_id, e.type, e.data, e.metadata
            FROM unnest(p_event_streams, p_event_versions, p_event_ids, p_event_types, p_data,
                        p_metadata) WITH ORDINALITY
                 AS e(stream_id, version, event_id, type, data, metadata, ord)
            ORDER BY e.ord;
            PERFORM pg_notify('events_appended', '');
        END IF;
    END
    $$;
    """,
    # 3: the relay's horizon in one round trip, its two reads in their required order.
    """
    CREATE FUNCTION running_transactions() RETURNS bigint[] LANGUAGE sql AS $$
        SELECT coalesce(array_agg(backend_xid::text::bigint), '{}')
        FROM pg_stat_activity
        WHERE datname = current_database() AND backend_xid IS NOT NULL
    $$;

    CREATE FUNCTION read_horizon(OUT last_position bigint, OUT running bigint[])
    LANGUAGE plpgsql AS $$
    BEGIN
        SELECT CASE WHEN is_called THEN last_value ELSE 0 END INTO last_position
        FROM events_position_seq;
        -- Read after the sequence: the function's first look at pg_stat_activity, so the
        -- statistics snapshot (kept for the rest of the transaction) is taken only now.
        running := running_transactions();
    END
    $$;
    """,
    # 4: `running_transactions` in PL/pgSQL, which keeps its query's plan for the session. As a
    # SQL function that PostgreSQL cannot inline, it was parsed and planned on every call: five
    # times the CPU of the query itself, paid on every horizon the relay reads.
    """
    CREATE OR REPLACE FUNCTION running_transactions() RETURNS bigint[] LANGUAGE plpgsql AS $$
    BEGIN
        RETURN (SELECT coalesce(array_agg(backend_xid::text::bigint), '{}')
                FROM pg_stat_activity
                WHERE datname = current_database() AND backend_xid IS NOT NULL);
    END
    $$;
    """,
    # 5: each event records the schema version of its type that its data follows, so domains
    # can change an event's shape and upcast the old ones when they are read.
    """
    ALTER TABLE events ADD COLUMN schema_version integer NOT NULL DEFAULT 1;

    DROP FUNCTION append_to_stream(uuid, text, text, integer, text, uuid[], text[], jsonb[],
                                   jsonb[]);
    CREATE FUNCTION append_to_stream(
        p_command_id uuid, p_command_type text, p_stream_id text, p_expected_version integer,
        p_fingerprint text, p_event_ids uuid[], p_types text[], p_schema_versions integer[],
        p_data jsonb[], p_metadata jsonb[]
    ) RETURNS bigint[] LANGUAGE plpgsql AS $$
    DECLARE
        positions bigint[];
        n integer := cardinality(p_event_ids);
    BEGIN
        INSERT INTO commands (command_id, type, stream_id, status, version, fingerprint)
        VALUES (p_command_id, p_command_type, p_stream_id, 'succeeded',
                p_expected_version + n, p_fingerprint);
        WITH inserted AS (
            INSERT INTO events (stream_id, version, event_id, type, schema_version, data,
                                metadata)
            SELECT p_stream_id, p_expected_version + e.ord, e.event_id, e.type,
                   e.schema_version, e.data, e.metadata
            FROM unnest(p_event_ids, p_types, p_schema_versions, p_data, p_metadata)
                 WITH ORDINALITY AS e(event_id, type, schema_version, data, metadata, ord)
            ORDER BY e.ord
            RETURNING position
        )
        SELECT array_agg(position ORDER BY position) INTO positions FROM inserted;
        PERFORM pg_notify('events_appended', '');
        RETURN positions;
    END
    $$;

    DROP FUNCTION append_batch(uuid[], text[], text[], text[], text[], integer[], text[],
                               text[], integer[], uuid[], text[], jsonb[], jsonb[]);
    CREATE FUNCTION append_batch(
        p_command_ids uuid[], p_command_types text[], p_stream_ids text[], p_statuses text[],
        p_reasons text[], p_versions integer[], p_fingerprints text[],
        p_event_streams text[], p_event_versions integer[], p_event_ids uuid[],
        p_event_types text[], p_schema_versions integer[], p_data jsonb[], p_metadata jsonb[]
    ) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO commands (command_id, type, stream_id, status, reason, version, fingerprint)
        SELECT * FROM unnest(p_command_ids, p_command_types, p_stream_ids, p_statuses,
                             p_reasons, p_versions, p_fingerprints);
        IF cardinality(p_event_ids) > 0 THEN
            INSERT INTO events (stream_id, version, event_id, type, schema_version, data,
                                metadata)
            SELECT e.stream_id, e.version, e.event_id, e.type, e.schema_version, e.data,
                   e.metadata
            FROM unnest(p_event_streams, p_event_versions, p_event_ids, p_event_types,
                        p_schema_versions, p_data, p_metadata) WITH ORDINALITY
                 AS e(stream_id, version, event_id, type, schema_version, data, metadata, ord)
            ORDER BY e.ord;
            PERFORM pg_notify('events_appended', '');
        END IF;
    END
    $$;
    """,
    # 6: only appenders hold the horizon back. Each marks itself with a shared advisory lock,
    # first thing in its transaction; `running_transactions` returns the ids of the lock's
    # holders only. Before, it returned every running transaction id of the database, so one
    # write transaction left open on any table stopped the relay.
    f"""
    CREATE OR REPLACE FUNCTION append_to_stream(
        p_command_id uuid, p_command_type text, p_stream_id text, p_expected_version integer,
        p_fingerprint text, p_event_ids uuid[], p_types text[], p_schema_versions integer[],
        p_data jsonb[], p_metadata jsonb[]
    ) RETURNS bigint[] LANGUAGE plpgsql AS $$
    DECLARE
        positions bigint[];
        n integer := cardinality(p_event_ids);
    BEGIN
        PERFORM pg_advisory_xact_lock_shared({APPEND_LOCK});
        INSERT INTO commands (command_id, type, stream_id, status, version, fingerprint)
        VALUES (p_command_id, p_command_type, p_stream_id, 'succeeded',
                p_expected_version + n, p_fingerprint);
        WITH inserted AS (
            INSERT INTO events (stream_id, version, event_id, type, schema_version, data,
                                metadata)
            SELECT p_stream_id, p_expected_version + e.ord, e.event_id, e.type,
                   e.schema_version, e.data, e.metadata
            FROM unnest(p_event_ids, p_types, p_schema_versions, p_data, p_metadata)
                 WITH ORDINALITY AS e(event_id, type, schema_version, data, metadata, ord)
            ORDER BY e.ord
            RETURNING position
        )
        SELECT array_agg(position ORDER BY position) INTO positions FROM inserted;
        PERFORM pg_notify('events_appended', '');
        RETURN positions;
    END
    $$;

    CREATE OR REPLACE FUNCTION append_batch(
        p_command_ids uuid[], p_command_types text[], p_stream_ids text[], p_statuses text[],
        p_reasons text[], p_versions integer[], p_fingerprints text[],
        p_event_streams text[], p_event_versions integer[], p_event_ids uuid[],
        p_event_types text[], p_schema_versions integer[], p_data jsonb[], p_metadata jsonb[]
    ) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock_shared({APPEND_LOCK});
        INSERT INTO commands (command_id, type, stream_id, status, reason, version, fingerprint)
        SELECT * FROM unnest(p_command_ids, p_command_types, p_stream_ids, p_statuses,
                             p_reasons, p_versions, p_fingerprints);
        IF cardinality(p_event_ids) > 0 THEN
            INSERT INTO events (stream_id, version, event_id, type, schema_version, data,
                                metadata)
            SELECT e.stream_id, e.version, e.event_id, e.type, e.schema_version, e.data,
                   e.metadata
            FROM unnest(p_event_streams, p_event_versions, p_event_ids, p_event_types,
                        p_schema_versions, p_data, p_metadata) WITH ORDINALITY
                 AS e(stream_id, version, event_id, type, schema_version, data, metadata, ord)
            ORDER BY e.ord;
            PERFORM pg_notify('events_appended', '');
        END IF;
    END
    $$;

    CREATE FUNCTION events_mark_the_appender() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- Both before the statement's first row takes its position: the lock, and the
        -- transaction id (which an insert would otherwise take only at its first row).
        PERFORM pg_advisory_xact_lock_shared({APPEND_LOCK});
        PERFORM pg_current_xact_id();
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER events_mark_the_appender BEFORE INSERT ON events
        FOR EACH STATEMENT EXECUTE FUNCTION events_mark_the_appender();

    CREATE OR REPLACE FUNCTION running_transactions() RETURNS bigint[] LANGUAGE plpgsql AS $$
    BEGIN
        RETURN (SELECT coalesce(array_agg(a.backend_xid::text::bigint), '{{}}')
                FROM pg_stat_activity a
                WHERE a.datname = current_database() AND a.backend_xid IS NOT NULL
                  AND a.pid IN (
                      SELECT l.pid FROM pg_locks l
                      WHERE {_APPEND_LOCK_IN_PG_LOCKS} AND l.granted
                        AND l.database = (SELECT oid FROM pg_database
                                          WHERE datname = current_database())));
    END
    $$;
    """,
    # 7: the appender's mark also under `session_replication_role = replica` (logical
    # replication, some restores), where an ordinary trigger does not fire: an insert that took
    # positions unmarked could be passed over by the relay.
    """
    ALTER TABLE events ENABLE ALWAYS TRIGGER events_mark_the_appender;
    """,
    # 8: the command ledger by when each command was recorded: a projector's check after Redis
    # lost writes, and a rebuild's status restore, read only the commands of a recent window.
    # Each command adds to the index's right edge, the cheapest insert a B-tree has.
    """
    CREATE INDEX commands_recorded_at ON commands (recorded_at);
    """,
)
