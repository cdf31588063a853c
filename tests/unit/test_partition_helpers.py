"""The rebuild's pre-forked helpers: they wait for their arguments, report on their stdout,
pass their exit code on, and exit at once when they are not needed."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from projector_worker.helpers import Forked, Helpers, Spawned


def echo_main(argv: list[str]) -> int:
    """Stands in for `projector_worker.__main__.main` in the child."""
    for arg in argv:
        sys.stdout.write(f"{arg}\n")
    sys.stdout.flush()
    if "--raise" in argv:
        raise RuntimeError("replay broke")
    return 3 if "--fail" in argv else 0


def rendezvous_main(argv: list[str]) -> int:
    """Succeeds only if every helper given the same directory runs at the same time."""
    _, directory, name, count = argv
    Path(directory, name).touch()
    deadline = time.monotonic() + 10
    while len(list(Path(directory).iterdir())) < int(count):
        if time.monotonic() > deadline:
            return 1
        time.sleep(0.01)
    return 0


async def lines_of(stream: asyncio.StreamReader) -> list[str]:
    return [line.decode().strip() async for line in stream]


async def test_a_forked_helper_runs_with_the_arguments_it_is_given_later() -> None:
    helper = Forked(echo_main)
    stdout = await helper.start(["--partition", "1/2"])
    assert await asyncio.wait_for(lines_of(stdout), 10) == [
        "replay-partition",
        "--partition",
        "1/2",
    ]
    assert await asyncio.wait_for(helper.wait(), 10) == 0


async def test_a_forked_helper_passes_its_exit_code_on() -> None:
    helper = Forked(echo_main)
    await asyncio.wait_for(lines_of(await helper.start(["--fail"])), 10)
    assert await asyncio.wait_for(helper.wait(), 10) == 3


async def test_a_forked_helper_shows_why_it_failed(capfd: pytest.CaptureFixture[str]) -> None:
    helper = Forked(echo_main)
    await asyncio.wait_for(lines_of(await helper.start(["--raise"])), 10)
    assert await asyncio.wait_for(helper.wait(), 10) == 1
    assert "RuntimeError: replay broke" in capfd.readouterr().err


async def test_forked_helpers_replay_side_by_side(tmp_path: Path) -> None:
    helpers = [Forked(rendezvous_main) for _ in range(3)]
    for index, helper in enumerate(helpers):
        await helper.start([str(tmp_path), f"h{index}", "3"])
    codes = await asyncio.wait_for(asyncio.gather(*(h.wait() for h in helpers)), 20)
    assert codes == [0, 0, 0]


def test_unused_helpers_exit_when_discarded_in_any_order() -> None:
    """A later helper must not hold an earlier one's argument pipe open: discarding the first
    forked first would then wait forever."""
    helpers = Helpers([Forked(echo_main) for _ in range(3)])
    done = threading.Event()
    worker = threading.Thread(target=lambda: (helpers.discard_unused(), done.set()), daemon=True)
    worker.start()
    assert done.wait(10), "discarding the unused helpers hung"


def test_an_unused_helper_exits_when_discarded_and_is_reaped() -> None:
    helpers = Helpers([Forked(echo_main), Forked(echo_main)])
    first = helpers.take()
    assert isinstance(first, Forked)
    helpers.discard_unused()
    first.discard()
    assert first.returncode == 0
    with pytest.raises(ChildProcessError):
        os.waitpid(first.pid, os.WNOHANG)  # already reaped: no zombie left


def test_helpers_beyond_the_forked_ones_are_spawned() -> None:
    helpers = Helpers([])
    assert isinstance(helpers.take(), Spawned)
