"""How a process decides an outage is on, pauses its consumers and resumes them."""

from __future__ import annotations

import asyncio
import time

import pytest

from common.dependencies import Dependencies


class Service:
    """A probe target that answers or not, counting how often it was asked."""

    def __init__(self) -> None:
        self.answers = True
        self.asked = 0

    async def probe(self) -> None:
        self.asked += 1
        await asyncio.sleep(0.01)
        if not self.answers:
            raise ConnectionError("refused")


class Consumer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def pause(self) -> None:
        self.calls.append("pause")

    async def resume(self) -> None:
        self.calls.append("resume")


async def test_every_dependency_answering_is_no_outage() -> None:
    service = Service()
    dependencies = Dependencies({"db": service.probe})
    assert await dependencies.outage() is None
    assert dependencies.up


async def test_concurrent_failures_share_one_round_of_probes() -> None:
    service = Service()
    service.answers = False
    dependencies = Dependencies({"db": service.probe}, max_backoff_s=0.05)
    found = await asyncio.gather(*(dependencies.outage() for _ in range(20)))
    assert found == ["db"] * 20
    assert service.asked == 1
    await dependencies.close()


async def test_an_outage_pauses_consumers_until_every_dependency_answers() -> None:
    db, cache = Service(), Service()
    dependencies = Dependencies({"db": db.probe, "cache": cache.probe}, max_backoff_s=0.05)
    consumer = Consumer()
    dependencies.add(consumer)
    cache.answers = False
    before = time.monotonic()
    assert await dependencies.outage() == "cache"
    assert not dependencies.up
    assert await dependencies.outage() == "cache"  # no new probe while out
    waiting = asyncio.create_task(dependencies.wait_up())
    await asyncio.sleep(0.3)
    assert consumer.calls == ["pause"]
    assert not waiting.done()
    cache.answers = True
    await asyncio.wait_for(waiting, 5)
    assert consumer.calls == ["pause", "resume"]
    assert dependencies.recovered_since(before)
    assert not dependencies.recovered_since(time.monotonic())


async def test_a_probe_that_hangs_counts_as_no_answer() -> None:
    async def frozen() -> None:
        await asyncio.sleep(3600)

    dependencies = Dependencies({"db": frozen}, probe_timeout_s=0.05, max_backoff_s=0.05)
    assert await asyncio.wait_for(dependencies.outage(), 5) == "db"
    await dependencies.close()
    assert dependencies.up  # closing releases whoever waits


@pytest.mark.parametrize("answers", [True, False])
async def test_close_stops_probing(answers: bool) -> None:
    service = Service()
    service.answers = answers
    dependencies = Dependencies({"db": service.probe}, max_backoff_s=0.01)
    await dependencies.outage()
    await dependencies.close()
    asked = service.asked
    await asyncio.sleep(0.1)
    assert service.asked == asked
