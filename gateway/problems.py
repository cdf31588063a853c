"""Every error the gateway answers is `application/problem+json` (RFC 9457).

Handlers raise `Problem`; the exception handlers registered by `install_problem_handlers` turn
it, and FastAPI's own 404/405/422/500, into the same shape:
`{"type", "title", "status", "detail", "errors": [{"field", "message"}]}`.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import compile_path

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class ProblemType(StrEnum):
    """The `type` of a problem: what went wrong, stable for clients to branch on."""

    HTTP = "about:blank"
    """A plain HTTP error whose title is the status phrase (RFC 9457 section 4.2.1)."""
    VALIDATION = "urn:orders:problem:validation"
    """The request was well-formed HTTP but its content is invalid; see `errors`."""
    IDEMPOTENCY_KEY_REUSED = "urn:orders:problem:idempotency-key-reused"
    """The Idempotency-Key was first used with a different request."""
    UNSUPPORTED_MEDIA_TYPE = "urn:orders:problem:unsupported-media-type"
    BODY_TOO_LARGE = "urn:orders:problem:body-too-large"
    UNAVAILABLE = "urn:orders:problem:unavailable"
    """A dependency (RabbitMQ, Redis) is down; retry after `Retry-After` seconds."""
    COMMAND_REJECTED = "urn:orders:problem:command-rejected"
    """The command was refused by its domain's rules (`Prefer: wait` answers); see `detail`."""
    COMMAND_FAILED = "urn:orders:problem:command-failed"
    """The command could not be applied (too many concurrent changes); see `detail`."""
    QUERY_TOO_BROAD = "urn:orders:problem:query-too-broad"
    """The query would make the read store do more work than a query may: refine it (`errors`
    names the parameters that cause it)."""
    UNAUTHORIZED = "urn:orders:problem:unauthorized"
    NOT_FOUND = "urn:orders:problem:not-found"


class Problem(Exception):
    """An error answer; raise it anywhere in a request to reply with problem+json."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type_: ProblemType = ProblemType.HTTP,
        title: str | None = None,
        errors: Sequence[Mapping[str, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type_
        self.title = title or HTTPStatus(status).phrase
        self.errors = list(errors)
        self.headers = dict(headers or {})

    def response(self) -> Response:
        body: dict[str, Any] = {
            "type": self.type.value,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = self.errors
        return Response(
            orjson.dumps(body), self.status, headers=self.headers, media_type=PROBLEM_JSON
        )


def validation_problem(errors: Sequence[Mapping[str, str]], detail: str | None = None) -> Problem:
    """422 naming each invalid field."""
    fields = ", ".join(e["field"] for e in errors)
    return Problem(
        422,
        detail or f"Invalid request: {fields}.",
        type_=ProblemType.VALIDATION,
        title="Invalid request",
        errors=errors,
    )


def too_broad(errors: Sequence[Mapping[str, str]]) -> Problem:
    """422 "refine the query": valid, but too costly to answer; `errors` name the cause."""
    return Problem(
        422,
        "; ".join(e["message"] for e in errors),
        type_=ProblemType.QUERY_TOO_BROAD,
        title="Refine the query",
        errors=errors,
    )


def unavailable(detail: str, retry_after_s: int = 2) -> Problem:
    """503 with `Retry-After`: nothing was accepted, the client should try again."""
    return Problem(
        503,
        detail,
        type_=ProblemType.UNAVAILABLE,
        headers={"Retry-After": str(retry_after_s)},
    )


def field_name(loc: Iterable[int | str], root: str = "body") -> str:
    """`("items", 0, "price")` -> `"items.0.price"`; the empty location is the whole `root`."""
    name = ".".join(str(part) for part in loc)
    return name or root


def errors_from_pydantic(
    errors: Iterable[ErrorDetails], *, root: str = "body"
) -> list[dict[str, str]]:
    """Pydantic error details as `{"field", "message"}`."""
    return [{"field": field_name(e["loc"], root), "message": e["msg"]} for e in errors]


def problem_from_validation_error(exc: ValidationError, root: str = "body") -> Problem:
    return validation_problem(errors_from_pydantic(exc.errors(include_url=False), root=root))


async def _problem_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return exc.response()


async def _request_validation_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "field": field_name(_strip_source(tuple(e.get("loc", ()))), "body"),
            "message": str(e.get("msg", "invalid")),
        }
        for e in exc.errors()
    ]
    return validation_problem(errors).response()


def _strip_source(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    if len(loc) > 1 and loc[0] in ("path", "query", "header", "cookie", "body"):
        return loc[1:]
    return loc


async def _http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    type_ = ProblemType.NOT_FOUND if exc.status_code == 404 else ProblemType.HTTP
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(sorted(_allowed_methods(request)))
    return Problem(exc.status_code, str(exc.detail), type_=type_, headers=headers).response()


def _allowed_methods(request: Request) -> set[str]:
    """Every method the API documents for this path. Starlette names only the first route whose
    path matches: `OPTIONS /invoices/search` would answer `Allow: DELETE`, the method of
    `/invoices/{invoice_id}`, instead of GET."""
    paths: dict[str, dict[str, Any]] = request.app.openapi()["paths"]
    path = request.scope["path"]
    # A literal path (`/invoices/search`) is that resource, not an instance of a template.
    matching = [path] if path in paths else [t for t in paths if _path_pattern(t).match(path)]
    allowed = {method.upper() for template in matching for method in paths[template]}
    if "GET" in allowed:
        allowed.add("HEAD")
    return allowed


@functools.cache
def _path_pattern(template: str) -> re.Pattern[str]:
    pattern, _, _ = compile_path(template)
    return pattern


async def _unhandled_handler(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return Problem(500, "The gateway failed to handle the request.").response()


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error answer of `app` problem+json, including FastAPI's built-in ones."""
    app.add_exception_handler(Problem, _problem_handler)
    app.add_exception_handler(RequestValidationError, _request_validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(Exception, _unhandled_handler)
