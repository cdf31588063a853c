"""The rebuild phase: `order_views` rebuilt from the events in the store (seeded up to the
plan's count), against raw pipelined Redis writes of the same events."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from bench import seed
from bench.plan import PhaseFailed
from bench.stats import rate
from bench.system import cpu_shares, cpu_snapshot, run_on_uvloop_value
from harness.processes import Listen

if TYPE_CHECKING:
    from bench.phases import Bench


def run_rebuild(bench: Bench) -> None:
    """Seed the store up to the plan's events, time raw Redis writes of them, then a rebuild
    of `order_views` by `python -m projector_worker rebuild`, up to its switch."""
    iso = bench.iso
    have = run_on_uvloop_value(seed.event_count(iso.database_url))
    missing = bench.plan.rebuild_events - have
    if missing > 0:
        bench.say(f"rebuild: seeding {missing} events (the store has {have})")
        run_on_uvloop_value(seed.seed_events(iso.database_url, missing, 99, bench.plan.customers))
    bench.settle("seeding", timeout_s=max(60.0, bench.plan.rebuild_events / 500))
    events = run_on_uvloop_value(seed.event_count(iso.database_url))
    orders = bench.raw.get("e2e", {}).get("orders", [])
    view = (
        run_on_uvloop_value(seed.sample_view(iso.redis_url, iso.prefix, orders[0]))
        if orders
        else None
    )
    bench.say(f"rebuild: raw pipelined HSET+ZADD, {events} events")
    raw = run_on_uvloop_value(seed.raw_redis_writes(iso.redis_url, iso.prefix, events, 1000, view))
    iso.delete_keys(f"{seed.raw_floor_keys(iso.prefix).base}*")
    bench.raw["raw_redis"] = raw
    name = seed.ORDER_VIEWS
    bench.say(f"rebuild: python -m projector_worker rebuild {name}, {events} events")
    before = cpu_snapshot(bench.procs.procs)
    started = time.monotonic()
    proc = bench.procs.start(
        "projector_worker", "rebuild", name, "--quiet", name="rebuild", listen=Listen.NONE
    )
    if not proc.wait(600):
        proc.stop()
        raise PhaseFailed(f"rebuild did not finish in 600s:\n{proc.tail()}")
    wall = time.monotonic() - started
    after = cpu_snapshot(bench.procs.procs)
    if proc.exit_code != 0:
        raise PhaseFailed(f"rebuild failed (exit {proc.exit_code}):\n{proc.tail()}")
    shares = cpu_shares(before, after)
    if proc.usage is not None:
        # It came and went between the snapshots: its own rusage says what it used.
        shares["rebuild"] = round(proc.usage.cpu_s / wall, 3)
        shares["outside"] = round(max(shares["outside"] - shares["rebuild"], 0.0), 3)
    summary = parse_rebuild_summary(proc.tail())
    seconds = summary["seconds"] if summary else wall
    replayed = summary["events"] if summary else events
    if summary is None:
        bench.notes.append("rebuild summary line not found: timed the whole process instead")
    bench.raw["rebuild"] = {
        "events": replayed,
        "seconds": seconds,
        "process_wall_s": wall,
        "events_per_s": rate(replayed, seconds),
        "cpu_shares": shares,
    }


SUMMARY = re.compile(r"rebuild (?:of \S+ )?done: .*?(\d+) events read .*? switched after ([\d.]+)s")
"""The replay is timed up to the switch; deleting the old generation's keys comes after."""


def parse_rebuild_summary(log: str) -> dict[str, float] | None:
    """Events and seconds to the switch from `projector_worker rebuild`'s closing line, if
    present."""
    found = SUMMARY.findall(log)
    if not found:
        return None
    events, seconds = found[-1]
    return {"events": int(events), "seconds": float(seconds)}
