"""The keys of one projection's generation, whatever the projection.

Every key of a generation is `{projection prefix}g{generation}:{suffix}`, where the projection
prefix is `{key prefix}{projection keys name}:` (see `keys.py` and `Projection.keys_name`).
A projection names its own suffixes; one belongs to every generation:

| suffix       | type   | content                                        |
|--------------|--------|------------------------------------------------|
| `checkpoint` | string | highest global position applied                |

No key lists the others: dropping a generation (rare: after a rebuild's switch, or an
abandoned rebuild) SCANs for its base (`ViewKeys.pattern`). A set naming every key, kept to
spare that SCAN, cost more memory than any other key kind but the views themselves (every
key name of the generation stored once more, in a hashtable).

The read scripts of a domain's queries prepend the generation base themselves, as
`prefix .. 'g' .. n .. ':'` (`generation_base` below).
"""

from __future__ import annotations

from dataclasses import dataclass

CHECKPOINT = "checkpoint"


def glob_escape(text: str) -> str:
    """`text` as a literal in a Redis MATCH pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\^" else c for c in text)


def generation_base(prefix: str, generation: int | str) -> str:
    return f"{prefix}g{generation}:"


@dataclass(frozen=True, slots=True)
class ViewKeys:
    """Full key names of one generation of one projection."""

    prefix: str
    generation: int

    @property
    def base(self) -> str:
        return generation_base(self.prefix, self.generation)

    def key(self, suffix: str) -> str:
        return self.base + suffix

    @property
    def checkpoint(self) -> str:
        return self.base + CHECKPOINT

    @property
    def pattern(self) -> str:
        """The MATCH pattern of every key of the generation (`g1:` never matches `g10:`)."""
        return glob_escape(self.base) + "*"
