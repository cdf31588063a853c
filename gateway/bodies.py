"""Reading a JSON request body by hand: media type, size limit, then strict parsing.

FastAPI's own body handling would parse the JSON into Python objects first (money as float)
and read any size; here the raw bytes go straight to pydantic's JSON parser, and reading stops
as soon as the body is larger than allowed.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from gateway.problems import (
    Problem,
    ProblemType,
    problem_from_validation_error,
    validation_problem,
)

ModelT = TypeVar("ModelT", bound=BaseModel)


def is_json_media_type(content_type: str) -> bool:
    """`application/json`, optionally with parameters; a charset, if given, must be UTF-8."""
    media_type, _, params = content_type.partition(";")
    if media_type.strip().lower() != "application/json":
        return False
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False
    return True


def _too_large(limit: int) -> Problem:
    return Problem(
        413,
        f"The request body is larger than {limit} bytes.",
        type_=ProblemType.BODY_TOO_LARGE,
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) a declared or actual size above `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Problem(400, "Content-Length is not a number.")
        if int(declared) > limit:
            raise _too_large(limit)
    # `receive` directly: `request.stream()` is an async generator, slower per request.
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type")
    if content_type is None or not is_json_media_type(content_type):
        raise Problem(
            415,
            "The request body must be JSON, sent as 'Content-Type: application/json'.",
            type_=ProblemType.UNSUPPORTED_MEDIA_TYPE,
            headers={"Accept-Post": "application/json"},
        )


def parse_json(model: type[ModelT], raw: bytes) -> ModelT:
    """Validate `raw` JSON as `model`; 422 naming every invalid field."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise problem_from_validation_error(exc) from None


async def read_json(request: Request, model: type[ModelT], limit: int) -> ModelT:
    """Media type (415), size (413) and content (422) checked, in that order; a request with
    no body at all (no media type, no bytes) lacks a required part, like a missing field (422)."""
    if "content-type" not in request.headers and not await read_body(request, limit):
        raise validation_problem([{"field": "body", "message": "a JSON body is required"}])
    require_json(request)
    return parse_json(model, await read_body(request, limit))


async def read_optional_json(request: Request, model: type[ModelT], limit: int) -> ModelT:
    """Like `read_json`, but an absent body is the empty object and needs no media type."""
    raw = await read_body(request, limit)
    if not raw.strip():
        return parse_json(model, b"{}")
    require_json(request)
    return parse_json(model, raw)
