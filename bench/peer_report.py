"""Figures of the peer comparison (`bench/peer_phase.py`): the ratio, and CPU per visible create.

Each side's CPU per create is counted over its own processes and the services, from the CPU
shares of its loop: the peer's loop leaves out this project's processes, idle meanwhile, and
this project's loop had no peer running.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.peer_phase import OURS, PEER, PEER_PROCESS
from bench.stats import cpu_ms_per_command, ratio
from bench.system import SERVICE_NAMES

SERVICES = frozenset(SERVICE_NAMES.values())


def _phase(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    phase = raw.get(name)
    return phase if isinstance(phase, Mapping) else {}


def is_peer(name: str) -> bool:
    return name.startswith(PEER_PROCESS) or name in SERVICES


def is_ours(name: str) -> bool:
    # The floor app idles through every command phase.
    return not name.startswith((PEER_PROCESS, "floor"))


def side_cpu(raw: Mapping[str, Any], name: str) -> dict[str, float]:
    """CPU ms per visible create of one side, by process and service, and their `total`;
    empty without a rate."""
    phase = _phase(raw, name)
    counts = is_peer if name == PEER else is_ours
    shares = phase.get("cpu_shares") or {}
    return cpu_ms_per_command(shares, phase.get("visible_rate"), counts) or {}


def peer_figures(raw: Mapping[str, Any]) -> dict[str, Any]:
    """`peer_ratio`: this project's visible creates a second over the peer's; and each side's
    CPU per visible create, by process."""
    return {
        "peer_ratio": ratio(
            _phase(raw, OURS).get("visible_rate"), _phase(raw, PEER).get("visible_rate")
        ),
        "creates_cpu_ms_per_visible": side_cpu(raw, OURS) or None,
        "peer_cpu_ms_per_visible": side_cpu(raw, PEER) or None,
    }


def peer_rows(raw: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Lines of the printed table: both rates, then CPU per create, in all and by process."""
    rows: list[tuple[str, Any]] = []
    for name, side in ((OURS, "this project"), (PEER, "naive peer")):
        phase = _phase(raw, name)
        if phase.get("visible_rate") is None:
            continue
        rows.append((f"creates only, {side}: visible/s", phase["visible_rate"]))
        rows.append((f"creates only, {side}: HTTP p99 (ms)", phase.get("http_ms", {}).get("p99")))
        costs = side_cpu(raw, name)
        if costs:
            total = costs.pop("total")
            rows.append((f"creates only, {side}: CPU ms per create", total))
            for process, ms in sorted(costs.items(), key=lambda item: -item[1]):
                rows.append((f"  of which {process}", ms))
    return rows
