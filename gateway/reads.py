"""What every query route shares: one query object per app, and Redis trouble as 503."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request

from common.readmodel.reading import ViewsUnavailable
from gateway.problems import unavailable
from gateway.runtime import REDIS_ERRORS, runtime_of

log = logging.getLogger(__name__)


Q = TypeVar("Q")
T = TypeVar("T")


def queries_of(request: Request, factory: Callable[..., Q]) -> Q:
    """The app's instance of a query class (made on first use from the runtime's Redis client
    and keys), so its scripts are registered once."""
    state = request.app.state
    cache: dict[Callable[..., object], object] = getattr(state, "query_objects", None) or {}
    state.query_objects = cache
    found = cache.get(factory)
    if found is None:
        runtime = runtime_of(request)
        found = cache[factory] = factory(runtime.redis, runtime.keys)
    return found  # type: ignore[return-value]


async def read(call: Awaitable[T], what: str) -> T:
    """Await a read of `what` ("the invoice views"); missing views or Redis trouble become 503
    problems."""
    try:
        return await call
    except ViewsUnavailable as exc:
        raise unavailable(f"{what.capitalize()} are being rebuilt; retry shortly.") from exc
    except REDIS_ERRORS as exc:
        log.warning("redis read failed: %r", exc)
        raise unavailable(f"{what.capitalize()} cannot be read now.") from exc


__all__ = ["queries_of", "read"]
