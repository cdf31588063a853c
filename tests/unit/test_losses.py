"""Noticing lost writes from APPLY replies and watchdog reads, without services."""

from __future__ import annotations

from projector_worker.losses import LossDetector, Trigger
from projector_worker.redis_views import ApplyResult, BlockResult, LiveState
from projector_worker.scripts import BLOCK_APPLIED, BLOCK_DUPLICATE


def reply(writes_before: int, checkpoint: int, *, applied: bool = True) -> ApplyResult:
    code = BLOCK_APPLIED if applied else BLOCK_DUPLICATE
    return ApplyResult(
        blocks=(BlockResult(7, code, 0, checkpoint),), live=7, writes_before=writes_before
    )


def detector() -> tuple[LossDetector, list[tuple[int, Trigger]]]:
    found = LossDetector("views")
    losses: list[tuple[int, Trigger]] = []
    found.listen(lambda since, trigger: losses.append((since, trigger)))
    return found, losses


def test_replies_and_reads_in_any_order_are_no_loss() -> None:
    losses_of, losses = detector()
    first, second = losses_of.mark(), losses_of.mark()
    losses_of.after_apply(second, reply(11, 5))  # the later call's reply comes first
    losses_of.after_apply(first, reply(10, 4))
    assert losses_of.seen == 12
    in_flight = losses_of.mark()
    losses_of.after_read(losses_of.mark(), LiveState(20, 7, 9))  # ahead of the reply below
    losses_of.after_apply(in_flight, reply(15, 8))
    losses_of.after_apply(losses_of.mark(), reply(20, 9, applied=False))
    assert losses == []
    assert losses_of.seen == 20


def test_a_count_gone_back_reports_the_checkpoint_it_came_back_with() -> None:
    losses_of, losses = detector()
    losses_of.after_apply(losses_of.mark(), reply(99, 50))
    sent_before_the_restore = [losses_of.mark() for _ in range(3)]
    losses_of.after_apply(sent_before_the_restore[0], reply(40, 7))
    assert losses == [(7, Trigger.APPLY)]
    assert losses_of.seen == 41
    # Calls sent before it was noticed: one ran after the restore (its loss point counts too),
    # one before it (its count is the old one's and must not come back).
    losses_of.after_apply(sent_before_the_restore[1], reply(41, 8))
    losses_of.after_apply(sent_before_the_restore[2], reply(100, 51))
    assert losses == [(7, Trigger.APPLY), (8, Trigger.APPLY)]
    assert losses_of.seen == 41
    losses_of.after_apply(losses_of.mark(), reply(42, 9))
    losses_of.after_read(losses_of.mark(), LiveState(43, 7, 9))
    assert len(losses) == 2
    assert losses_of.seen == 43


def test_the_watchdog_notices_a_quiet_loss() -> None:
    losses_of, losses = detector()
    losses_of.after_apply(losses_of.mark(), reply(30, 12))
    losses_of.after_read(losses_of.mark(), LiveState(31, 7, 12))
    losses_of.after_read(losses_of.mark(), LiveState(25, 7, 10))
    assert losses == [(10, Trigger.WATCHDOG)]
    losses_of.after_read(losses_of.mark(), LiveState(25, 7, 10))
    assert len(losses) == 1


def test_replies_without_the_generation_queries_read_report_nothing() -> None:
    losses_of, losses = detector()
    losses_of.after_apply(losses_of.mark(), reply(30, 12))
    losses_of.after_apply(losses_of.mark(), ApplyResult(empty=True))
    losses_of.after_apply(losses_of.mark(), ApplyResult(stale=True))
    building_only = ApplyResult(
        blocks=(BlockResult(8, BLOCK_APPLIED, 0, 0),), live=None, writes_before=0
    )
    losses_of.after_apply(losses_of.mark(), building_only)
    assert losses == []
    assert losses_of.seen == 1  # Redis was emptied: counting starts over


def test_another_server_answering_is_checked_even_when_the_count_went_on() -> None:
    # Another projector's writes on the promoted replica raised the shared count past what this
    # one saw: only the server's identity tells that the replica may lack writes.
    losses_of, losses = detector()
    losses_of.after_read(losses_of.mark(), LiveState(50, 7, 20, "old-primary"))
    losses_of.after_read(losses_of.mark(), LiveState(52, 7, 21, "old-primary"))
    assert losses == []
    losses_of.after_read(losses_of.mark(), LiveState(60, 7, 24, "promoted-replica"))
    assert losses == [(24, Trigger.SWITCH)]
    losses_of.after_read(losses_of.mark(), LiveState(61, 7, 25, "promoted-replica"))
    assert losses == [(24, Trigger.SWITCH)]


def test_a_server_switch_with_a_lower_count_is_checked_once() -> None:
    losses_of, losses = detector()
    losses_of.after_read(losses_of.mark(), LiveState(50, 7, 20, "old-primary"))
    losses_of.after_read(losses_of.mark(), LiveState(45, 7, 18, "promoted-replica"))
    assert losses == [(18, Trigger.WATCHDOG)]
    assert losses_of.server == "promoted-replica"
