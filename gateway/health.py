"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from gateway.runtime import runtime_of

router = APIRouter(tags=["operations"])


@router.get("/health/live", summary="The process is up")
async def live() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get(
    "/health/ready",
    summary="RabbitMQ is connected and Redis answers",
    responses={503: {"description": "A dependency is unavailable; the body names it."}},
)
async def ready(request: Request) -> Response:
    checks = await runtime_of(request).readiness()
    ok = all(checks.values())
    body = {"status": "ok" if ok else "unavailable", "checks": checks}
    return Response(orjson.dumps(body), 200 if ok else 503, media_type="application/json")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
