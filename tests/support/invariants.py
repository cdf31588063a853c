"""What must hold after any fault, checked against the event store, Redis and RabbitMQ."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg
from redis.asyncio import Redis

from command_worker.relay import CHECKPOINT
from common.messaging.nodes import connect_any
from common.messaging.topology import Topology, dlq_name
from common.readmodel.keys import Keys
from common.settings import Settings
from tests.support.amqp import depth
from tests.support.domains import registry_of, topology_of
from tests.support.statuses import stored_statuses
from tests.support.views import ViewComparison, compare_with_replay

TERMINAL = frozenset({b"succeeded", b"rejected", b"failed"})


@dataclass
class WriteSide:
    """The write side's invariants over the commands sent, as counts and examples."""

    without_outcome: list[UUID] = field(default_factory=list)
    """Sent commands with no recorded outcome in the `commands` table."""
    gaps: list[dict[str, object]] = field(default_factory=list)
    """Streams whose versions are not 1..n."""
    appended_twice: list[dict[str, object]] = field(default_factory=list)
    """Command ids that appear on more than one event."""
    mismatched: int = 0
    """Succeeded commands whose recorded version is not their event's."""

    def problems(self) -> list[str]:
        found = []
        if self.without_outcome:
            found.append(
                f"{len(self.without_outcome)} commands without an outcome,"
                f" e.g. {self.without_outcome[:3]}"
            )
        if self.gaps:
            found.append(f"{len(self.gaps)} streams with gaps, e.g. {self.gaps[0]}")
        if self.appended_twice:
            found.append(
                f"{len(self.appended_twice)} commands appended twice, e.g. {self.appended_twice[0]}"
            )
        if self.mismatched:
            found.append(f"{self.mismatched} command versions disagree with their events")
        return found


async def write_side(pool: asyncpg.Pool, sent: Iterable[UUID]) -> WriteSide:
    """Every sent command recorded once with a terminal status; streams contiguous from 1;
    no command's events appended twice; recorded versions agree with the events."""
    sent_ids = list(dict.fromkeys(sent))
    recorded = {
        r["command_id"]
        for r in await pool.fetch(
            "SELECT command_id FROM commands WHERE command_id = ANY($1::uuid[])", sent_ids
        )
    }
    gaps = await pool.fetch(
        "SELECT stream_id, count(*) AS n, min(version) AS lo, max(version) AS hi FROM events"
        " GROUP BY stream_id HAVING min(version) <> 1 OR max(version) <> count(*)"
    )
    # Every order command appends exactly one event, so two events of one command are a
    # duplicate append.
    duplicated = await pool.fetch(
        "SELECT metadata->>'command_id' AS command_id, count(*) AS n FROM events"
        " GROUP BY 1 HAVING count(*) > 1"
    )
    mismatched = await pool.fetch(
        "SELECT c.command_id, c.version, max(e.version) AS appended FROM commands c"
        " JOIN events e ON e.metadata->>'command_id' = c.command_id::text"
        " WHERE c.status = 'succeeded' GROUP BY 1, 2 HAVING max(e.version) <> c.version"
    )
    return WriteSide(
        without_outcome=[c for c in sent_ids if c not in recorded],
        gaps=[dict(r) for r in gaps],
        appended_twice=[dict(r) for r in duplicated],
        mismatched=len(mismatched),
    )


async def write_side_problems(pool: asyncpg.Pool, sent: Iterable[UUID]) -> list[str]:
    """`write_side` as a list of what is wrong (empty when everything holds)."""
    return (await write_side(pool, sent)).problems()


async def recorded(pool: asyncpg.Pool) -> int:
    """Commands with an outcome in the event store's ledger."""
    return int(await pool.fetchval("SELECT count(*) FROM commands"))


async def relay_caught_up(pool: asyncpg.Pool) -> bool:
    head = await pool.fetchval("SELECT coalesce(max(position), 0) FROM events")
    checkpoint = await pool.fetchval(
        "SELECT coalesce(max(position), 0) FROM checkpoints WHERE name = $1", CHECKPOINT
    )
    return bool(head == checkpoint)


async def not_terminal_in_redis(redis: Redis, keys: Keys, sent: Iterable[UUID]) -> list[UUID]:
    """Commands whose status, as `GET /commands/{id}` shows it, is missing or not terminal."""
    ids = list(dict.fromkeys(sent))
    statuses = await stored_statuses(redis, keys, ids)
    return [
        c
        for c, status in zip(ids, statuses, strict=True)
        if status.get("status", "").encode() not in TERMINAL
    ]


async def dead_letters(amqp_url: str, topology: Topology | None = None) -> dict[str, int]:
    """Messages waiting in the dead-letter queue of each work queue (the commands queue and
    every projection's queue)."""
    queues = (topology or topology_of()).work_queues
    connection = await connect_any(amqp_url)
    try:
        ch = await connection.channel()
        return {dlq_name(q): await depth(ch, dlq_name(q)) for q in queues}
    finally:
        await connection.close()


@dataclass
class Verdict:
    """Everything the system promises after a fault, for the commands answered 202."""

    accepted: int
    write: WriteSide
    not_terminal: list[UUID]
    relay_caught_up: bool
    views: ViewComparison
    dead_letters: dict[str, int]

    @property
    def lost(self) -> int:
        """Accepted commands that never reached a terminal status (in the store or in Redis)."""
        return len(set(self.write.without_outcome) | set(self.not_terminal))

    @property
    def duplicated(self) -> int:
        """Commands appended twice, plus streams whose versions are not contiguous."""
        return len(self.write.appended_twice) + len(self.write.gaps)

    @property
    def views_wrong(self) -> int:
        return len(self.views.wrong) if self.views.has_views else -1

    def problems(self) -> list[str]:
        found = self.write.problems()
        if self.not_terminal:
            found.append(
                f"{len(self.not_terminal)} commands not terminal in Redis,"
                f" e.g. {self.not_terminal[:3]}"
            )
        if not self.relay_caught_up:
            found.append("the relay's checkpoint is not the last position")
        if not self.views.ok:
            found.append(f"views: {self.views.describe()}")
        found += [f"{n} messages in {q}" for q, n in self.dead_letters.items() if n]
        return found

    @property
    def ok(self) -> bool:
        return not self.problems()


async def judge(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, accepted: Iterable[UUID]
) -> Verdict:
    """Check every invariant once (call it when the system is quiet)."""
    ids = list(dict.fromkeys(accepted))
    keys = Keys(settings.redis_key_prefix)
    return Verdict(
        accepted=len(ids),
        write=await write_side(pool, ids),
        not_terminal=await not_terminal_in_redis(redis, keys, ids),
        relay_caught_up=await relay_caught_up(pool),
        views=await compare_with_replay(redis, keys, pool, registry_of(settings)),
        dead_letters=await dead_letters(settings.amqp_url, topology_of(settings)),
    )
