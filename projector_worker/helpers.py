"""The processes that replay a rebuild's other partitions, and how they are started.

A helper runs `python -m projector_worker replay-partition ...` and reports a JSON line of
counts per batch on its stdout. Starting a new interpreter costs about a second of CPU in
imports, inside the rebuild's time and on the cores it replays on. So the rebuild command
forks its helpers before it opens any connection or event loop (`Forked`), and they wait,
already loaded, for their arguments; `Spawned` starts a fresh interpreter for any other caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Protocol

import orjson


class Helper(Protocol):
    """One replay-partition process."""

    async def start(self, argv: list[str]) -> asyncio.StreamReader:
        """Start replaying with the arguments after `replay-partition`; its stdout."""
        ...

    async def wait(self) -> int:
        """Its exit code, once it has exited."""
        ...

    def kill(self) -> None:
        """Stop it now if it still runs."""
        ...


class Spawned:
    """A helper in a new interpreter."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None

    async def start(self, argv: list[str]) -> asyncio.StreamReader:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "projector_worker",
            "replay-partition",
            *argv,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self._process.stdout is not None
        return self._process.stdout

    async def wait(self) -> int:
        assert self._process is not None
        return await self._process.wait()

    def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()


class Forked:
    """A helper forked from the rebuild command before it started its event loop.

    The child blocks reading its arguments from a pipe, then runs `child_main(argv)` with its
    stdout on a second pipe. Closing the first pipe without arguments (`discard`, or the parent
    dying) makes it exit at once."""

    def __init__(self, child_main: Callable[[list[str]], int]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        argv_read, argv_write = os.pipe()
        out_read, out_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the helper
            os.close(argv_write)
            os.close(out_read)
            code = 1
            try:
                code = _child(argv_read, out_write, child_main)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(argv_read)
        os.close(out_write)
        self.pid = pid
        self._argv_write: int | None = argv_write
        self._out_read = out_read
        self.returncode: int | None = None

    async def start(self, argv: list[str]) -> asyncio.StreamReader:
        assert self._argv_write is not None, "a helper replays once"
        os.write(self._argv_write, orjson.dumps(argv))
        os.close(self._argv_write)
        self._argv_write = None
        reader = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(self._out_read, "rb", 0)
        )
        return reader

    async def wait(self) -> int:
        if self.returncode is None:
            _, status = await asyncio.to_thread(os.waitpid, self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def discard(self) -> None:
        """Let an unused helper exit, and reap it."""
        if self._argv_write is not None:
            os.close(self._argv_write)
            self._argv_write = None
            os.close(self._out_read)
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)


def _child(argv_read: int, out_write: int, child_main: Callable[[list[str]], int]) -> int:
    with os.fdopen(argv_read, "rb") as pipe:
        given = pipe.read()
    if not given:
        os.close(out_write)
        return 0
    os.dup2(out_write, sys.stdout.fileno())
    os.close(out_write)
    return child_main(["replay-partition", *orjson.loads(given)])


class Helpers:
    """Hands out the pre-forked helpers first, then spawned ones."""

    def __init__(self, forked: list[Forked] | None = None) -> None:
        self._idle = list(forked or [])

    def take(self) -> Helper:
        return self._idle.pop(0) if self._idle else Spawned()

    def discard_unused(self) -> None:
        for helper in self._idle:
            helper.discard()
        self._idle.clear()
