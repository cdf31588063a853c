"""Process plumbing shared by the processes: event loop choice, stop signals, the heap."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from common.observability import metrics


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop`; a second signal is left to the default handler."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):

        def handler(sig: signal.Signals = sig) -> None:
            stop.set()
            loop.remove_signal_handler(sig)

        loop.add_signal_handler(sig, handler)


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run `main` on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional at run time
        return asyncio.run(main())
    return uvloop.run(main())


def settle_heap() -> None:
    """Call once start-up is done: move everything allocated so far (modules, classes, schemas,
    connections: about 80k objects) out of the garbage collector's sight, and start timing
    collections (`orders_gc_pause_seconds`).

    Each full collection walked all of them again, about 12 ms of CPU during which the process
    stands still; frozen objects are never collected, which is what they would be anyway. One
    collection first, so that garbage of the start-up (a rebuild's, say) is not kept for ever."""
    gc.collect()
    gc.freeze()
    metrics.watch_gc_pauses()
