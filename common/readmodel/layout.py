"""The keys of the order views inside one generation.

Every view key is `{prefix}g{generation}:{suffix}`. The suffix functions below are the only
place the suffixes are spelled; the read scripts receive suffixes from Python and prepend the
generation base themselves (`generation_base` below is mirrored once in `read_scripts.py`).

| suffix                             | type   | content                                        |
|------------------------------------|--------|------------------------------------------------|
| `order:{order_id}`                 | hash   | the order view (see `order_view.py`)           |
| `history:{order_id}`               | list   | one JSON entry per event, in version order     |
| `customer:{customer_id}`           | zset   | order ids by creation time                     |
| `customer:{customer_id}:{status}`  | zset   | the same, one set per status                   |
| `status:{status}`                  | zset   | order ids by creation time, one set per status |
| `orders:by_created`                | zset   | every order id by creation time                |
| `orders:by_total`                  | zset   | every order id by total amount                 |
| `token:{token}`                    | zset   | order ids by creation time, per search token   |
| `checkpoint`                       | string | highest global position applied                |
| `members`                          | set    | every other key of the generation, to drop it  |
"""

from __future__ import annotations

from dataclasses import dataclass


def generation_base(prefix: str, generation: int | str) -> str:
    return f"{prefix}g{generation}:"


def order_suffix(order_id: str) -> str:
    return f"order:{order_id}"


def history_suffix(order_id: str) -> str:
    return f"history:{order_id}"


def customer_suffix(customer_id: str, status: str | None = None) -> str:
    if status is None:
        return f"customer:{customer_id}"
    return f"customer:{customer_id}:{status}"


def status_suffix(status: str) -> str:
    return f"status:{status}"


def token_suffix(token: str) -> str:
    return f"token:{token}"


BY_CREATED = "orders:by_created"
BY_TOTAL = "orders:by_total"
CHECKPOINT = "checkpoint"
MEMBERS = "members"


@dataclass(frozen=True, slots=True)
class ViewKeys:
    """Full key names of one generation."""

    prefix: str
    generation: int

    @property
    def base(self) -> str:
        return generation_base(self.prefix, self.generation)

    def key(self, suffix: str) -> str:
        return self.base + suffix

    def order(self, order_id: str) -> str:
        return self.base + order_suffix(order_id)

    def history(self, order_id: str) -> str:
        return self.base + history_suffix(order_id)

    @property
    def checkpoint(self) -> str:
        return self.base + CHECKPOINT

    @property
    def members(self) -> str:
        return self.base + MEMBERS
