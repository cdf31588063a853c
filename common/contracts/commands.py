"""What every command carries, whatever its domain."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import StringConstraints

from common.contracts.base import Contract


class CommandBase(Contract):
    """The fields of every command message besides its own. A domain's command adds a `type`
    literal, the field naming its aggregate (see `common.domain.Aggregate.id_field`) and its
    own fields."""

    type: str
    command_id: UUID
    correlation_id: UUID
    causation_id: UUID | None = None
    schema_version: Literal[1] = 1
    issued_at: datetime
    fingerprint: Annotated[str, StringConstraints(pattern=r"^[!-~]{1,128}$")] | None = None
    """Hash of the request that produced the command, to refuse a reused idempotency key."""
