"""The orders domain: orders that are created, get items, and are shipped or cancelled.

`DOMAIN` is all the generic hosts see of it (`DOMAINS=orders`); `domain.py` assembles it.
"""

from orders.domain import DOMAIN

__all__ = ["DOMAIN"]
