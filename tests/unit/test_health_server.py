"""The workers' health and metrics server: its routes, its bounds, and the worker's signals."""

from __future__ import annotations

import signal

import httpx

from common.observability.server import HealthServer
from harness.processes import free_port


async def test_it_serves_the_three_routes_and_bounds_requests() -> None:
    ready = {"redis": True, "rabbitmq": True}

    async def check() -> dict[str, bool]:
        return dict(ready)

    before = signal.getsignal(signal.SIGTERM)
    port = free_port()
    server = HealthServer(port, check)
    await server.start()
    try:
        assert signal.getsignal(signal.SIGTERM) is before  # the worker's handlers stay
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            assert (await http.get("/health/live")).json() == {"status": "ok"}
            answer = await http.get("/health/ready")
            assert answer.status_code == 200
            assert answer.json() == {"status": "ok", "checks": ready}
            ready["redis"] = False
            answer = await http.get("/health/ready")
            assert answer.status_code == 503
            assert answer.json()["checks"] == {"redis": False, "rabbitmq": True}
            metrics = await http.get("/metrics")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain")
            assert (await http.get("/nowhere")).status_code == 404
            # A header line longer than any real client sends is refused, not read for ever.
            huge = await http.get("/health/live", headers={"x-filler": "a" * 200_000})
            assert huge.status_code in (400, 431)
    finally:
        await server.close()
    assert signal.getsignal(signal.SIGTERM) is before
