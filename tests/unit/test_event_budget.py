"""The projector's bound on events in flight, whatever the messages carry."""

from __future__ import annotations

import asyncio

from projector_worker.budget import EventBudget


async def test_events_in_flight_never_pass_the_capacity() -> None:
    budget = EventBudget(4)
    peak = 0

    async def message(events: int) -> None:
        nonlocal peak
        async with budget.take(events):
            peak = max(peak, budget.in_flight)
            await asyncio.sleep(0)  # let every other message try its turn
            await asyncio.sleep(0)

    await asyncio.gather(*(message(n) for n in (3, 1, 1, 2, 4, 1, 3)))
    assert peak == 4
    assert budget.in_flight == 0


async def test_a_batch_larger_than_the_budget_runs_alone() -> None:
    budget = EventBudget(4)
    running: list[int] = []
    seen: list[list[int]] = []

    async def message(events: int) -> None:
        async with budget.take(events):
            running.append(events)
            seen.append(list(running))
            await asyncio.sleep(0)
            running.remove(events)

    await asyncio.gather(message(1), message(50), message(1))
    assert [50] in seen  # it ran, with nothing beside it
    assert not any(50 in during and len(during) > 1 for during in seen)
    assert budget.in_flight == 0


async def test_a_failed_message_gives_its_events_back() -> None:
    budget = EventBudget(2)
    try:
        async with budget.take(2):
            raise RuntimeError("redis went away")
    except RuntimeError:
        pass
    assert budget.in_flight == 0
    async with budget.take(2):
        assert budget.in_flight == 2
