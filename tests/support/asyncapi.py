"""Reading an AsyncAPI document in tests: the official schema it must follow, its `$ref`s, and a
channel that records what `declare_topology` declares without a broker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import aio_pika
from jsonschema import Draft7Validator

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "asyncapi-3.0.0.json"


@cache
def asyncapi_validator() -> Draft7Validator:
    """The official AsyncAPI 3.0.0 JSON Schema (see tests/schemas/README.md)."""
    schema = json.loads(SCHEMA.read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def schema_errors(document: dict[str, Any]) -> list[str]:
    """What the official schema finds wrong with `document`, one line each."""
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message[:200]}"
        for error in asyncapi_validator().iter_errors(document)
    ]


def refs(node: Any) -> Iterator[str]:
    """Every `$ref` in `node`, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(document: dict[str, Any], ref: str) -> Any:
    """The node a local `$ref` (`#/a/b~1c`) points at; KeyError when there is none."""
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def validator_for(document: dict[str, Any], ref: str) -> Draft7Validator:
    """A validator of the schema at `ref`, its own `$ref`s resolved inside `document`."""
    return Draft7Validator({"$ref": ref, "components": document["components"]})


class RecordingChannel:
    """Stands in for an aio-pika channel: records each exchange, queue and binding declared."""

    def __init__(self) -> None:
        self.exchanges: dict[str, tuple[str, bool]] = {}
        """name -> (type, durable)"""
        self.queues: dict[str, tuple[bool, dict[str, Any]]] = {}
        """name -> (durable, arguments)"""
        self.bindings: dict[str, list[tuple[str, str]]] = {}
        """queue -> [(exchange, routing key)]"""
        self.deleted: list[str] = []
        """Queues deleted if empty (none of them exists here)."""

    async def declare_exchange(
        self, name: str, type: aio_pika.ExchangeType | str, *, durable: bool = False
    ) -> str:
        self.exchanges[name] = (aio_pika.ExchangeType(type).value, durable)
        return name

    async def declare_queue(
        self, name: str, *, durable: bool = False, arguments: dict[str, Any] | None = None
    ) -> _RecordedQueue:
        self.queues[name] = (durable, dict(arguments or {}))
        return _RecordedQueue(self, name)

    async def queue_delete(self, name: str, *, if_empty: bool = False) -> None:
        assert if_empty, "only empty queues are ever deleted"
        self.deleted.append(name)


class _RecordedQueue:
    def __init__(self, channel: RecordingChannel, name: str) -> None:
        self._channel = channel
        self._name = name

    async def bind(self, exchange: str, routing_key: str = "") -> None:
        self._channel.bindings.setdefault(self._name, []).append((exchange, routing_key))
