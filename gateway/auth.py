"""Optional API keys: with keys configured, every endpoint but `/health/*` needs a Bearer key.

A pure ASGI middleware, so it also guards routes other modules add later, the docs and 404s.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.problems import Problem, ProblemType

OPEN_PREFIX = "/health/"
"""Probes must work without credentials."""

_CLIENT = "gateway.client"
"""The scope entry naming the API key a request presented (see `client_of`)."""


def client_of(request: Request) -> str:
    """A stable, non-secret name of the API key the request presented (a digest of it), or ""
    when API keys are off. Idempotency keys are scoped by it."""
    client = request.scope.get(_CLIENT, "")
    return client if isinstance(client, str) else ""


class ApiKeyMiddleware:
    """Answers 401 problem+json with `WWW-Authenticate: Bearer` unless a known key is presented."""

    def __init__(self, app: ASGIApp, keys: Iterable[str]) -> None:
        self.app = app
        self._keys = tuple(key.encode() for key in keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(OPEN_PREFIX):
            await self.app(scope, receive, send)
            return
        presented = self._authorized(scope)
        if presented is not None:
            scope[_CLIENT] = hashlib.sha256(presented).hexdigest()[:32]
            await self.app(scope, receive, send)
            return
        problem = Problem(
            401,
            "A valid API key is required: 'Authorization: Bearer <key>'.",
            type_=ProblemType.UNAUTHORIZED,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await problem.response()(scope, receive, send)

    def _authorized(self, scope: Scope) -> bytes | None:
        """The key presented, if it is a known one."""
        presented = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    presented = credentials.strip()
                break
        if not presented:
            return None
        # Compare with every key, so the time taken does not tell which one nearly matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        return presented if matched else None
