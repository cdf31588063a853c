"""What one benchmark run is asked to do (`Plan`), and how a phase says it could not."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """How long and how hard each phase runs."""

    quick: bool
    clients: int
    duration_s: float
    warmup_s: float
    floor_s: float
    latency_s: float
    query_s: float
    query_rounds: int
    floor_rounds: int
    rebuild_events: int
    drain_timeout_s: float
    latency_rate: float | None = None
    """The open loop's rate; None: half the measured e2e rate (the target's definition)."""
    open_connections: int = 64
    customers: int = 500
    generator_check: bool = True
    rerun_one_worker: bool = True
    """Measure one worker pair at the scaling rate next to two; False: the latency phase,
    at the same rate earlier in the run, stands for it."""
    log_level: str = "INFO"
    projections: tuple[str, ...] = ()
    """The projections the projectors run (`--projections`); empty: every registered one."""
    traces: bool = False
    """Tracing on in the measured processes (`--traces`), every span written to a file: what
    tracing costs, against a run without."""
    peer: bool = True
    """Creates alone through this project and through the naive peer (`bench/peer/`)."""

    @classmethod
    def full(cls) -> Plan:
        return cls(
            quick=False,
            clients=32,
            duration_s=20,
            warmup_s=3,
            floor_s=12,
            latency_s=20,
            query_s=5,
            query_rounds=3,
            floor_rounds=2,
            rebuild_events=50_000,
            drain_timeout_s=180,
        )

    @classmethod
    def smoke(cls) -> Plan:
        return cls(
            quick=True,
            clients=16,
            duration_s=4,
            warmup_s=1,
            floor_s=3,
            latency_s=3,
            query_s=1.5,
            query_rounds=1,
            floor_rounds=1,
            rebuild_events=3_000,
            drain_timeout_s=15,
            generator_check=False,
            rerun_one_worker=False,
        )


class PhaseFailed(Exception):
    """A phase could not run (a process died, a generator hung)."""
