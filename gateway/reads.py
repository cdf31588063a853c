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


def queries_of(request: Request, factory: Callable[..., Q], *, primary: bool = False) -> Q:
    """The app's instance of a query class, made on first use from a Redis client and the
    runtime's keys, so its scripts are registered once. The client is the one queries read
    (a replica with `REDIS_READ_FROM=replicas`), or the primary with `primary`: for a read that
    must be at least as new as something already seen, or a script that writes (scratch keys).
    Without replicas both are the same instance."""
    state = request.app.state
    cache: dict[tuple[Callable[..., object], bool], object] = (
        getattr(state, "query_objects", None) or {}
    )
    state.query_objects = cache
    runtime = runtime_of(request)
    primary = primary and runtime.redis_reads is not runtime.redis
    found = cache.get((factory, primary))
    if found is None:
        redis = runtime.redis if primary else runtime.redis_reads
        found = cache[factory, primary] = factory(redis, runtime.keys)
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
