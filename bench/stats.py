"""Arithmetic on results: percentiles, rates, ratios, and merging generators' results."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of sorted `values`, linearly interpolated between ranks
    (numpy's default method). `values` must be sorted and non-empty."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0-100")
    rank = (len(values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (rank - low)


def summarize(values: Iterable[float]) -> dict[str, float]:
    """count, mean, p50, p95, p99 and max; only `count` (0) for no values."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0}
    return {
        "count": len(ordered),
        "mean": round(sum(ordered) / len(ordered), 3),
        "p50": round(percentile(ordered, 50), 3),
        "p95": round(percentile(ordered, 95), 3),
        "p99": round(percentile(ordered, 99), 3),
        "max": round(ordered[-1], 3),
    }


def ratio(value: float | None, floor: float | None) -> float | None:
    """value / floor, or None when either is missing or the floor is not positive."""
    if value is None or floor is None or floor <= 0:
        return None
    return round(value / floor, 3)


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def best_round(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the highest request rate, and every round's rate beside it.

    Other work on the machine can only slow a round down, so the best round is the closest
    to the undisturbed rate."""
    chosen = dict(max(results, key=lambda r: r["request_rate"]))
    chosen["round_rates"] = [round(r["request_rate"], 1) for r in results]
    return chosen


def with_rate(result: dict[str, Any]) -> dict[str, Any]:
    """Add steady-window rates: requests, and for commands accepted and visible."""
    window = max(result["duration_s"] - result["warmup_s"], 1e-9)
    result["request_rate"] = rate(result["steady_requests"], window)
    if "steady_accepted" in result:
        result["accepted_rate"] = rate(result["steady_accepted"], window)
        result["visible_rate"] = rate(result["steady_visible"], window)
        total_s = result["load_wall_s"] + result["drain_s"]
        result["visible_rate_with_drain"] = rate(result["visible"], total_s)
    return result


SUMMED = (
    "requests",
    "steady_requests",
    "connection_errors",
    "accepted",
    "steady_accepted",
    "visible",
    "steady_visible",
    "rejected",
    "unsettled",
    "subscriber_messages",
    "orders_closed",
)


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result out of several generators': counts and per-second series summed, the
    latency summaries of the first, and each generator's CPU share kept."""
    merged = dict(parts[0])
    if len(parts) == 1:
        merged["generators"] = [{"cpu_fraction": parts[0]["cpu_fraction"]}]
        return merged
    for key in SUMMED:
        if key in merged:
            merged[key] = sum(p.get(key, 0) for p in parts)
    for key in ("responses_per_s", "accepted_per_s", "visible_per_s"):
        if key in merged:
            length = max(len(p.get(key, [])) for p in parts)
            merged[key] = [sum(p[key][i] for p in parts if i < len(p[key])) for i in range(length)]
    statuses: dict[str, int] = {}
    for part in parts:
        for status, count in part["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    merged["statuses"] = statuses
    merged["connections"] = sum(p["connections"] for p in parts)
    merged["cpu_s"] = sum(p["cpu_s"] for p in parts)
    merged["cpu_fraction"] = max(p["cpu_fraction"] for p in parts)
    merged["drain_s"] = max(p.get("drain_s", 0.0) for p in parts)
    merged["generators"] = [{"cpu_fraction": p["cpu_fraction"]} for p in parts]
    merged["orders"] = [o for p in parts for o in p.get("orders", [])]
    return merged


def split_at_append(
    samples: list[tuple[float, float, str]], started_epoch: float, appended: dict[str, float]
) -> tuple[list[tuple[float, float, float]], dict[str, Any], dict[str, Any]]:
    """Split each command's way to the views where its events were appended.

    `samples` are (sent at, sent -> visible ms, command id) with times from the load's start
    at `started_epoch`; `appended` maps command ids to their append, in epoch seconds.
    Returns the samples as (sent at, sent -> visible ms, sent -> appended ms or -1) and the
    summaries of the two legs: the gateway's and the worker's, and the relay's plus the
    projector's. The append is stamped by PostgreSQL's clock and the send by the generator's,
    converted through one reading of the wall clock: the first leg is kept within 0 and the
    whole way."""
    split: list[tuple[float, float, float]] = []
    worker: list[float] = []
    rest: list[float] = []
    for at, latency_ms, command_id in samples:
        appended_at = appended.get(command_id)
        if appended_at is None:
            split.append((at, latency_ms, -1.0))
            continue
        leg = min(max((appended_at - started_epoch - at) * 1000, 0.0), latency_ms)
        worker.append(leg)
        rest.append(latency_ms - leg)
        split.append((at, latency_ms, round(leg, 3)))
    return split, summarize(worker), summarize(rest)


NOT_OURS = ("machine", "outside")


def measured(shares: Mapping[str, float]) -> dict[str, float]:
    """The shares of the measured processes and the services: not the machine's total, not
    other work on it, not the load generators."""
    return {k: v for k, v in shares.items() if k not in NOT_OURS and not k.startswith("gen-")}


def cpu_ms_per_op(shares: dict[str, float], ops_per_s: float | None) -> float | None:
    """CPU milliseconds the measured processes and the services spent per operation (load
    generators excluded). Less sensitive to a busy neighbour than a rate, though the services
    count whatever else used them meanwhile."""
    cost = cpu_ms_per_command(shares, ops_per_s)
    return None if cost is None else cost["total"]


def cpu_ms_per_command(
    shares: Mapping[str, float],
    commands_per_s: float | None,
    counts: Callable[[str], bool] = lambda name: True,
) -> dict[str, float] | None:
    """CPU milliseconds per command of each measured process and service that `counts`, and
    their `total`: the cores each used during the phase over the commands per second. None
    when nothing was measured."""
    if not commands_per_s:
        return None
    spent = {
        name: cores / commands_per_s * 1000
        for name, cores in measured(shares).items()
        if counts(name)
    }
    if not spent:
        return None
    out = {name: round(ms, 3) for name, ms in sorted(spent.items())}
    out["total"] = round(sum(spent.values()), 3)
    return out


def key_kind(key: str, prefix: str) -> str:
    """`key` without `prefix`, each segment but the first (the projection's keys name, as
    `order_views.v2`) holding a digit (an id, a generation) as `*`: `command:*`,
    `order_views.v2:*:order:*`."""
    first, *rest = key.removeprefix(prefix).split(":")
    return ":".join([first, *("*" if any(c.isdigit() for c in part) else part for part in rest)])


def memory_by_kind(usage: Iterable[tuple[str, int]], prefix: str) -> dict[str, dict[str, int]]:
    """Keys and bytes per kind of key (`key_kind`), largest first. A kind whose last segment
    is a word, beside a kind with `*` there (a search token without a digit, `token:lane`
    beside `token:*`), is counted as that kind."""
    kinds: dict[str, dict[str, int]] = {}
    for key, size in usage:
        entry = kinds.setdefault(key_kind(key, prefix), {"keys": 0, "bytes": 0})
        entry["keys"] += 1
        entry["bytes"] += size
    for kind in [k for k in kinds if not k.endswith(":*")]:
        wider = kind.rpartition(":")[0] + ":*"
        if wider in kinds:
            folded = kinds.pop(kind)
            kinds[wider]["keys"] += folded["keys"]
            kinds[wider]["bytes"] += folded["bytes"]
    return dict(sorted(kinds.items(), key=lambda item: -item[1]["bytes"]))
