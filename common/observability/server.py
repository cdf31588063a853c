"""A tiny HTTP server for workers: /health/live, /health/ready and /metrics.

Workers have no web framework; this is a few dozen lines of asyncio instead of one more
dependency. It answers GET only, one request per connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]


def _response(status: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class HealthServer:
    """Serves liveness, readiness (from `ready_check`) and Prometheus metrics."""

    def __init__(self, port: int, ready_check: ReadyCheck, host: str = "0.0.0.0") -> None:
        self._host = host
        self._port = port
        self._ready_check = ready_check
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            writer.write(await self._route(path))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _route(self, path: str) -> bytes:
        if path == "/health/live":
            return _response("200 OK", b'{"status":"ok"}', "application/json")
        if path == "/health/ready":
            try:
                checks = await asyncio.wait_for(self._ready_check(), 3)
            except Exception:
                log.debug("readiness check failed", exc_info=True)
                checks = {"check": False}
            ok = all(checks.values())
            body = orjson.dumps({"status": "ok" if ok else "unavailable", "checks": checks})
            return _response(
                "200 OK" if ok else "503 Service Unavailable", body, "application/json"
            )
        if path == "/metrics":
            return _response("200 OK", generate_latest(), CONTENT_TYPE_LATEST)
        return _response("404 Not Found", b'{"status":"not found"}', "application/json")
