"""One row per scenario, and the table they make (printed, and written as Markdown)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.support.invariants import Verdict


@dataclass
class Row:
    """What one scenario did to the promise: commands answered 202, and how many of them were
    lost, duplicated or left a view wrong; how long until a new write was visible again."""

    scenario: str
    accepted: int = 0
    lost: int = 0
    duplicated: int = 0
    views_wrong: int = 0
    dead_letters: int = 0
    recovery_s: float | None = None
    quiet_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None
    """Why the scenario did not run (another test run kept the machine busy)."""

    @classmethod
    def of(cls, scenario: str, verdict: Verdict, recovery_s: float | None, quiet_s: float) -> Row:
        return cls(
            scenario,
            accepted=verdict.accepted,
            lost=verdict.lost,
            duplicated=verdict.duplicated,
            views_wrong=verdict.views_wrong,
            dead_letters=sum(verdict.dead_letters.values()),
            recovery_s=recovery_s,
            quiet_s=quiet_s,
            problems=verdict.problems(),
        )

    @property
    def passed(self) -> bool:
        return self.skipped is None and not self.problems

    @property
    def result(self) -> str:
        if self.skipped is not None:
            return "skipped"
        return "pass" if self.passed else "FAIL"


HEADER = (
    "scenario",
    "accepted",
    "lost",
    "duplicated",
    "views wrong",
    "dead letters",
    "time to recover",
    "quiet after",
    "result",
)


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def cells(row: Row) -> tuple[str, ...]:
    if row.skipped is not None:
        return (row.scenario, "-", "-", "-", "-", "-", "-", "-", "skipped")
    return (
        row.scenario,
        str(row.accepted),
        str(row.lost),
        str(row.duplicated),
        str(row.views_wrong) if row.views_wrong >= 0 else "no views",
        str(row.dead_letters),
        _seconds(row.recovery_s),
        _seconds(row.quiet_s),
        row.result,
    )


def markdown(rows: list[Row]) -> str:
    """The table as Markdown, numbers right-aligned."""
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|---|" + "---:|" * (len(HEADER) - 2) + "---|",
    ]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def details(rows: list[Row]) -> str:
    """What went wrong, scenario by scenario (empty when nothing did)."""
    out = []
    for row in rows:
        if row.skipped is not None:
            out.append(f"- {row.scenario}: skipped: {row.skipped}")
        for problem in row.problems:
            out.append(f"- {row.scenario}: {problem}")
    return "\n".join(out)
