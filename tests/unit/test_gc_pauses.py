"""Garbage-collector pauses are measured (and long ones logged) in every process."""

from __future__ import annotations

import gc
import logging

import pytest

from common.observability import metrics


def full_collections() -> float:
    for family in metrics.GC_PAUSES.collect():
        for sample in family.samples:
            if sample.name.endswith("_count") and sample.labels["generation"] == "2":
                return sample.value
    return 0.0


def test_every_collection_is_timed_and_a_long_one_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics.watch_gc_pauses()
    metrics.watch_gc_pauses()  # once per process, however often asked
    watches = [cb for cb in gc.callbacks if isinstance(cb, metrics._GcWatch)]
    try:
        assert len(watches) == 1
        before = full_collections()
        monkeypatch.setattr(metrics, "LONG_GC_PAUSE_S", 0.0)
        with caplog.at_level(logging.WARNING, logger=metrics.__name__):
            gc.collect()
        assert full_collections() == before + 1
        assert "garbage collection took" in caplog.text
    finally:
        for watch in watches:
            gc.callbacks.remove(watch)
        metrics._GcWatch.installed = False
