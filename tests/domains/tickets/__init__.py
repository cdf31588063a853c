"""A second domain, for tests only: support tickets that are opened and closed.

It proves the seam: it is written the way docs/extending.md says, and runs through the real
gateway, command worker and projector next to `orders` (`DOMAINS=orders,tests.domains.tickets`)
without a change to the generic packages.
"""

from tests.domains.tickets.domain import DOMAIN

__all__ = ["DOMAIN"]
