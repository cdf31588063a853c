"""The keys of the order views inside one generation of the `order_views` projection.

Every key is `{prefix}order_views.v4:g{generation}:{suffix}` (see `common/readmodel/layout.py`;
`v4` is the projection's `layout`).
The suffix functions below are the only place these suffixes are spelled.

| suffix                             | type   | content                                        |
|------------------------------------|--------|------------------------------------------------|
| `order:{order_id}`                 | hash   | the order view (see `view.py`)                 |
| `history:{order_id}`               | list   | one JSON array per event, in version order     |
| `customer:{customer_id}`           | zset   | order ids by creation time                     |
| `customer:{customer_id}:{status}`  | zset   | the same, one set per status                   |
| `status:{status}`                  | zset   | order ids by creation time, one set per status |
| `orders:by_created`                | zset   | every order id by creation time                |
| `orders:by_total`                  | zset   | every order id by total amount                 |
| `token:{token}`                    | zset   | order ids by creation time, per search token   |
|                                    |        | (customer, product, address; not the order id) |
"""

from __future__ import annotations


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
