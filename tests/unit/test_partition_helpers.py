"""The rebuild's pre-forked helpers: they wait for their arguments, report on their stdout,
pass their exit code on, and exit at once when they are not needed."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from projector_worker.helpers import Forked, Helpers, Spawned


def echo_main(argv: list[str]) -> int:
    """Stands in for `projector_worker.__main__.main` in the child."""
    for arg in argv:
        sys.stdout.write(f"{arg}\n")
    sys.stdout.flush()
    return 3 if "--fail" in argv else 0


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
