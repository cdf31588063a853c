"""The processes that replay a rebuild's other partitions, and how they are started.

A helper runs `python -m projector_worker replay-partition ...` and reports a JSON line of
counts per batch on its stdout. Starting a new interpreter costs about a second of CPU in
imports, inside the rebuild's time and on the cores it replays on. So the rebuild command
forks its helpers before it opens any connection or event loop (`Forked`), and they wait,
already loaded, for their arguments; `Spawned` starts a fresh interpreter for any other caller,
and wherever Linux's process file descriptors (`os.pidfd_open`) are missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Protocol

import orjson


class Helper(Protocol):
    """One replay-partition process."""

    async def start(self, argv: list[str]) -> asyncio.StreamReader:
        """Start replaying with the arguments after `replay-partition`; its stdout."""
        ...

    async def wait(self) -> int:
        """Its exit code, once it has exited (-1 if it never started)."""
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
        return -1 if self._process is None else await self._process.wait()

    def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()


_PARENT_ENDS: set[int] = set()
"""This process's ends of the pipes to its forked helpers, and their process descriptors. A
helper forked later closes them at once: holding a sibling's argument pipe open would keep that
sibling from ever seeing it close, and so from exiting when it is discarded."""


class Forked:
    """A helper forked from the rebuild command before it started its event loop.

    The child blocks reading its arguments from a pipe until the parent closes it, then runs
    `child_main(["replay-partition", *argv])` with its stdout on a second pipe; with no
    arguments (`discard`, or the parent gone) it exits at once. A process file descriptor
    names the child, so it is signalled and awaited without racing the reuse of its pid."""

    @staticmethod
    def supported() -> bool:
        return hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")

    def __init__(self, child_main: Callable[[list[str]], int]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        argv_read, argv_write = os.pipe()
        out_read, out_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the helper
            _run_child(argv_read, out_write, {argv_write, out_read, *_PARENT_ENDS}, child_main)
        os.close(argv_read)
        os.close(out_write)
        self.pid = pid
        self._pidfd = os.pidfd_open(pid)
        _PARENT_ENDS.update((argv_write, out_read, self._pidfd))
        self._argv_write: int | None = argv_write
        self._out_read: int | None = out_read
        self.returncode: int | None = None

    async def start(self, argv: list[str]) -> asyncio.StreamReader:
        assert self._out_read is not None, "a helper replays once"
        out_read, self._out_read = self._out_read, None
        _PARENT_ENDS.discard(out_read)
        pipe = os.fdopen(out_read, "rb", 0)
        try:
            self._close_argv(orjson.dumps(argv))
            reader = asyncio.StreamReader()
            await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), pipe
            )
        except BaseException:
            pipe.close()
            raise
        return reader

    async def wait(self) -> int:
        if self.returncode is None:
            loop = asyncio.get_running_loop()
            exited: asyncio.Future[None] = loop.create_future()

            def on_exit() -> None:
                if not exited.done():
                    exited.set_result(None)

            loop.add_reader(self._pidfd, on_exit)
            try:
                await exited
            finally:
                loop.remove_reader(self._pidfd)
            self._reap()
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def discard(self) -> None:
        """Let an unused helper exit, and reap it (it exits as soon as its pipe closes)."""
        self._close_argv(b"")
        if self._out_read is not None:
            _PARENT_ENDS.discard(self._out_read)
            os.close(self._out_read)
            self._out_read = None
        if self.returncode is None:
            self._reap()

    def _close_argv(self, given: bytes) -> None:
        if self._argv_write is None:
            return
        fd, self._argv_write = self._argv_write, None
        _PARENT_ENDS.discard(fd)
        try:
            if given:
                os.write(fd, given)
        finally:
            os.close(fd)

    def _reap(self) -> None:
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        _PARENT_ENDS.discard(self._pidfd)
        os.close(self._pidfd)


def _run_child(
    argv_read: int, out_write: int, parent_ends: set[int], child_main: Callable[[list[str]], int]
) -> None:
    """The helper's whole life after the fork; it never returns into the parent's code."""
    code = 1
    try:
        for fd in parent_ends:
            os.close(fd)
        with os.fdopen(argv_read, "rb") as pipe:
            given = pipe.read()
        if given:
            os.dup2(out_write, sys.stdout.fileno())
            os.close(out_write)
            code = child_main(["replay-partition", *orjson.loads(given)])
        else:
            code = 0
    except SystemExit as exc:  # argparse refusing the arguments, say
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


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
