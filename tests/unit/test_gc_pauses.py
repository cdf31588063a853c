"""Garbage-collector pauses are measured in every process."""

from __future__ import annotations

import gc

from common.observability import metrics


def full_collections() -> float:
    for family in metrics.GC_PAUSES.collect():
        for sample in family.samples:
            if sample.name.endswith("_count") and sample.labels["generation"] == "2":
                return sample.value
    return 0.0


def test_every_collection_is_timed() -> None:
    metrics.watch_gc_pauses()
    metrics.watch_gc_pauses()  # once per process, however often asked
    watches = [cb for cb in gc.callbacks if isinstance(cb, metrics._GcWatch)]
    try:
        assert len(watches) == 1
        before = full_collections()
        gc.collect()
        assert full_collections() == before + 1
    finally:
        for watch in watches:
            gc.callbacks.remove(watch)
        metrics._GcWatch.installed = False
