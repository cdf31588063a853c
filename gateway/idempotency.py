"""Idempotency keys: the same key always names the same command, whoever asks first.

The ids are derived from the key (uuid5), not stored first and read back, so concurrent
duplicates agree on them without a race. Redis remembers the request's fingerprint for a day to
refuse the key for a different request. A repeated request is published again: the command
worker deduplicates by command id, and republishing rescues a command whose first publish failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import uuid
from dataclasses import dataclass
from uuid import UUID

import orjson
from redis.exceptions import RedisError

from common.readmodel.keys import Keys
from common.readmodel.pipelining import AutoPipeline
from gateway.problems import Problem, ProblemType, unavailable, validation_problem

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
NAMESPACE = UUID("6f1c1f9e-3c2a-5b7e-9d41-0a8e2f4b7c13")
"""Fixed for ever: changing it would give old keys new command ids."""
TTL_S = 86_400
"""How long a key is remembered; a retry after that is a new command."""

KEY_PATTERN = r"^[\x20-\x7e]{1,200}$"
"""1-200 printable ASCII characters."""
_VALID_KEY = re.compile(KEY_PATTERN)


@dataclass(frozen=True, slots=True)
class CommandIds:
    """The identity of one command: new for each request, or derived from its idempotency key."""

    command_id: UUID
    aggregate_id: UUID


def parse_key(value: str | None) -> str | None:
    """The `Idempotency-Key` header value, or None if absent; 422 if malformed."""
    if value is None:
        return None
    if _VALID_KEY.fullmatch(value) is None:
        raise validation_problem(
            [{"field": HEADER, "message": "must be 1-200 printable ASCII characters"}]
        )
    return value


def command_id_for(key: str) -> UUID:
    return uuid.uuid5(NAMESPACE, key)


def aggregate_id_for(key: str, stream_type: str) -> UUID:
    """The id of the aggregate a keyed create makes (`invoice:<key>` for an `Invoice`)."""
    return uuid.uuid5(NAMESPACE, f"{stream_type.lower()}:{key}")


def fingerprint(method: str, path: str, canonical_body: bytes) -> str:
    """sha256 of what the request asks for; `path` and body must be in canonical form."""
    digest = hashlib.sha256(method.encode())
    digest.update(b" ")
    digest.update(path.encode())
    digest.update(b"\n")
    digest.update(canonical_body)
    return digest.hexdigest()


async def claim(
    batch: AutoPipeline, keys: Keys, key: str, ids: CommandIds, request_fingerprint: str
) -> None:
    """Remember `key` for this request, or check that it was first used for the same one.

    One round trip: `SET NX GET` stores the record unless one exists and returns the old one.
    Raises 422 if the key belongs to a different request, 503 if Redis cannot tell.
    """
    record = orjson.dumps(
        {
            "command_id": str(ids.command_id),
            "aggregate_id": str(ids.aggregate_id),
            "fingerprint": request_fingerprint,
        }
    )
    try:
        [previous] = await batch.run(
            lambda pipe: pipe.set(keys.idempotency(key), record, nx=True, ex=TTL_S, get=True)
        )
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("idempotency key not checked: %r", exc)
        raise unavailable("Idempotency keys cannot be checked now.") from exc
    if previous is None:
        return
    stored = None
    if isinstance(previous, bytes | str):
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
            stored = orjson.loads(previous).get("fingerprint")
    if stored != request_fingerprint:
        raise Problem(
            422,
            "Idempotency-Key was used with a different request.",
            type_=ProblemType.IDEMPOTENCY_KEY_REUSED,
            title="Idempotency-Key reused",
            errors=[{"field": HEADER, "message": "was used with a different request"}],
        )
