"""A lean route for the hot command endpoints, and the parameter parsing it leaves to them.

FastAPI's per-request machinery (dependency solving, body sniffing, response serialisation)
costs more than the gateway's own validation. `RawRoute` keeps what FastAPI offers at start-up
(the route in the OpenAPI document, path matching, exception handlers) but calls the endpoint
with just the `Request`: the endpoint parses its path and query parameters itself, with the
helpers below, and reads the body with `gateway.bodies`. Dependencies declared on a router do
not run for these routes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any
from uuid import UUID

from fastapi.routing import APIRoute
from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import Response

from gateway.problems import validation_problem

RawEndpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class RawRoute(APIRoute):
    """An `APIRoute` whose endpoint is `async def endpoint(request) -> Response`."""

    def get_route_handler(self) -> RawEndpoint:
        endpoint: RawEndpoint = self.endpoint
        return endpoint


_UUID: TypeAdapter[UUID] = TypeAdapter(UUID)
UUID_PATTERN = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
"""A UUID as ids are written (RFC 9562), which is what OpenAPI's `format: uuid` means."""
_HYPHENATED = re.compile(UUID_PATTERN)


def path_uuid(request: Request, name: str) -> UUID:
    """The path parameter `name` as a UUID in its hyphenated form (pydantic alone also takes
    32 bare digits, braces and `urn:uuid:`; `UUID()` alone, full-width digits); 422 naming it
    otherwise."""
    raw = request.path_params[name]
    if _HYPHENATED.fullmatch(raw) is None:
        raise validation_problem([{"field": name, "message": "must be a UUID"}])
    return _UUID.validate_python(raw)
