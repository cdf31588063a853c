"""Figures out of raw results: percentiles, ratios, targets, the table, JSON and the plot."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.peer_report import peer_figures, peer_rows
from bench.stats import cpu_ms_per_command, cpu_ms_per_op, percentile, ratio


@dataclass(frozen=True, slots=True)
class Target:
    """One target of the benchmark: `key` in the results compared to `threshold`."""

    key: str
    label: str
    at_least: bool
    threshold: float

    def met(self, value: float | None) -> bool | None:
        """True or False; None when the value was not measured."""
        if value is None:
            return None
        compare: Callable[[float, float], bool] = operator.ge if self.at_least else operator.le
        return compare(value, self.threshold)

    def describe(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.threshold:g}"


TARGETS = (
    Target("peer_ratio", "creates visible/s over the naive peer's", True, 2.5),
    Target("e2e_ratio_to_floor", "e2e visible/s over publish floor", True, 0.4),
    Target("cpu_ratio_to_floor", "CPU per visible command over per floor publish", False, 2.5),
    Target("p99_visible_ms_at_half_rate", "p99 sent->visible at half rate (ms)", False, 50),
    Target("rebuild_ratio_to_redis", "rebuild events/s over raw Redis writes", True, 0.6),
    Target("scale_cpu_ratio", "CPU per command, 2 worker pairs over 1, same rate", False, 1.15),
    Target("redis_bytes_per_order", "Redis bytes per order, statuses included", False, 3000),
    Target("query_ratio_to_floor", "GET /orders/{id} over HGETALL floor", True, 0.8),
    Target("max_rss_mb", "peak RSS of any system process (MB)", False, 150),
)
"""`peer_ratio` is the FastStream peer phase's figure: n/a in a run without it."""


def verdict(met: bool | None) -> str:
    return {True: "PASS", False: "MISS", None: "n/a"}[met]


def judge(figures: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target's value, threshold and verdict."""
    out = {}
    for target in TARGETS:
        value = figures.get(target.key)
        out[target.key] = {
            "value": value,
            "target": target.describe(),
            "result": verdict(target.met(value)),
        }
    return out


# --- text ------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain text table; the first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        parts = [
            row[i].ljust(widths[i]) if i == 0 else row[i].rjust(widths[i]) for i in range(len(row))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def render(results: Mapping[str, Any]) -> str:
    """The whole report as text: targets, then the raw measurements, then processes."""
    raw = results["raw"]
    judged = results["targets"]
    target_rows = []
    for target in TARGETS:
        entry = judged[target.key]
        target_rows.append([target.label, fmt(entry["value"], 3), entry["target"], entry["result"]])
    measured_rows = [[name, fmt(value)] for name, value in summary_rows(raw)]
    cpu_table, cpu_header = cpu_rows(results.get("cpu_ms_per_command") or {})
    process_rows = [
        [p["name"], fmt(p.get("max_rss_mb")), fmt(p.get("cpu_s")), p.get("role", "")]
        for p in results["processes"]
    ]
    parts = [
        "Targets (ratios against floors measured in this run)",
        table(target_rows, ["target", "value", "goal", "result"]),
        "",
        "Measurements",
        table(measured_rows, ["figure", "value"]),
        "",
        *([table(cpu_table, cpu_header), ""] if cpu_table else []),
        "Processes",
        table(process_rows, ["process", "peak RSS MB", "CPU s", "role"]),
    ]
    notes = results.get("notes") or []
    if notes:
        parts += ["", "Notes", *(f"- {n}" for n in notes)]
    return "\n".join(parts)


def write_json(path: Path, results: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


# --- plot ------------------------------------------------------------------------------------


def rolling_percentile(
    samples: Sequence[tuple[float, float]], q: float, window_s: float = 1.0
) -> tuple[list[float], list[float]]:
    """Per `window_s` bucket of the sample times: the bucket's middle and its q-th percentile."""
    buckets: dict[int, list[float]] = {}
    for at, value in samples:
        buckets.setdefault(int(at // window_s), []).append(value)
    xs, ys = [], []
    for index in sorted(buckets):
        xs.append((index + 0.5) * window_s)
        ys.append(percentile(sorted(buckets[index]), q))
    return xs, ys


def plot(path: Path, latency: Mapping[str, Any], e2e: Mapping[str, Any] | None) -> bool:
    """Draw the latency over time, its histogram and the e2e throughput; False without
    matplotlib (install the `bench` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    raw_samples = latency.get("samples", [])
    samples = [(float(s[0]), float(s[1])) for s in raw_samples]
    appended = [(float(s[0]), float(s[2])) for s in raw_samples if len(s) > 2 and s[2] >= 0]
    summary = latency.get("visible_ms", {})
    fig, axes = plt.subplots(3, 1, figsize=(10, 11))
    over_time, histogram, throughput = axes
    if samples:
        xs = [t for t, _ in samples]
        ys = [ms for _, ms in samples]
        over_time.scatter(xs, ys, s=3, alpha=0.35, label="sent -> visible")
        if appended:
            over_time.scatter(
                [t for t, _ in appended],
                [max(ms, 0.01) for _, ms in appended],
                s=2,
                alpha=0.25,
                color="tab:green",
                label="sent -> appended by the worker",
            )
        for q, style in ((50, "-"), (99, "--")):
            rx, ry = rolling_percentile(samples, q)
            over_time.plot(rx, ry, style, linewidth=1.5, label=f"p{q} per second")
        over_time.set_yscale("log")
        histogram.hist(ys, bins=80, color="tab:blue", alpha=0.8)
        for name in ("p50", "p95", "p99"):
            if name in summary:
                histogram.axvline(summary[name], linestyle="--", linewidth=1)
                histogram.text(summary[name], histogram.get_ylim()[1] * 0.9, f" {name}", fontsize=8)
    rate = latency.get("rate")
    over_time.set_title(f"Sent -> visible in the views, open loop at {fmt(rate, 0)} commands/s")
    over_time.set_xlabel("seconds since the load started (time the request was sent)")
    over_time.set_ylabel("ms (log)")
    over_time.legend(loc="upper right", fontsize=8)
    histogram.set_title("Histogram of sent -> visible")
    histogram.set_xlabel("ms")
    histogram.set_ylabel("commands")
    if e2e is not None:
        for key, label in (("accepted_per_s", "accepted (202)"), ("visible_per_s", "visible")):
            series = e2e.get(key, [])
            throughput.plot(range(len(series)), series, label=label)
        throughput.axvline(e2e.get("duration_s", 0), color="grey", linestyle=":", linewidth=1)
        throughput.set_title("Closed loop: commands per second (dotted line: load stops)")
        throughput.set_xlabel("seconds since the load started")
        throughput.set_ylabel("commands/s")
        throughput.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# --- from raw phase results to figures -------------------------------------------------------


def _get(raw: Mapping[str, Any], *path: str) -> Any:
    node: Any = raw
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def figures(raw: Mapping[str, Any], processes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The headline figures (every one a ratio to a floor of this run, or a bound)."""
    system_rss = [
        p["max_rss_mb"]
        for p in processes
        if p.get("role") == "system" and p.get("max_rss_mb") is not None
    ]
    floor_hgetall = _get(raw, "floor_hgetall", "request_rate")
    cpu = cpu_per_command(raw)
    memory = _get(raw, "redis_memory") or {}
    bytes_per_order = ratio(memory.get("bytes"), memory.get("orders_created"))
    return {
        "e2e_ratio_to_floor": ratio(
            _get(raw, "e2e", "visible_rate"), _get(raw, "floor_publish", "request_rate")
        ),
        "cpu_ratio_to_floor": ratio(_get(cpu, "e2e", "total"), _get(cpu, "floor_publish", "total")),
        "cpu_ms_per_command": cpu,
        "p99_visible_ms_at_half_rate": _get(raw, "latency", "visible_ms", "p99"),
        "query_ratio_to_floor": ratio(_get(raw, "query_order", "request_rate"), floor_hgetall),
        "customer_query_ratio_to_floor": ratio(
            _get(raw, "query_customer", "request_rate"), floor_hgetall
        ),
        "rebuild_ratio_to_redis": ratio(
            _get(raw, "rebuild", "events_per_s"), _get(raw, "raw_redis", "events_per_s")
        ),
        "scale_cpu_ratio": ratio(_get(cpu, "scale_2", "total"), _get(cpu, "scale_1", "total")),
        "redis_bytes_per_order": None if bytes_per_order is None else round(bytes_per_order),
        "max_rss_mb": round(max(system_rss), 1) if system_rss else None,
        **peer_figures(raw),
    }


SERVICES = ("rabbitmq", "postgresql", "redis")


def in_system(name: str) -> bool:
    """A process of the system or a service: the floor app idles while the system is loaded."""
    return not name.startswith("floor")


def in_floor(name: str) -> bool:
    """What a floor publish costs: the bare app and RabbitMQ. PostgreSQL and Redis have no part
    in it, nor the system's processes, idle in later rounds."""
    return name in ("floor-app", "rabbitmq")


CPU_PHASES = (
    ("e2e", "e2e (closed loop)", "visible_rate", in_system),
    ("floor_publish", "floor publish", "request_rate", in_floor),
    ("scale_1", "1 pair, fixed rate", "visible_rate", in_system),
    ("scale_2", "2 pairs, fixed rate", "visible_rate", in_system),
)
"""The phases whose CPU per command the results break down: key, title, the rate a command
counts in, and the processes and services that count."""


def cpu_per_command(raw: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """CPU ms per command of each process and service, and the total, for each phase of
    `CPU_PHASES` that ran: per visible command, or per published one for the floor."""
    out = {}
    for phase, _, rate_key, counts in CPU_PHASES:
        cost = cpu_ms_per_command(
            _get(raw, phase, "cpu_shares") or {}, _get(raw, phase, rate_key), counts
        )
        if cost is not None:
            out[phase] = cost
    return out


def cpu_rows(cpu: Mapping[str, Mapping[str, float]]) -> tuple[list[list[str]], list[str]]:
    """The CPU per command as a table: a row per process or service, a column per phase."""
    phases = [(key, title) for key, title, _, _ in CPU_PHASES if key in cpu]
    names = {name for key, _ in phases for name in cpu[key] if name != "total"}
    services = [name for name in SERVICES if name in names]
    ordered = [*sorted(names - set(services)), *services, "total"] if names else []
    rows = [[name, *(fmt(cpu[key].get(name), 3) for key, _ in phases)] for name in ordered]
    return rows, ["CPU ms per command", *(title for _, title in phases)]


def summary_rows(raw: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The raw figures worth a line in the printed table, in phase order."""
    rows: list[tuple[str, Any]] = []

    def add(label: str, *path: str) -> None:
        value = _get(raw, *path)
        if value is not None:
            rows.append((label, value))

    add("floor: publish+confirm req/s (1 generator)", "floor_publish", "request_rate")
    add("floor: publish+confirm req/s (2 generators)", "floor_publish_2gen", "request_rate")
    add("floor: generator CPU (cores)", "floor_publish", "cpu_fraction")
    add("e2e: accepted/s (steady)", "e2e", "accepted_rate")
    add("e2e: visible/s (steady)", "e2e", "visible_rate")
    add("e2e: visible/s incl. drain", "e2e", "visible_rate_with_drain")
    add("e2e: drain after load (s)", "e2e", "drain_s")
    add("e2e: rejected commands", "e2e", "rejected")
    add("e2e: HTTP p99 (ms)", "e2e", "http_ms", "p99")
    add("e2e: generator CPU (cores)", "e2e", "cpu_fraction")
    for name, share in sorted((_get(raw, "e2e", "cpu_shares") or {}).items()):
        if not name.startswith("gen-") and not name.startswith("floor"):
            rows.append((f"e2e: CPU of {name} (cores)", share))
    add("latency: CPU outside this benchmark (cores)", "latency", "cpu_shares", "outside")
    add("latency: offered rate (commands/s)", "latency", "rate")
    add("latency: sent->visible p50 (ms)", "latency", "visible_ms", "p50")
    add("latency: sent->visible p95 (ms)", "latency", "visible_ms", "p95")
    add("latency: sent->visible p99 (ms)", "latency", "visible_ms", "p99")
    add("latency: sent->visible max (ms)", "latency", "visible_ms", "max")
    add("latency: intended send->visible p99 (ms)", "latency", "intended_visible_ms", "p99")
    add("latency: sent->appended (gateway+worker) p99", "latency", "appended_ms", "p99")
    add("latency: appended->visible (relay+proj.) p99", "latency", "appended_to_visible_ms", "p99")
    add("latency: HTTP p99 (ms)", "latency", "http_ms", "p99")
    add("redis: orders created", "redis_memory", "orders_created")
    add("redis: keys of the run", "redis_memory", "keys")
    add("redis: bytes of the run (MEMORY USAGE)", "redis_memory", "bytes")
    orders = _get(raw, "redis_memory", "orders_created")
    kinds = (_get(raw, "redis_memory", "by_kind") or {}).items()
    for kind, usage in sorted(kinds, key=lambda item: -item[1]["bytes"])[:MEMORY_ROWS]:
        if orders:
            rows.append((f"redis: bytes per order, {kind}", round(usage["bytes"] / orders)))
    add("queries: floor HGETALL req/s", "floor_hgetall", "request_rate")
    add("queries: GET /orders/{id} req/s", "query_order", "request_rate")
    add("queries: GET /customers/{id}/orders req/s", "query_customer", "request_rate")
    add("queries: GET /orders/{id} p99 (ms)", "query_order", "http_ms", "p99")
    add("scaling: offered rate (commands/s)", "scale_2", "rate")
    add("scaling: 1 worker pair visible/s", "scale_1", "visible_rate")
    add("scaling: 1 worker pair machine CPU (cores)", "scale_1", "cpu_shares", "machine")
    add("scaling: 2 worker pairs visible/s", "scale_2", "visible_rate")
    add("scaling: 2 worker pairs machine CPU (cores)", "scale_2", "cpu_shares", "machine")
    add("rebuild: events replayed", "rebuild", "events")
    add("rebuild: events/s", "rebuild", "events_per_s")
    add("rebuild: raw HSET+ZADD events/s", "raw_redis", "events_per_s")
    add("rebuild: CPU of the rebuild process (cores)", "rebuild", "cpu_shares", "rebuild")
    add("rebuild: CPU of redis (cores)", "rebuild", "cpu_shares", "redis")
    rows += peer_rows(raw)
    for label, phase, rate_key in CPU_COSTS:
        cost = cpu_ms_per_op(_get(raw, phase, "cpu_shares") or {}, _get(raw, phase, rate_key))
        if cost is not None:
            rows.append((label, cost))
    add("run: wall time (s)", "wall_s")
    return rows


MEMORY_ROWS = 8
"""The kinds of Redis keys the printed table names (the largest; results.json has all)."""

CPU_COSTS = (
    ("CPU ms per floor HGETALL (app+services)", "floor_hgetall", "request_rate"),
    ("CPU ms per GET /orders/{id} (all)", "query_order", "request_rate"),
)
"""Per-query CPU cost of a phase: what a rate would be on an otherwise idle machine (commands
have theirs in `cpu_ms_per_command`)."""


SATURATED = 0.9
"""The fraction of the machine's cores busy from which a phase counts as saturated."""
KEPT_UP = 0.95
"""The fraction of an open loop's offered rate below which the system did not keep up."""


def e2e_budget_note(raw: Mapping[str, Any]) -> str | None:
    """What the e2e target allows per command, against what this run spent, by process.

    The machine's cores bound any rate: commands/s <= cores / CPU per command. Reaching the
    target ratio therefore means spending at most cores / (ratio x floor rate) per visible
    command, everything included; the services take their share out of the same cores."""
    floor_rate = _get(raw, "floor_publish", "request_rate")
    spent = cpu_per_command(raw).get("e2e")
    cores = raw.get("cores")
    if not (spent and floor_rate and cores):
        return None
    target = next(t.threshold for t in TARGETS if t.key == "e2e_ratio_to_floor")
    allowed_ms = cores / (target * floor_rate) * 1000
    parts = sorted(((n, ms) for n, ms in spent.items() if n != "total"), key=lambda i: -i[1])
    services_ms = sum(ms for name, ms in parts if name in SERVICES)
    text = (
        f"e2e budget: {target:g} of the floor is {target * floor_rate:,.0f} commands/s, which"
        f" {cores} cores reach at no more than {allowed_ms:.2f} ms of CPU per command; this run"
        f" spent {spent['total']:.2f} ms ({', '.join(f'{n} {ms:.2f}' for n, ms in parts)})"
    )
    if services_ms >= allowed_ms:
        text += f"; RabbitMQ, PostgreSQL and Redis alone spent {services_ms:.2f} ms"
    return text


def lost_commands(raw: dict[str, Any]) -> int:
    """Accepted commands that never became visible, over every phase: each one is a bug."""
    return sum(
        int(phase.get("unsettled") or 0) for phase in raw.values() if isinstance(phase, dict)
    )


def automatic_notes(raw: Mapping[str, Any]) -> list[str]:
    """Warnings about the run itself: a saturated generator, errors, leftovers."""
    notes = []
    for name, phase in raw.items():
        if not isinstance(phase, Mapping) or "statuses" not in phase:
            continue
        fraction = phase.get("cpu_fraction", 0.0)
        if fraction > 0.8:
            notes.append(
                f"{name}: the generator used {fraction:.2f} of a core; it may limit the rate"
            )
        bad = {s: n for s, n in phase["statuses"].items() if not s.startswith("2")}
        if bad:
            notes.append(f"{name}: non-2xx answers {bad}")
        if phase.get("connection_errors"):
            notes.append(f"{name}: {phase['connection_errors']} connection errors")
        if phase.get("unsettled"):
            notes.append(f"{name}: {phase['unsettled']} accepted commands never became visible")
        if phase.get("rejected"):
            notes.append(f"{name}: {phase['rejected']} commands were rejected by the domain")
        offered, visible = phase.get("rate"), phase.get("visible_rate")
        if offered and visible is not None and visible < KEPT_UP * offered:
            notes.append(
                f"{name}: {visible:,.0f} of the {offered:,.0f} commands/s offered became visible:"
                " the system did not keep up"
            )
        shares = phase.get("cpu_shares") or {}
        machine, outside = shares.get("machine"), shares.get("outside", 0.0)
        cores = raw.get("cores", 2)
        if machine is not None and machine > SATURATED * cores:
            text = f"{name}: the machine was saturated ({machine:.2f} of {cores} cores busy"
            if outside > 0.2:
                text += f", {outside:.2f} of them by processes outside this benchmark"
            notes.append(text + ")")
    budget = e2e_budget_note(raw)
    if budget:
        notes.append(budget)
    one = _get(raw, "floor_publish", "request_rate")
    two = _get(raw, "floor_publish_2gen", "request_rate")
    if one and two:
        gain = two / one
        busy = _get(raw, "floor_publish", "cpu_fraction") or 0.0
        if gain < 1.1:
            verdict_text = "one generator is not the bottleneck"
        elif busy < 0.5:
            verdict_text = (
                f"yet one generator used only {busy:.2f} of a core: the difference is other"
                " work on the machine, not the generator"
            )
        else:
            verdict_text = "a second generator raised the rate: one generator limits the floor"
        notes.append(f"generator check: 2 processes gave {gain:.2f}x the rate of 1; {verdict_text}")
    return notes
