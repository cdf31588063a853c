"""What must hold after any fault, checked against the event store itself."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

import asyncpg

from command_worker.relay import CHECKPOINT


async def write_side_problems(pool: asyncpg.Pool, sent: Iterable[UUID]) -> list[str]:
    """Every sent command recorded once with a terminal status; streams contiguous from 1;
    no command's events appended twice; the relay caught up. Returns what is wrong."""
    problems: list[str] = []
    sent_ids = list(sent)
    recorded = {
        r["command_id"]
        for r in await pool.fetch(
            "SELECT command_id FROM commands WHERE command_id = ANY($1::uuid[])", sent_ids
        )
    }
    missing = [c for c in sent_ids if c not in recorded]
    if missing:
        problems.append(f"{len(missing)} commands without an outcome, e.g. {missing[:3]}")
    gaps = await pool.fetch(
        "SELECT stream_id, count(*) AS n, min(version) AS lo, max(version) AS hi FROM events"
        " GROUP BY stream_id HAVING min(version) <> 1 OR max(version) <> count(*)"
    )
    if gaps:
        problems.append(f"{len(gaps)} streams with gaps, e.g. {dict(gaps[0])}")
    # Every order command appends exactly one event, so two events of one command are a
    # duplicate append.
    duplicated = await pool.fetch(
        "SELECT metadata->>'command_id' AS command_id, count(*) AS n FROM events"
        " GROUP BY 1 HAVING count(*) > 1"
    )
    if duplicated:
        problems.append(f"{len(duplicated)} commands appended twice, e.g. {dict(duplicated[0])}")
    mismatched = await pool.fetch(
        "SELECT c.command_id, c.version, max(e.version) AS appended FROM commands c"
        " JOIN events e ON e.metadata->>'command_id' = c.command_id::text"
        " WHERE c.status = 'succeeded' GROUP BY 1, 2 HAVING max(e.version) <> c.version"
    )
    if mismatched:
        problems.append(f"{len(mismatched)} command versions disagree with their events")
    return problems


async def relay_caught_up(pool: asyncpg.Pool) -> bool:
    head = await pool.fetchval("SELECT coalesce(max(position), 0) FROM events")
    checkpoint = await pool.fetchval(
        "SELECT coalesce(max(position), 0) FROM checkpoints WHERE name = $1", CHECKPOINT
    )
    return bool(head == checkpoint)
