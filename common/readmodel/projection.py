"""What a projection is to the projector host: pure functions from events to Redis changes.

A projection folds each stream it follows into a *view* (one Redis hash per stream, with a
`version` field), and derives from the view alone where the stream appears in sorted sets
(`index`), what it adds to shared counters (`counters`, HINCRBY) and to shared rankings
(`ranks`, ZINCRBY). The host writes the new view, the differences of those three between the
view before and after, and the history entry in one Lua call that checks the view's version
first. A change is therefore applied at most once per view version, which is what makes
counters exact under redelivery, replay and racing projectors: a projection never counts
anything the version check has not admitted.

Everything here is pure; `projector_worker` does the I/O.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar
from uuid import UUID

import orjson

from common.contracts.envelopes import RecordedEvent
from common.domain import split_stream_id

View = TypeVar("View")

ZAdd = tuple[str, str, str]
"""(key suffix, score, member)"""
ZRem = tuple[str, str]
"""(key suffix, member)"""
Increment = tuple[str, str, int]
"""(key suffix, hash field or sorted-set member, delta)"""


class ProjectionError(Exception):
    """The event cannot follow the view it is applied to: a poison event or a corrupt view."""


@dataclass(frozen=True, slots=True)
class ViewChange:
    """Everything one event (or a run of one stream's consecutive events) changes, keys named
    by their suffix inside the projection's generation."""

    stream_id: str
    view: Any
    version: int
    """The view's version after the change."""
    first_version: int
    """The version of the first event of the change (`version` for a single event)."""
    fields: Mapping[str, str]
    """The view as its hash."""
    view_key: str
    history_key: str | None
    history: tuple[bytes, ...]
    zadd: tuple[ZAdd, ...] = ()
    zrem: tuple[ZRem, ...] = ()
    """Applied before `zadd`."""
    hincrby: tuple[Increment, ...] = ()
    zincrby: tuple[Increment, ...] = ()

    def index_keys(self) -> list[str]:
        """The suffixes of the shared keys this change touches, each once, in a stable order."""
        seen: dict[str, None] = {}
        for suffix in (
            *(entry[0] for entry in self.zrem),
            *(entry[0] for entry in self.zadd),
            *(entry[0] for entry in self.hincrby),
            *(entry[0] for entry in self.zincrby),
        ):
            seen.setdefault(suffix, None)
        return list(seen)


class Projection(ABC, Generic[View]):
    """A named read model. Subclasses set `name` and `categories` and define the view."""

    name: str
    """Names the queue (`<app>.projection.<name>`), the Redis keys and the metrics."""
    categories: frozenset[str]
    """The stream types it follows; every other event is acked and counted as ignored."""
    keeps_history: bool = False
    """Whether each stream's events are listed, one JSON entry per event, under `history_key`."""
    layout: int = 1
    """The version of the projection's Redis layout (its keys and what its hashes hold). Raise
    it with any change that code reading the views cannot take in its old form: the
    projection's keys are then named anew (`keys_name`), so an upgraded deployment finds no
    views under them and rebuilds them from the event store instead of reading old shapes."""

    @classmethod
    def keys_name(cls) -> str:
        """The name its Redis keys go under: `name`, then `name.v2` from layout 2 on."""
        return cls.name if cls.layout == 1 else f"{cls.name}.v{cls.layout}"

    # --- what a projection defines -----------------------------------------------------------

    @abstractmethod
    def evolve(self, before: View | None, event: RecordedEvent, payload: Any) -> View:
        """The view after `event` (any event of a followed stream); `before` is the view at
        `event.version - 1`. Raise `ProjectionError` for an event that cannot follow it."""

    @abstractmethod
    def to_hash(self, view: View) -> dict[str, str]:
        """The view as a Redis hash; must hold `version`."""

    @abstractmethod
    def from_hash(self, raw: Mapping[bytes, bytes]) -> View:
        """The view from its hash."""

    @abstractmethod
    def version_of(self, view: View) -> int:
        """The version of the stream the view reflects."""

    def view_key(self, stream_id: str) -> str:
        return f"view:{stream_id}"

    def history_key(self, stream_id: str) -> str:
        return f"history:{stream_id}"

    def index(self, view: View) -> dict[str, str]:
        """The sorted sets the stream is in, by key suffix, with its score in each (the member
        is `member(stream_id)`)."""
        return {}

    def member(self, stream_id: str) -> str:
        """The stream's member in the sorted sets of `index`."""
        return stream_id

    def counters(self, view: View) -> dict[tuple[str, str], int]:
        """What the view adds to shared hash counters: `{(key suffix, field): amount}`."""
        return {}

    def ranks(self, view: View) -> dict[tuple[str, str], int]:
        """What the view adds to shared sorted-set scores: `{(key suffix, member): amount}`."""
        return {}

    def history_entry(self, event: RecordedEvent) -> bytes:
        """One entry of a stream's history: where and when the event happened, and its data,
        as a compact JSON array (`history_event_json` gives the object the API answers)."""
        return history_entry(event)

    def index_change(
        self, stream_id: str, before: View | None, after: View
    ) -> tuple[tuple[ZAdd, ...], tuple[ZRem, ...]]:
        """(`zadd`, `zrem`) taking the sorted sets from `before`'s entries to `after`'s.
        Override to skip entries a projection knows cannot change."""
        old = self.index(before) if before is not None else {}
        new = self.index(after)
        member = self.member(stream_id)
        zadd = tuple((s, score, member) for s, score in new.items() if old.get(s) != score)
        zrem = tuple((s, member) for s in old if s not in new)
        return zadd, zrem

    # --- what the host calls -----------------------------------------------------------------

    def follows(self, stream_id: str) -> bool:
        return split_stream_id(stream_id)[0] in self.categories

    def plan(self, before: View | None, event: RecordedEvent, payload: Any) -> ViewChange:
        """The change `event` makes to the view at `event.version - 1`."""
        return self.plan_run(before, [(event, payload)])

    def plan_run(
        self, before: View | None, events: Sequence[tuple[RecordedEvent, Any]]
    ) -> ViewChange:
        """The change of consecutive events of one stream as one: each event evolves the
        view; the shared keys change once, from `before` to the last view. Applying it equals
        applying the events one by one."""
        if not events:
            raise ProjectionError("an empty run")
        view = before
        for event, payload in events:
            expected = self.version_of(view) if view is not None else 0
            if event.version != expected + 1:
                raise ProjectionError(
                    f"event version {event.version} cannot follow version {expected}"
                )
            view = self.evolve(view, event, payload)
        assert view is not None
        first, last = events[0][0], events[-1][0]
        stream_id = last.stream_id
        zadd, zrem = self.index_change(stream_id, before, view)
        return ViewChange(
            stream_id=stream_id,
            view=view,
            version=last.version,
            first_version=first.version,
            fields=self.to_hash(view),
            view_key=self.view_key(stream_id),
            history_key=self.history_key(stream_id) if self.keeps_history else None,
            history=tuple(self.history_entry(e) for e, _ in events) if self.keeps_history else (),
            zadd=zadd,
            zrem=zrem,
            hincrby=_difference(self.counters(view), self._counters_of(before)),
            zincrby=_difference(self.ranks(view), self._ranks_of(before)),
        )

    def _counters_of(self, view: View | None) -> dict[tuple[str, str], int]:
        return self.counters(view) if view is not None else {}

    def _ranks_of(self, view: View | None) -> dict[tuple[str, str], int]:
        return self.ranks(view) if view is not None else {}


def _difference(
    after: dict[tuple[str, str], int], before: dict[tuple[str, str], int]
) -> tuple[Increment, ...]:
    """The increments from `before`'s contributions to `after`'s. A contribution new in
    `after` is sent even when it is 0, so the field or member it names exists."""
    deltas = []
    for key in {**before, **after}:
        delta = after.get(key, 0) - before.get(key, 0)
        if delta or key not in before:
            deltas.append((key[0], key[1], delta))
    return tuple(sorted(deltas))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def history_entry(event: RecordedEvent) -> bytes:
    """A history entry as stored: `[position, version, type, data, time, command_id]`, the time
    in microseconds since the epoch and the command id as 32 hex digits. An array without key
    names, an integer time and an id without dashes are ~70 bytes an entry shorter than the
    object the API answers (`history_event_json`)."""
    occurred_at = event.metadata.occurred_at
    if occurred_at.tzinfo is None:
        occurred_at = occurred_at.replace(tzinfo=UTC)
    return orjson.dumps(
        [
            event.position,
            event.version,
            event.type,
            event.data,
            (occurred_at - _EPOCH) // _MICROSECOND,
            event.metadata.command_id.hex,
        ]
    )


def history_event_json(entry: bytes) -> bytes:
    """A stored history entry as the API shows it: `{position, version, type, data, time,
    command_id}`, the time in ISO 8601 (UTC) and the command id as a UUID."""
    position, version, type_, data, micros, command_id = orjson.loads(entry)
    return orjson.dumps(
        {
            "position": position,
            "version": version,
            "type": type_,
            "data": data,
            "time": (_EPOCH + micros * _MICROSECOND).isoformat(),
            "command_id": str(UUID(hex=command_id)),
        }
    )
