"""The order view: what the projector stores in an order's hash and what the gateway returns.

Money travels as exact decimal strings with two places; times as ISO 8601 in UTC; absent values
as empty strings in the hash and `null` in JSON. `from_hash(to_hash(view)) == view`, which lets
the projector read a view back and continue from it.

The hash keeps every value short, so Redis stores it as a listpack (no value over
`hash-max-listpack-value`, 64 bytes by default) rather than a hashtable, which cost 2.4 times
as much: each line is a field of its own, `item:{n}` = `{product_id} {quantity} {price}` (ids
and prices hold no space), and each address part is a field `address:{part}`. Lines are only
ever added, so a later view's fields are a superset of an earlier one's and HSET of the whole
view leaves nothing stale. A long address line or cancel reason (up to 200 characters) makes
that one order's hash a hashtable: still correct, only larger.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import orjson

from common.contracts.base import money_str
from orders.contracts import ShippingAddress

ITEM_FIELD = "item:"
"""Prefix of a line's field: `item:1` is the first line."""
ADDRESS_FIELD = "address:"
"""Prefix of an address part's field: `address:city`."""
ADDRESS_PARTS = tuple(ShippingAddress.model_fields)
"""The address parts in contract order, the order the API shows them in."""


class ViewStatus(StrEnum):
    """Status of an order as the views show it."""

    CREATED = "created"
    SHIPPED = "shipped"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class ViewLine:
    product_id: str
    quantity: int
    price: Decimal

    def to_json(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "quantity": self.quantity,
            "price": money_str(self.price),
        }

    def packed(self) -> str:
        """The line as its hash field's value: `{product_id} {quantity} {price}`."""
        return f"{self.product_id} {self.quantity} {money_str(self.price)}"


def _line_json(packed: str) -> dict[str, Any]:
    """`ViewLine.to_json()` of a packed line, without building the line."""
    product_id, quantity, price = packed.split(" ")
    return {"product_id": product_id, "quantity": int(quantity), "price": price}


@dataclass(frozen=True, slots=True)
class OrderView:
    """One order as the read side knows it, after `version` events."""

    order_id: str
    customer_id: str
    status: ViewStatus
    lines: tuple[ViewLine, ...]
    shipping_address: tuple[tuple[str, str], ...]
    """The address fields in contract order (a tuple keeps the view hashable and ordered)."""
    created_at: datetime
    updated_at: datetime
    shipped_at: datetime | None
    cancelled_at: datetime | None
    cancel_reason: str | None
    version: int

    @property
    def total_amount(self) -> Decimal:
        return sum((line.price * line.quantity for line in self.lines), Decimal("0.00"))

    @property
    def item_count(self) -> int:
        return sum(line.quantity for line in self.lines)

    @property
    def created_score(self) -> int:
        """Sort score by creation: microseconds since the epoch (exact in a double)."""
        return time_score(self.created_at)

    def to_hash(self) -> dict[str, str]:
        fields = {
            "order_id": self.order_id,
            "customer_id": self.customer_id,
            "status": self.status.value,
            "total_amount": money_str(self.total_amount),
            "item_count": str(self.item_count),
        }
        for number, line in enumerate(self.lines, start=1):
            fields[f"{ITEM_FIELD}{number}"] = line.packed()
        for part, value in self.shipping_address:
            fields[ADDRESS_FIELD + part] = value
        return fields | {
            "created_at": _time_str(self.created_at),
            "updated_at": _time_str(self.updated_at),
            "shipped_at": _time_str(self.shipped_at),
            "cancelled_at": _time_str(self.cancelled_at),
            "cancel_reason": self.cancel_reason or "",
            "version": str(self.version),
        }

    @classmethod
    def from_hash(cls, raw: Mapping[bytes, bytes] | Mapping[str, str]) -> OrderView:
        """The view stored by `to_hash`; raises `KeyError`/`ValueError` on anything else."""
        fields = {_text(k): _text(v) for k, v in raw.items()}
        items, address = _lines_and_address(fields)
        return cls(
            order_id=fields["order_id"],
            customer_id=fields["customer_id"],
            status=ViewStatus(fields["status"]),
            lines=tuple(
                ViewLine(i["product_id"], i["quantity"], Decimal(i["price"])) for i in items
            ),
            shipping_address=tuple(address.items()),
            created_at=_parse_time(fields["created_at"]),
            updated_at=_parse_time(fields["updated_at"]),
            shipped_at=_parse_optional_time(fields["shipped_at"]),
            cancelled_at=_parse_optional_time(fields["cancelled_at"]),
            cancel_reason=fields["cancel_reason"] or None,
            version=int(fields["version"]),
        )

    def to_api(self) -> dict[str, Any]:
        """The JSON body of `GET /orders/{order_id}`."""
        return {
            "order_id": self.order_id,
            "customer_id": self.customer_id,
            "status": self.status.value,
            "total_amount": money_str(self.total_amount),
            "item_count": self.item_count,
            "items": [line.to_json() for line in self.lines],
            "shipping_address": dict(self.shipping_address),
            "created_at": _time_str(self.created_at),
            "updated_at": _time_str(self.updated_at),
            "shipped_at": _time_str(self.shipped_at) or None,
            "cancelled_at": _time_str(self.cancelled_at) or None,
            "cancel_reason": self.cancel_reason,
            "version": self.version,
        }


_TEXT_FIELDS = (b"order_id", b"customer_id", b"status", b"total_amount")
_TIME_FIELDS = (b"created_at", b"updated_at")
_OPTIONAL_FIELDS = (b"shipped_at", b"cancelled_at", b"cancel_reason")


def _lines_and_address(fields: Mapping[str, str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The lines (as the API shows them, in the order they were added) and the address (in
    contract order) of a view's hash fields; a hash field's order is not kept by Redis once
    it is a hashtable, so the order comes from the field names."""
    lines: list[tuple[int, str]] = []
    parts: dict[str, str] = {}
    for name, value in fields.items():
        if name.startswith(ITEM_FIELD):
            lines.append((int(name[len(ITEM_FIELD) :]), value))
        elif name.startswith(ADDRESS_FIELD):
            parts[name[len(ADDRESS_FIELD) :]] = value
    lines.sort()
    address = {part: parts[part] for part in ADDRESS_PARTS if part in parts}
    return [_line_json(packed) for _, packed in lines], address


_ITEM_PREFIX = ITEM_FIELD.encode()
_RAW_ADDRESS_FIELDS = tuple(((ADDRESS_FIELD + part).encode(), part) for part in ADDRESS_PARTS)


def _raw_lines_and_address(
    raw: Mapping[bytes, bytes],
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """`_lines_and_address` of a hash as Redis returns it, decoding only the lines' and
    address's values (the query path: every other field is read by name)."""
    lines: list[tuple[int, bytes]] = []
    for name, value in raw.items():
        if name.startswith(_ITEM_PREFIX):
            lines.append((int(name[len(_ITEM_PREFIX) :]), value))
    lines.sort()
    address = {}
    for field, part in _RAW_ADDRESS_FIELDS:
        stored = raw.get(field)
        if stored is not None:
            address[part] = stored.decode()
    return [_line_json(packed.decode()) for _, packed in lines], address


def api_json(raw: Mapping[bytes, bytes]) -> bytes:
    """`OrderView.from_hash(raw).to_api()` as JSON, the same bytes, without building the view:
    the hash already holds each value as the API shows it (money and times as strings, each
    line packed, each address part a field). Queries answer with it; raises `KeyError` on a
    hash that is not a view."""
    body: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        body[name.decode()] = raw[name].decode()
    body["item_count"] = int(raw[b"item_count"])
    body["items"], body["shipping_address"] = _raw_lines_and_address(raw)
    for name in _TIME_FIELDS:
        body[name.decode()] = raw[name].decode()
    for name in _OPTIONAL_FIELDS:
        body[name.decode()] = raw[name].decode() or None
    body["version"] = int(raw[b"version"])
    return orjson.dumps(body)


def time_score(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive time is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _time_str(moment: datetime | None) -> str:
    return utc(moment).isoformat() if moment is not None else ""


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _parse_optional_time(text: str) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- search tokens -----------------------------------------------------------------------------

MAX_TOKEN_LENGTH = 64
_EDGE_PUNCTUATION = ".,;:!?\"'()[]{}<>"
_WORD_PARTS = re.compile(r"[^\w]+")


def normalise_term(term: str) -> str:
    """A search term as it is indexed: case-folded, without punctuation around it."""
    return term.casefold().strip(_EDGE_PUNCTUATION)[:MAX_TOKEN_LENGTH]


def identifier_tokens(identifiers: Iterable[str]) -> set[str]:
    """Identifiers (order, customer, product ids) are indexed whole, never split."""
    return {t for t in (normalise_term(i) for i in identifiers) if t}


def text_tokens(texts: Iterable[str]) -> set[str]:
    """Every word of free text, and the parts of words joined by punctuation:
    `Main-Street` gives `main-street`, `main` and `street`."""
    tokens: set[str] = set()
    for text in texts:
        for word in text.split():
            whole = normalise_term(word)
            if not whole:
                continue
            tokens.add(whole)
            tokens.update(part for part in _WORD_PARTS.split(whole) if part)
    return tokens


def query_terms(query: str) -> list[str]:
    """The distinct terms of a search query, in order; every term must match (AND)."""
    seen: dict[str, None] = {}
    for word in query.split():
        term = normalise_term(word)
        if term:
            seen.setdefault(term, None)
    return list(seen)
