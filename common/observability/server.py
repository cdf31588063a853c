"""The workers' HTTP server: /health/live, /health/ready and /metrics.

Starlette routes served by uvicorn, both already dependencies of the gateway, so requests are
parsed by a real HTTP implementation with its own bounds. It runs inside the worker's event
loop and leaves the worker's signal handling alone: the worker decides when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]

MAX_HEAD_BYTES = 16 * 1024
"""The most of a request line and headers the server reads before refusing the request."""

READY_CHECK_S = 3.0
"""How long a readiness check may take before it counts as failed."""


def health_app(ready_check: ReadyCheck) -> Starlette:
    """The three routes, for any process that has a readiness check."""

    async def live(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_request: Request) -> Response:
        try:
            checks = await asyncio.wait_for(ready_check(), READY_CHECK_S)
        except Exception:
            log.debug("readiness check failed", exc_info=True)
            checks = {"check": False}
        ok = all(checks.values())
        body = {"status": "ok" if ok else "unavailable", "checks": checks}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def not_found(_request: Request, _exc: Exception) -> Response:
        return JSONResponse({"status": "not found"}, status_code=404)

    return Starlette(
        routes=[
            Route("/health/live", live),
            Route("/health/ready", ready),
            Route("/metrics", metrics),
        ],
        exception_handlers={404: not_found},
    )


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the worker's own stop signals stay in charge."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HealthServer:
    """Serves liveness, readiness (from `ready_check`) and Prometheus metrics."""

    def __init__(self, port: int, ready_check: ReadyCheck, host: str = "127.0.0.1") -> None:
        config = uvicorn.Config(
            health_app(ready_check),
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_keep_alive=5,
            limit_concurrency=64,
            # h11 bounds what it buffers of a request's head (httptools does not).
            http="h11",
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve in the background; return once the port is bound (raise if it cannot be)."""
        self._task = asyncio.create_task(self._server.serve(), name="health-server")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # the bind failed: raise what it raised
                raise OSError(f"the health server stopped before serving on {self._port()}")
            await asyncio.sleep(0.01)

    def _port(self) -> int:
        return self._server.config.port

    async def close(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception, SystemExit):
            await self._task
        self._task = None
