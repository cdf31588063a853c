"""Noticing that Redis lost writes of a projection's views while the projector ran.

Redis can come back older than it was: a snapshot restored, an asynchronous replica that missed
writes promoted. The generation pointer is then still there, so nothing is rebuilt, and every
stream that gets no new event keeps a stale view.

Every APPLY call that writes adds one to the projection's write count (`ProjectionKeys.writes`)
and returns the count it found, atomically with the checkpoint of the generation queries read.
Under normal operation the count never goes down, so a projector that finds it lower than a
count it has already seen knows that writes were lost, and where to look again: that call's
checkpoint is the highest position the older state holds. A count, not the checkpoint itself:
an event applied late (a retry, a redelivery) below a checkpoint leaves the checkpoint alone,
and so would its loss.

A failover is checked as well, whatever the counts say. The write count is shared by every
projector of a projection, so after a promoted replica that missed the last writes takes over,
another projector's new writes can raise it past what this one saw before this one's next call:
the count alone would miss the loss. The watchdog therefore also reads the answering server's
`run_id` with the count; when it differs from the one seen before (the client now talks to
another server: a failover, or a restart), the views are checked from that server's checkpoint
as after any loss. The margin of the check covers writes lost a few seconds before it.

Calls overlap (the projector pipelines them) and the watchdog reads on another connection, so a
reply can come back after a later one was seen. Each comparison is therefore against the count
seen *before the call was sent* (`mark`), which the call cannot have preceded in Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from projector_worker.redis_views import ApplyResult, LiveState

log = logging.getLogger(__name__)


class Trigger(StrEnum):
    """What started a check of a projection's views against the event store."""

    START = "start"
    """The views are ready (at start-up, or rebuilt after Redis was emptied): a restore while
    no projector ran is noticed by nobody else."""
    APPLY = "apply"
    """An APPLY call found the write count lower than already seen (a loss under load)."""
    WATCHDOG = "watchdog"
    """The periodic check found it lower (a loss while no event comes)."""
    SWITCH = "switch"
    """The periodic check found another Redis server answering (a failover, or a restart):
    it may lack writes the previous one had."""

    @property
    def described(self) -> str:
        return _DESCRIBED[self]


_DESCRIBED = {
    Trigger.START: "found by the check at start",
    Trigger.APPLY: "noticed by an apply",
    Trigger.WATCHDOG: "noticed by the watchdog",
    Trigger.SWITCH: "another Redis server answers",
}


@dataclass(frozen=True, slots=True)
class Mark:
    """What was known before a call was sent."""

    seen: int
    epoch: int


OnLoss = Callable[[int, Trigger], None]
"""Told the position to check the event store from, and what noticed the loss."""


class LossDetector:
    """The highest write count one projector has seen of one projection."""

    def __init__(self, projection: str) -> None:
        self._projection = projection
        self._listeners: list[OnLoss] = []
        self.seen = 0
        self.server: str | None = None
        """The `run_id` of the Redis server the watchdog last read."""
        self._epoch = 0
        """Raised at each loss: replies to calls sent before it no longer raise `seen`."""

    def listen(self, on_loss: OnLoss) -> None:
        self._listeners.append(on_loss)

    def mark(self) -> Mark:
        return Mark(self.seen, self._epoch)

    def after_apply(self, mark: Mark, result: ApplyResult) -> None:
        """Judge an APPLY reply; without a block of the generation queries read (Redis was
        emptied and is being rebuilt) there is nothing to catch up from."""
        if result.empty or result.stale:
            return
        self._observe(
            mark,
            result.writes_before,
            result.writes_after,
            result.live_checkpoint_before,
            Trigger.APPLY,
        )

    def after_read(self, mark: Mark, state: LiveState) -> None:
        """Judge what the watchdog read: a lower count, or another server."""
        epoch = self._epoch
        self._observe(mark, state.writes, state.writes, state.checkpoint, Trigger.WATCHDOG)
        previous, self.server = self.server, state.server or self.server
        if previous is None or not state.server or state.server == previous:
            return
        if self._epoch != epoch:
            return  # the count already told, and a check is on its way
        log.warning(
            "another Redis server answers for %s (a failover or a restart): checking the streams"
            " changed since position %d",
            self._projection,
            state.checkpoint,
            extra={"projection": self._projection, "position": state.checkpoint},
        )
        for on_loss in self._listeners:
            on_loss(state.checkpoint, Trigger.SWITCH)

    def _observe(
        self, mark: Mark, before: int, after: int, checkpoint: int | None, trigger: Trigger
    ) -> None:
        if before >= mark.seen:
            if mark.epoch == self._epoch:
                self.seen = max(self.seen, after)
            return
        first = mark.epoch == self._epoch
        # Replies to calls sent before the loss was noticed add their loss point, no more.
        if first:
            self._epoch += 1
            self.seen = after
        if checkpoint is None:
            return  # Redis was emptied: the rebuild of the views restores everything
        if first:
            log.warning(
                "Redis lost writes of %s: its write count went back from %d to %d (%s);"
                " checking the streams changed since position %d",
                self._projection,
                mark.seen,
                before,
                trigger.described,
                checkpoint,
                extra={"projection": self._projection, "position": checkpoint},
            )
        for on_loss in self._listeners:
            on_loss(checkpoint, trigger)
