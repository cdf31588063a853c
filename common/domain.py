"""How a domain plugs into the generic hosts: its aggregates, projections and HTTP routes.

A domain is a package exposing one `Domain` object, named `DOMAIN`; the `DOMAINS` setting lists
the packages a deployment runs (`DOMAINS=shop,tickets`), and every process loads the same list
with `load_domains`. Nothing is discovered by scanning or registered at import time: what a domain
offers is exactly what its `Domain` object lists.

Streams carry their aggregate's type: `Invoice-<id>`. The type is a word without `-`, so the
first `-` of a stream id separates the two, and two aggregates never share a stream.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from common.contracts.commands import CommandBase
from common.contracts.envelopes import RecordedEvent

if TYPE_CHECKING:
    from common.readmodel.projection import Projection

State = TypeVar("State")

STREAM_TYPE = re.compile(r"^[A-Z][A-Za-z0-9]{0,63}$")

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
"""Turns the data of one stored event from schema version n into version n + 1."""


class Rejection(Exception):
    """The domain refuses the command; nothing is appended. `reason` is for humans."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownEvent(Exception):
    """A stored event that no loaded aggregate can read: an unknown stream or event type, or
    data that fails its model after upcasting."""


def stream_id(stream_type: str, aggregate_id: object) -> str:
    """`<stream type>-<id>`: the stream of one aggregate."""
    return f"{stream_type}-{aggregate_id}"


def split_stream_id(stream: str) -> tuple[str, str]:
    """(`Invoice`, `<id>`) from `Invoice-<id>`: the type is everything before the first `-`
    (("", stream) when there is none)."""
    stream_type, sep, aggregate_id = stream.partition("-")
    return (stream_type, aggregate_id) if sep else ("", stream)


@dataclass(frozen=True, slots=True)
class Aggregate(Generic[State]):
    """One kind of aggregate: the commands it takes, the events it records, and its logic as
    two pure functions. `decide` returns the new events or raises `Rejection`; `evolve` folds
    one event into the state. The host counts versions; the state need not."""

    stream_type: str
    """The prefix of this aggregate's stream ids (`Invoice`): a capitalised word without `-`."""
    id_field: str
    """The command field naming the aggregate instance (`invoice_id`): its stream is
    `<stream_type>-<value>`, and command statuses show the id under this name."""
    commands: Sequence[type[CommandBase]]
    events: Sequence[type[BaseModel]]
    """Pydantic models with a `type` literal: the union they form parses stored events."""
    initial: State
    decide: Callable[[State, Any], Sequence[BaseModel]]
    evolve: Callable[[State, Any], State]
    visible_in: str
    """The projection whose view a client waits for (`Prefer: wait`, `min_version`)."""
    creates: frozenset[str] = frozenset()
    """Command types that start a stream: their id may come from an idempotency key, and
    a visible success answers 201 with `Location: <location>`."""
    location: Callable[[str], str] | None = None
    """The URL of an aggregate's view, from its id (for `Location` after a create)."""
    event_versions: Mapping[str, int] = field(default_factory=dict)
    """The current schema version of each event type (1 when absent)."""
    upcasters: Mapping[tuple[str, int], Upcaster] = field(default_factory=dict)
    """`(event type, from version) -> data of the next version`, for every older version."""
    fold: Callable[[State, Iterable[Any]], State] | None = None
    """`evolve` over many events at once, for a state whose `evolve` copies what it keeps: a
    fold that copies once keeps loading a stream linear in its events. None: `evolve` each."""
    max_events: int | None = None
    """The most events one stream may hold; a command that would append past it is rejected
    and appends nothing. None: no limit. A bound on every stream bounds the cost of loading
    and folding one aggregate, so one busy instance cannot slow every other's commands."""
    closing: frozenset[str] = frozenset()
    """Command types that end an aggregate's life (ship, cancel): the events limit never
    refuses them, so an aggregate at or past its limit can still be closed."""

    def __post_init__(self) -> None:
        if not STREAM_TYPE.match(self.stream_type):
            raise ValueError(f"stream type {self.stream_type!r} must be a word without '-'")
        for (event_type, version), _upcaster in self.upcasters.items():
            if version >= self.event_version(event_type):
                raise ValueError(f"upcaster of {event_type} v{version} is not for an old version")
        if self.max_events is not None and self.max_events < 1:
            raise ValueError(f"max_events of {self.stream_type} must be at least 1")

    def stream_of(self, command: CommandBase) -> str:
        return stream_id(self.stream_type, getattr(command, self.id_field))

    def fold_events(self, state: State, events: Iterable[Any]) -> State:
        """The state after `events`, with `fold` when the aggregate has one."""
        if self.fold is not None:
            return self.fold(state, events)
        for event in events:
            state = self.evolve(state, event)
        return state

    def decide_within_limit(self, state: State, version: int, command: Any) -> Sequence[BaseModel]:
        """`decide` on a stream at `version`, then the events limit: raises `Rejection` when the
        new events would take the stream past `max_events` (the domain's own reason first), unless
        the command is one of the `closing` ones."""
        events = self.decide(state, command)
        limit = self.max_events
        closing = command.type in self.closing
        if limit is not None and not closing and events and version + len(events) > limit:
            raise Rejection(
                f"the {self.stream_type.lower()} has reached its limit of {limit} events"
            )
        return events

    def event_version(self, event_type: str) -> int:
        return self.event_versions.get(event_type, 1)

    def upcast(self, event_type: str, version: int, data: dict[str, Any]) -> dict[str, Any]:
        """The data of a stored event in its type's current schema version."""
        current = self.event_version(event_type)
        while version < current:
            upcaster = self.upcasters.get((event_type, version))
            if upcaster is None:
                raise UnknownEvent(f"no upcaster for {event_type} v{version}")
            try:
                data = upcaster(data)
            except Exception as exc:
                raise UnknownEvent(f"cannot upcast {event_type} v{version}: {exc!r}") from exc
            version += 1
        return data


@dataclass(frozen=True, slots=True)
class Domain:
    """Everything one domain adds to the hosts."""

    name: str
    aggregates: Sequence[Aggregate[Any]]
    projections: Sequence[Projection[Any]] = ()
    routes: Callable[[], Sequence[Any]] | None = None
    """Returns the domain's FastAPI routers; called by the gateway only, so the workers never
    import the HTTP layer."""
    schemas: Callable[[], Sequence[type[BaseModel]]] | None = None
    """Returns the models the routes refer to by name in the OpenAPI document (request bodies
    that the lean command routes parse themselves, answers serialised from Redis)."""


class Registry:
    """The loaded domains, indexed the ways the hosts look things up."""

    def __init__(self, domains: Sequence[Domain]) -> None:
        self.domains = tuple(domains)
        self.aggregates: dict[str, Aggregate[Any]] = {}
        self.aggregate_of_command: dict[str, Aggregate[Any]] = {}
        self.projections: dict[str, Projection[Any]] = {}
        self._event_adapters: dict[str, TypeAdapter[Any]] = {}
        for domain in domains:
            for aggregate in domain.aggregates:
                if aggregate.stream_type in self.aggregates:
                    raise ValueError(f"two aggregates of stream type {aggregate.stream_type}")
                self.aggregates[aggregate.stream_type] = aggregate
                for command in aggregate.commands:
                    name = _type_name(command)
                    if name in self.aggregate_of_command:
                        raise ValueError(f"two commands named {name}")
                    self.aggregate_of_command[name] = aggregate
                self._event_adapters[aggregate.stream_type] = _union_adapter(aggregate.events)
            for projection in domain.projections:
                if projection.name in self.projections:
                    raise ValueError(f"two projections named {projection.name}")
                self.projections[projection.name] = projection
        commands = [c for a in self.aggregates.values() for c in a.commands]
        self.command_adapter: TypeAdapter[Any] = _union_adapter(commands)
        self.command_types = frozenset(self.aggregate_of_command)
        for aggregate in self.aggregates.values():
            if aggregate.visible_in not in self.projections:
                raise ValueError(
                    f"{aggregate.stream_type} is visible in {aggregate.visible_in!r}, which no "
                    "loaded domain registers"
                )

    def parse_command(self, body: bytes) -> CommandBase:
        """A command from its JSON; `pydantic.ValidationError` when it is none we know."""
        command: CommandBase = self.command_adapter.validate_json(body)
        return command

    def aggregate_of_stream(self, stream: str) -> Aggregate[Any] | None:
        return self.aggregates.get(split_stream_id(stream)[0])

    def parse_event(self, event: RecordedEvent) -> Any:
        """The typed payload of a stored event, upcast to its current version; `UnknownEvent`
        when no loaded aggregate can read it."""
        return self.parse_stored(event.stream_id, event.type, event.schema_version, event.data)

    def parse_stored(
        self, stream: str, event_type: str, schema_version: int, data: dict[str, Any]
    ) -> Any:
        stream_type = split_stream_id(stream)[0]
        aggregate = self.aggregates.get(stream_type)
        if aggregate is None:
            raise UnknownEvent(f"no aggregate of stream type {stream_type!r} is loaded")
        current = aggregate.upcast(event_type, schema_version, data)
        try:
            return self._event_adapters[stream_type].validate_python(
                {**current, "type": event_type}
            )
        except ValidationError as exc:
            raise UnknownEvent(f"invalid {event_type} payload: {exc}") from exc

    def upcast(self, event: RecordedEvent) -> RecordedEvent:
        """`event` with its data in the current schema version (unchanged when it is);
        `UnknownEvent` when an upcaster is missing or fails."""
        aggregate = self.aggregate_of_stream(event.stream_id)
        if aggregate is None:
            return event
        current = aggregate.event_version(event.type)
        if event.schema_version >= current:
            return event
        data = aggregate.upcast(event.type, event.schema_version, event.data)
        return event.model_copy(update={"data": data, "schema_version": current})

    def routers(self) -> list[Any]:
        """Every domain's FastAPI routers, in the order the domains are listed."""
        return [router for d in self.domains if d.routes is not None for router in d.routes()]

    def schemas(self) -> list[type[BaseModel]]:
        """Every domain's OpenAPI models."""
        return [model for d in self.domains if d.schemas is not None for model in d.schemas()]


def _type_name(model: type[BaseModel]) -> str:
    annotation = model.model_fields["type"].default
    if not isinstance(annotation, str):
        raise ValueError(f"{model.__name__} needs a `type` field with a default")
    return annotation


def _union_adapter(models: Sequence[type[BaseModel]]) -> TypeAdapter[Any]:
    if len(models) == 1:
        return TypeAdapter(models[0])
    union = models[0]
    for model in models[1:]:
        union = union | model  # type: ignore[assignment]
    return TypeAdapter(Annotated[union, Field(discriminator="type")])  # type: ignore[arg-type]


def load_domains(names: str | Sequence[str]) -> Registry:
    """Import each named package and collect its `DOMAIN`: `load_domains("orders")`."""
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    domains = []
    for name in names:
        module = importlib.import_module(name)
        domain = getattr(module, "DOMAIN", None)
        if not isinstance(domain, Domain):
            raise ValueError(f"{name} has no `DOMAIN` of type common.domain.Domain")
        domains.append(domain)
    return Registry(domains)
