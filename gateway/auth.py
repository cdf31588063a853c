"""Optional API keys: with keys configured, every endpoint but `/health/*` needs a Bearer key.

A pure ASGI middleware, so it also guards routes other modules add later, the docs and 404s.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.problems import Problem, ProblemType

OPEN_PREFIX = "/health/"
"""Probes must work without credentials."""


class ApiKeyMiddleware:
    """Answers 401 problem+json with `WWW-Authenticate: Bearer` unless a known key is presented."""

    def __init__(self, app: ASGIApp, keys: Iterable[str]) -> None:
        self.app = app
        self._keys = tuple(key.encode() for key in keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"].startswith(OPEN_PREFIX)
            or self._authorized(scope)
        ):
            await self.app(scope, receive, send)
            return
        problem = Problem(
            401,
            "A valid API key is required: 'Authorization: Bearer <key>'.",
            type_=ProblemType.UNAUTHORIZED,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await problem.response()(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        presented = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    presented = credentials.strip()
                break
        if not presented:
            return False
        # Compare with every key, so the time taken does not tell which one nearly matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        return matched
