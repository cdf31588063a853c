"""The keys of one projection's generation, whatever the projection.

Every key of a generation is `{projection prefix}g{generation}:{suffix}`, where the projection
prefix is `{key prefix}{projection name}:` (see `keys.py`). A projection names its own
suffixes; two belong to every generation:

| suffix       | type   | content                                        |
|--------------|--------|------------------------------------------------|
| `checkpoint` | string | highest global position applied                |
| `members`    | set    | every other key of the generation, to drop it  |

The read scripts of a domain's queries prepend the generation base themselves, as
`prefix .. 'g' .. n .. ':'` (`generation_base` below).
"""

from __future__ import annotations

from dataclasses import dataclass

CHECKPOINT = "checkpoint"
MEMBERS = "members"


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
    def members(self) -> str:
        return self.base + MEMBERS
