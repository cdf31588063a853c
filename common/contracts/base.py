"""Building blocks shared by every contract: strict models, exact money, identifiers."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints


class Contract(BaseModel):
    """A message or payload that crosses a boundary: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


Money = Annotated[
    Decimal,
    Field(ge=Decimal(0), le=Decimal("1000000000"), max_digits=12, decimal_places=2),
]
"""An exact amount in the deployment's currency: at most two decimals, never negative."""

Slug = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"),
]
"""An external identifier (customer, product): 1-64 ASCII letters, digits, `.`, `_`, `-`."""

Quantity = Annotated[int, Field(strict=True, gt=0, le=100_000)]
"""A positive whole number of units."""


def _no_nul(text: str) -> str:
    # PostgreSQL cannot store U+0000 in text or jsonb: such a command would be accepted and then
    # fail at every attempt to append it.
    if "\x00" in text:
        raise ValueError("must not contain the NUL character (U+0000)")
    return text


Text = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_no_nul),
    Field(json_schema_extra={"pattern": "^[^\\u0000]*$"}),
]
"""A short non-empty human text, without NUL characters."""


def money_str(amount: Decimal) -> str:
    """Money as its canonical JSON string, always two decimals."""
    return str(amount.quantize(Decimal("0.01")))
