"""The load generator: `python -m bench.load CONFIG.json`, one process per generator.

It runs apart from the processes it measures, and talks to its parent on stdin/stdout:
prints `ready` once its connections are open, starts on a `go` line, prints `loaded` when
the load stops (before draining), and writes its result as JSON to the config's
`result_path`. Three loops:

- `closed`: each client keeps one request in flight on its own keep-alive connection;
- `open`: requests leave on a fixed schedule whatever the answers do, so a slow reply cannot
  slow the offered load (latencies are also kept from the *intended* send time);
- both take requests from a `source`: a fixed cycle of prebuilt requests (floors, queries),
  or the order-command mix, whose accepted commands are followed to their projection by one
  Redis subscriber on the read-your-writes channel.
"""

from __future__ import annotations

import asyncio
import collections
import random
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench.mix import Mix, OrderBook, create_requests
from bench.sources import Clock, Commands, Counts, Cycle, Source
from bench.stats import summarize
from bench.wire import HttpConnection, Subscriber


class Loop:
    """Connections, response bookkeeping and the HTTP latency of every request."""

    def __init__(self, host: str, port: int, source: Source, clock: Clock) -> None:
        self.host = host
        self.port = port
        self.source = source
        self.clock = clock
        self.statuses = collections.Counter[int]()
        self.http_ms: list[float] = []
        self.responses = Counts(clock)
        self.errors = 0
        self.stopping = False
        self.connections: list[HttpConnection] = []

    async def connect(self, count: int) -> None:
        self.connections = list(
            await asyncio.gather(
                *(
                    HttpConnection.open(self.host, self.port, self._on_response, self._on_closed)
                    for _ in range(count)
                )
            )
        )

    def _on_response(self, conn: HttpConnection, status: int, body: bytes) -> None:
        now = time.perf_counter()
        self.statuses[status] += 1
        self.http_ms.append((now - conn.sent_at) * 1000)
        self.responses.add(now)
        self.source.answered(conn.context, status, body, conn.sent_at, now)
        self.idle(conn, now)

    def _on_closed(self, conn: HttpConnection, exc: Exception | None) -> None:
        if self.stopping:
            return
        if conn.busy:
            self.errors += 1
            conn.busy = False
        # The server may close an idle keep-alive connection; its client goes on on a new one.
        asyncio.get_running_loop().create_task(self._replace(conn))

    async def _replace(self, old: HttpConnection) -> None:
        try:
            new = await HttpConnection.open(
                self.host, self.port, self._on_response, self._on_closed
            )
        except OSError:
            self.errors += 1
            return
        self.connections = [new if c is old else c for c in self.connections]
        self.idle(new, time.perf_counter())

    def idle(self, conn: HttpConnection, now: float) -> None:
        raise NotImplementedError

    def busy(self) -> bool:
        """Requests are in flight (or, in the open loop, waiting for a connection)."""
        return any(c.busy for c in self.connections)

    def close(self) -> None:
        self.stopping = True
        for conn in self.connections:
            conn.close()


class ClosedLoop(Loop):
    """Every connection sends its next request as soon as the previous one is answered."""

    def start(self) -> None:
        for conn in self.connections:
            self._send(conn)

    def _send(self, conn: HttpConnection) -> None:
        request, context = self.source.next()
        conn.send(request, context)

    def idle(self, conn: HttpConnection, now: float) -> None:
        if not self.stopping and now - self.clock.start < self.clock.duration_s:
            self._send(conn)


class OpenLoop(Loop):
    """Requests leave at `rate` per second on whichever connection is free; when none is,
    they wait in a queue and their latency from the intended time includes the wait."""

    def __init__(self, host: str, port: int, source: Commands, clock: Clock, rate: float) -> None:
        super().__init__(host, port, source, clock)
        self.commands = source
        self.rate = rate
        self._free: list[HttpConnection] = []
        self._queue: collections.deque[float] = collections.deque()
        self.queued_max = 0

    async def run(self) -> None:
        self._free = list(self.connections)
        interval = 1.0 / self.rate
        n = 0
        while True:
            intended = self.clock.start + n * interval
            if intended - self.clock.start >= self.clock.duration_s:
                break
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self._queue.append(intended)
            self.queued_max = max(self.queued_max, len(self._queue))
            self._dispatch()
            n += 1

    def _dispatch(self) -> None:
        while self._queue and self._free:
            conn = self._free.pop()
            if not conn.is_open:
                continue
            self.commands.intended_at = self._queue.popleft()
            request, context = self.commands.next()
            conn.send(request, context)

    def idle(self, conn: HttpConnection, now: float) -> None:
        self._free.append(conn)
        if not self.stopping:
            self._dispatch()

    def busy(self) -> bool:
        return bool(self._queue) or super().busy()


# --- the process -----------------------------------------------------------------------------


async def wait_line(expected: str) -> None:
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if line.strip() != expected:
        raise SystemExit(f"bench.load: expected {expected!r} on stdin, got {line!r}")


def say(word: str) -> None:
    print(word, flush=True)


def peak_rss_mb() -> float | None:
    """This process's VmHWM (`ru_maxrss` would include the parent's peak from before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def poll_until(done: Callable[[], bool], timeout_s: float, every_s: float) -> None:
    """Return when `done()` or after `timeout_s`, whichever comes first."""
    deadline = time.perf_counter() + timeout_s
    while not done():
        if time.perf_counter() > deadline:
            return
        await asyncio.sleep(every_s)


async def _prune_forever(commands: Commands | None) -> None:
    while commands is not None:
        await asyncio.sleep(1.0)
        commands.prune_early(time.perf_counter())


async def run(config: dict[str, Any]) -> dict[str, Any]:
    """Run one phase as `config` says; the result as a JSON-ready dict."""
    mode = config["mode"]
    clock = Clock(warmup_s=config.get("warmup_s", 0.0), duration_s=config["duration_s"])
    seed = config.get("seed", 1)
    commands: Commands | None = None
    subscriber: Subscriber | None = None
    source: Source
    if config["source"] == "commands":
        mix = Mix(**config.get("mix", {}))
        commands = Commands(
            clock,
            OrderBook(mix, random.Random(seed)),
            create_requests(seed, config.get("customers", 500)),
        )
        source = commands
        subscriber = await Subscriber.open(
            config["redis_host"], config["redis_port"], [config["channel"]], commands.on_message
        )
    else:
        source = Cycle([r.encode("latin-1") for r in config["requests"]], offset=seed * 7919)

    loop: ClosedLoop | OpenLoop
    if mode == "open":
        assert commands is not None, "the open loop sends commands"
        loop = OpenLoop(config["host"], config["port"], commands, clock, config["rate"])
    else:
        loop = ClosedLoop(config["host"], config["port"], source, clock)
    await loop.connect(config["connections"])
    say("ready")
    await wait_line("go")

    clock.start = time.perf_counter()
    started_epoch = time.time()
    cpu_at_start = cpu_seconds()
    pruner = asyncio.get_running_loop().create_task(_prune_forever(commands))
    if isinstance(loop, OpenLoop):
        await loop.run()
    else:
        loop.start()
        await asyncio.sleep(clock.duration_s)
    load_end = time.perf_counter()
    load_cpu = cpu_seconds() - cpu_at_start
    # In-flight requests still get their answers: a 202 that arrives now still counts.
    await poll_until(lambda: not loop.busy(), 10.0, 0.01)
    say("loaded")

    result: dict[str, Any] = {
        "mode": mode,
        "source": config["source"],
        "connections": config["connections"],
        "duration_s": clock.duration_s,
        "started_epoch": started_epoch,
        "warmup_s": clock.warmup_s,
        "load_wall_s": load_end - clock.start,
        "cpu_s": load_cpu,
        "cpu_fraction": load_cpu / max(load_end - clock.start, 1e-9),
        "requests": loop.responses.total,
        "steady_requests": loop.responses.steady,
        "statuses": {str(k): v for k, v in sorted(loop.statuses.items())},
        "connection_errors": loop.errors,
        "http_ms": summarize(loop.http_ms),
        "responses_per_s": loop.responses.per_second,
    }
    if isinstance(loop, OpenLoop):
        result["rate"] = loop.rate
        result["queued_max"] = loop.queued_max
    if commands is not None:
        pending = commands.pending
        await poll_until(lambda: not pending, config.get("drain_timeout_s", 30.0), 0.02)
        result.update(
            {
                "sent": dict(commands.sent),
                "accepted": commands.accepted.total,
                "steady_accepted": commands.accepted.steady,
                "visible": commands.visible.total,
                "steady_visible": commands.visible.steady,
                "rejected": commands.rejected,
                "unsettled": len(commands.pending),
                "accepted_per_s": commands.accepted.per_second,
                "visible_per_s": commands.visible.per_second,
                "drain_s": max(commands.last_visible - load_end, 0.0),
                "visible_ms": summarize(commands.latencies_ms),
                "intended_visible_ms": summarize(commands.intended_latencies_ms),
                "orders": commands.orders,
                "orders_closed": commands.book.closed,
                "subscriber_messages": subscriber.messages if subscriber else 0,
            }
        )
        if config.get("keep_samples"):
            result["samples"] = commands.samples
    pruner.cancel()
    if subscriber is not None:
        subscriber.close()
    loop.close()
    result["max_rss_mb"] = peak_rss_mb()
    return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(__doc__)
        print("usage: python -m bench.load CONFIG.json  (written by `python -m bench`)")
        return 0 if args and args[0] in ("-h", "--help") else 2
    config = orjson.loads(Path(args[0]).read_bytes())
    try:
        import uvloop

        result = uvloop.run(run(config))
    except ImportError:  # pragma: no cover - uvloop is installed with uvicorn[standard]
        result = asyncio.run(run(config))
    Path(config["result_path"]).write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
