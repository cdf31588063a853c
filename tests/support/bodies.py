"""Request bodies the HTTP tests send."""

from __future__ import annotations

from typing import Any

from harness import load
from orders.contracts import ShippingAddress

ORDER: dict[str, Any] = {
    "customer_id": "e2e-customer",
    "items": [
        {"product_id": "sku-a", "quantity": 2, "price": "10.10"},
        {"product_id": "sku-b", "quantity": 1, "price": "0.05"},
    ],
    "shipping_address": {
        "recipient": "Grace Hopper",
        "street": "7 Compiler Lane",
        "city": "Arlington",
        "postal_code": "22201",
        "country": "US",
    },
}
"""A valid `POST /orders` body: two lines, 20.25 in all."""

ADDRESS = ShippingAddress(**load.ADDRESS)
"""The load's shipping address as the contract's model, for commands built in the tests."""
