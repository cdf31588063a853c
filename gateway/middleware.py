"""Pure ASGI middleware: the correlation id and request metrics.

Plain ASGI callables, not `BaseHTTPMiddleware`, which costs a task and a stream per request.
"""

from __future__ import annotations

import time
import uuid
from uuid import UUID

from prometheus_client import Histogram
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.observability import metrics
from common.observability.logging import correlation_id

CORRELATION_HEADER = "X-Correlation-Id"
_CORRELATION_HEADER_RAW = CORRELATION_HEADER.lower().encode()
_STATE_KEY = "correlation_id"
UNMATCHED_ROUTE = "unmatched"
"""The route label of requests no route matched, so stray paths add no label values."""
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Other method names are any token a client likes; they are counted as `OTHER`."""


class RequestMiddleware:
    """Per request: takes `X-Correlation-Id` if it is a UUID (else makes one), logs with it and
    echoes it; observes `orders_http_request_seconds` by method, route template and status.

    One middleware for both: every layer costs a closure and a `send` wrapper per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._children: dict[tuple[str, str, int], Histogram] = {}
        """Labelled histograms by label values; `labels()` costs more than the observation."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        cid = _parse(scope)
        scope.setdefault("state", {})[_STATE_KEY] = cid
        text = str(cid)
        header = (_CORRELATION_HEADER_RAW, text.encode())
        token = correlation_id.set(text)

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            correlation_id.reset(token)
            self._observe(scope, status, time.perf_counter() - started)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path_format", None) or UNMATCHED_ROUTE
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        labels = (method, template, status)
        child = self._children.get(labels)
        if child is None:
            child = metrics.HTTP_REQUESTS.labels(method, template, str(status))
            self._children[labels] = child
        child.observe(seconds)


def _parse(scope: Scope) -> UUID:
    for name, value in scope["headers"]:
        if name == _CORRELATION_HEADER_RAW:
            try:
                return UUID(value.decode("latin-1"))
            except ValueError:
                break
    return uuid.uuid4()


def request_correlation_id(request: Request) -> UUID:
    """The correlation id `RequestMiddleware` chose for this request."""
    cid = request.scope.get("state", {}).get(_STATE_KEY)
    return cid if isinstance(cid, UUID) else uuid.uuid4()
