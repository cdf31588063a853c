"""`python -m gateway`: serve the HTTP gateway with uvicorn (one worker)."""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Sequence

import uvicorn

from common.observability.logging import configure_logging
from common.observability.tracing import configure_tracing, shutdown_tracing
from common.settings import Settings, get_settings
from gateway.app import BROKER_WAIT_S, create_app

KEEP_ALIVE_S = 75
"""Idle time before the gateway closes a kept-alive connection. Longer than the idle timeout of
clients and load balancers (httpx 5 s, AWS ALB 60 s): if the server closed first, a request sent
on the connection just as it closes would fail (uvicorn's default is 5 s, the same as httpx's)."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="The HTTP gateway of the loaded domains (DOMAINS). Configured by environment "
        "variables (AMQP_URL, REDIS_URL, API_KEYS, ...).",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="port to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--broker-wait",
        type=float,
        default=BROKER_WAIT_S,
        metavar="SECONDS",
        help="how long start-up waits for RabbitMQ before serving anyway (default: %(default)s)",
    )
    return parser.parse_args(argv)


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = get_settings()
    configure_logging("gateway", settings.log_level, settings.log_format)
    configure_tracing("gateway", settings.traces_file)
    try:
        _serve(args, settings)
    finally:
        shutdown_tracing()


def _serve(args: argparse.Namespace, settings: Settings) -> None:
    uvicorn.run(
        create_app(settings, broker_wait_s=args.broker_wait),
        host=args.host,
        port=args.port,
        loop="uvloop" if _available("uvloop") else "asyncio",
        http="httptools" if _available("httptools") else "h11",
        workers=1,
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
        timeout_keep_alive=KEEP_ALIVE_S,
        limit_concurrency=settings.http_max_concurrency,
    )


if __name__ == "__main__":
    main()
