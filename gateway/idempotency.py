"""Idempotency keys: the same key always names the same command, whoever asks first.

The ids are derived from the key (uuid5), not stored first and read back, so concurrent
duplicates agree on them without a race; with API keys on, from the key and the API key, so two
clients never share a command. Redis remembers the request's fingerprint for a day to refuse the
key for a different request, and the command's status remembers it for as long as it lives.
Past both, the command worker compares the fingerprint the event store recorded with the command
and refuses a different request (`ID_REUSED_REASON`, answered with 422 here too). A repeated
request is published again: the command worker deduplicates by command id, and republishing
rescues a command whose first publish failed.
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

from common.readmodel import status_store
from common.readmodel.commands import ID_REUSED_REASON
from common.readmodel.keys import Keys
from common.readmodel.pipelining import AutoPipeline, shared_script
from gateway.problems import Problem, ProblemType, unavailable, validation_problem
from gateway.runtime import REDIS_ERRORS

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
NAMESPACE = UUID("6f1c1f9e-3c2a-5b7e-9d41-0a8e2f4b7c13")
"""Fixed for ever: changing it would give old keys new command ids."""
TTL_S = 86_400
"""How long a key is remembered; a retry after that is a new command."""

KEY_PATTERN = r"^[\x21-\x7e](?:[\x20-\x7e]{0,198}[\x21-\x7e])?$"
"""1-200 printable ASCII characters, no space at either end: HTTP drops those from a header
value, so a key sent with them would arrive as another key."""
_VALID_KEY = re.compile(KEY_PATTERN)
KEY_RULE = "must be 1-200 printable ASCII characters, without a space at either end"


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
        raise validation_problem([{"field": HEADER, "message": KEY_RULE}])
    return value


def scoped(key: str, client: str) -> str:
    """The key as one client's: `client` (see `auth.client_of`) and a newline, which no key
    contains, before it; the key itself when API keys are off, so ids stay as they were."""
    return f"{client}\n{key}" if client else key


def command_id_for(key: str) -> UUID:
    """The command id of a (scoped) key."""
    return uuid.uuid5(NAMESPACE, key)


def aggregate_id_for(key: str, stream_type: str) -> UUID:
    """The id of the aggregate a keyed create makes (`invoice:<key>` for an `Invoice`)."""
    return uuid.uuid5(NAMESPACE, f"{stream_type.lower()}:{key}")


def key_reused() -> Problem:
    """422: the key was first used with a different request."""
    return Problem(
        422,
        f"{ID_REUSED_REASON}.",
        type_=ProblemType.IDEMPOTENCY_KEY_REUSED,
        title="Idempotency-Key reused",
        errors=[{"field": HEADER, "message": "was used with a different request"}],
    )


def fingerprint(method: str, path: str, canonical_body: bytes) -> str:
    """sha256 of what the request asks for; `path` and body must be in canonical form."""
    digest = hashlib.sha256(method.encode())
    digest.update(b" ")
    digest.update(path.encode())
    digest.update(b"\n")
    digest.update(canonical_body)
    return digest.hexdigest()


_CLAIM = (
    status_store.STATUS_LUA
    + """
-- KEYS: the key's record, the status shard hash, the old status hash;
-- ARGV: this use's record, its fingerprint, the record's TTL, the status field
local previous = redis.call('GET', KEYS[1])
if previous then return previous end
local status = status_get(KEYS[2], ARGV[4], KEYS[3])
local first = status and status.fingerprint
if first and first ~= ARGV[2] then return cjson.encode({fingerprint = first}) end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return false
"""
)
"""The record of the key's first use: the one stored, else what the command's status
says (it outlives the record), else none and this use's record is stored."""


async def claim(
    batch: AutoPipeline, keys: Keys, key: str, ids: CommandIds, request_fingerprint: str
) -> None:
    """Remember `key` (scoped) for this request, or check that it was first used for the same
    one, by its record or by the status of its command.

    One round trip (`_CLAIM`). Raises 422 if the key belongs to a different request, 503 if
    Redis cannot tell.
    """
    record = orjson.dumps(
        {
            "command_id": str(ids.command_id),
            "aggregate_id": str(ids.aggregate_id),
            "fingerprint": request_fingerprint,
        }
    )
    status_names, status_field = status_store.location(keys, ids.command_id)
    try:
        [previous] = await batch.run(
            lambda pipe: shared_script(_CLAIM)(
                [keys.idempotency(key), *status_names],
                [record, request_fingerprint, TTL_S, status_field],
                client=pipe,
            )
        )
    except REDIS_ERRORS as exc:
        log.warning("idempotency key not checked: %r", exc)
        raise unavailable("Idempotency keys cannot be checked now.") from exc
    if previous is None:
        return
    stored = None
    if isinstance(previous, bytes | str):
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
            stored = orjson.loads(previous).get("fingerprint")
    if stored != request_fingerprint:
        raise key_reused()
