"""Garbage-collector pauses are measured in every process."""

from __future__ import annotations

import gc

from common.observability import metrics


def collections(generation: int) -> float:
    for family in metrics.GC_PAUSES.collect():
        for sample in family.samples:
            if sample.name.endswith("_count") and sample.labels["generation"] == str(generation):
                return sample.value
    return 0.0


def test_older_collections_are_timed() -> None:
    metrics.watch_gc_pauses()
    metrics.watch_gc_pauses()  # once per process, however often asked
    watches = [cb for cb in gc.callbacks if isinstance(cb, metrics._GcWatch)]
    try:
        assert len(watches) == 1
        before = [collections(g) for g in range(3)]
        gc.collect()
        gc.collect(1)
        gc.collect(0)  # young collections are too many and too short to be worth timing
        assert [collections(g) for g in range(3)] == [before[0], before[1] + 1, before[2] + 1]
    finally:
        for watch in watches:
            gc.callbacks.remove(watch)
        metrics._GcWatch.installed = False
