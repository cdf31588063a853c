"""Self-description: the OpenAPI schema of bodies the routes read and write by hand, and the
AsyncAPI document of the queues.

The command routes take the raw body (to parse money exactly and stop reading early), so FastAPI
cannot see their request models; routes point at `#/components/schemas/<Model>` through
`openapi_extra`, and `install_openapi` adds those components to the generated document.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.responses import Response

from gateway.problems import PROBLEM_JSON
from gateway.routing import UUID_PATTERN

REF = "#/components/schemas/{model}"


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def json_body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """`openapi_extra` for a route that reads `model` as its JSON body."""
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": ref(model)}},
        }
    }


def header_parameter(
    name: str, description: str, schema: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def path_parameter(name: str, description: str) -> dict[str, Any]:
    """A UUID path parameter (for routes that parse their own parameters)."""
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "format": "uuid", "pattern": UUID_PATTERN},
    }


def query_parameter(
    name: str, description: str, schema: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A required string query parameter (for routes that parse their own parameters)."""
    return {
        "name": name,
        "in": "query",
        "required": True,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def json_response_doc(model: type[BaseModel], description: str) -> dict[str, Any]:
    """A `responses` entry for a JSON answer described by `model` (listed in the components)."""
    return {"description": description, "content": {"application/json": {"schema": ref(model)}}}


def problem_response(description: str) -> dict[str, Any]:
    """A `responses` entry for an `application/problem+json` answer."""
    return {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": REF.format(model="ProblemDetails")}}},
    }


def install_openapi(
    app: FastAPI,
    models: Iterable[type[BaseModel]],
    components: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Generate the schema once, with `models` (and their parts) and `components` (schemas
    by name) among its components."""
    extra = components or {}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _, definitions = models_json_schema(
                [(model, "validation") for model in models], ref_template=REF
            )
            found = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in definitions.get("$defs", {}).items():
                found.setdefault(name, definition)
            found.update(extra)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


ASYNCAPI_PATH = "/asyncapi.json"


def install_asyncapi(app: FastAPI, describe: Callable[[], dict[str, Any]]) -> None:
    """Serve `describe()` at `/asyncapi.json`: built on the first request, then kept (the
    topology and the contracts do not change while the process runs)."""
    document = cache(lambda: orjson.dumps(describe()))

    async def asyncapi() -> Response:
        return Response(document(), media_type="application/json")

    app.add_api_route(
        ASYNCAPI_PATH,
        asyncapi,
        methods=["GET"],
        summary="The AsyncAPI 3.0.0 document of the exchanges, queues and messages",
        tags=["operations"],
        response_class=Response,
        responses={
            200: {
                "description": "Every exchange, queue and routing key, and every command and "
                "event with its headers and payload schema.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    )
