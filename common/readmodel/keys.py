"""Every Redis key and channel name, in one place, under one configurable prefix."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from common.readmodel.layout import ViewKeys


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names for one deployment; `prefix` keeps deployments (and test runs) apart."""

    prefix: str = "orders:"

    def command_statuses(self, shard: str) -> str:
        """Hash: the statuses of the commands whose id starts with `shard` (see
        `status_store.py`)."""
        return f"{self.prefix}statuses:{shard}"

    @property
    def status_sweep_lease(self) -> str:
        """String with a TTL: held by the projector deleting expired statuses this interval."""
        return f"{self.prefix}status-sweep"

    def command(self, command_id: UUID | str) -> str:
        """Hash: a command's status as written before statuses went into shard hashes; still
        read while it lives (see `status_store.py`)."""
        return f"{self.prefix}command:{command_id}"

    def idempotency(self, key: str) -> str:
        """String: JSON {command_id, aggregate_id, fingerprint} of the first use of a key (the
        key scoped per API key when API keys are on)."""
        return f"{self.prefix}idempotency:{key}"

    @property
    def command_outcomes_channel(self) -> str:
        """Pub/sub: a message per command outcome or projected command, for read-your-writes."""
        return f"{self.prefix}notify:commands"

    def projection(self, name: str) -> ProjectionKeys:
        """The keys of one projection (see `common/readmodel/layout.py` for a generation's)."""
        return ProjectionKeys(f"{self.prefix}{name}:")


@dataclass(frozen=True, slots=True)
class ProjectionKeys:
    """The keys of one projection: its generations, their pointers and its channel."""

    prefix: str
    """`{key prefix}{projection name}:`"""

    @property
    def generation(self) -> str:
        """String: the number of the generation queries read. Missing means Redis is empty."""
        return f"{self.prefix}generation"

    @property
    def rebuilding(self) -> str:
        """String with a TTL: the generation a rebuild is filling; projectors write there too."""
        return f"{self.prefix}rebuilding"

    @property
    def rebuild_lock(self) -> str:
        """String with a TTL: the token of the one process allowed to rebuild."""
        return f"{self.prefix}rebuild:lock"

    @property
    def generation_counter(self) -> str:
        """String: the last generation number handed out."""
        return f"{self.prefix}generation:counter"

    @property
    def generations(self) -> str:
        """Set: every generation that may still have keys (the current one, a rebuild's, and
        abandoned ones awaiting deletion)."""
        return f"{self.prefix}generations"

    @property
    def writes(self) -> str:
        """String: how many APPLY calls wrote to the projection's views, never reset. Redis that
        lost writes (an older snapshot restored, a replica that missed writes promoted) holds a
        lower count than a projector saw: that is how the projectors notice."""
        return f"{self.prefix}writes"

    @property
    def versions_channel(self) -> str:
        """Pub/sub: `{"stream_id", "version"}` each time a view reaches a new version, and
        `{"generation"}` when queries switch to a rebuilt generation."""
        return f"{self.prefix}notify"

    def views(self, generation: int) -> ViewKeys:
        """The keys of one generation."""
        return ViewKeys(self.prefix, generation)
