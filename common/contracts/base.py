"""Building blocks shared by every contract: strict models, exact money, identifiers.

Each type publishes in its JSON schema exactly what it accepts, so that a client or a request
generator working from the OpenAPI document sends what the gateway takes.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)


class Contract(BaseModel):
    """A message or payload that crosses a boundary: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


Money = Annotated[
    Decimal,
    Field(ge=Decimal(0), le=Decimal("1000000000"), max_digits=12, decimal_places=2),
]
"""An exact amount in the deployment's currency: at most two decimals, never negative."""

MONEY_TEXT = r"^(?:(?:0|[1-9][0-9]{0,8})(?:\.[0-9]{1,2})?|1000000000(?:\.00?)?)$"
"""`Money` as a client writes it: digits, then at most two decimals; 0 to 1000000000."""
_MONEY_TEXT = re.compile(MONEY_TEXT)


def _money_text(value: Any) -> Any:
    # A JSON number reaches the validator as a binary float: `0.1000000000000000001` would pass
    # as 0.1. Only the text keeps the amount the client wrote.
    if isinstance(value, str) and _MONEY_TEXT.fullmatch(value):
        return value
    raise ValueError('must be a string of digits with at most two decimals, like "12.50"')


MoneyText = Annotated[
    Money,
    BeforeValidator(_money_text),
    WithJsonSchema({"type": "string", "pattern": MONEY_TEXT, "examples": ["12.50"]}),
]
"""`Money` in a request: a decimal string (`"12.50"`), never a JSON number."""

Slug = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"),
]
"""An external identifier (customer, product): 1-64 ASCII letters, digits, `.`, `_`, `-`."""


def _whole_number(value: Any) -> Any:
    # JSON has one number type: `2.0` is the integer 2 to JSON Schema, and to generated clients.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Quantity = Annotated[int, Field(strict=True, gt=0, le=100_000), BeforeValidator(_whole_number)]
"""A positive whole number of units (a JSON number without a fraction, never a string)."""

WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000")
)
"""The characters trimmed from the ends of a `Text` (Unicode's White_Space)."""
TEXT_MAX_LENGTH = 200


def _char_class(chars: str) -> str:
    """`chars` as the inside of a regex character class, runs as ranges: `\\u0009-\\u000d`."""
    codes = sorted(map(ord, chars))
    runs: list[list[int]] = []
    for code in codes:
        if runs and code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return "".join(
        f"\\u{first:04x}" + (f"-\\u{last:04x}" if last > first else "") for first, last in runs
    )


_SPACE = _char_class(WHITESPACE)
TEXT_PATTERN = f"^[{_SPACE}]*[^{_SPACE}\\u0000][^\\u0000]*$"
"""Something besides white space, and no NUL."""


def _text(text: str) -> str:
    # PostgreSQL cannot store U+0000 in text or jsonb: such a command would be accepted and then
    # fail at every attempt to append it.
    if "\x00" in text:
        raise ValueError("must not contain the NUL character (U+0000)")
    trimmed = text.strip(WHITESPACE)
    if not trimmed:
        raise ValueError("must not be blank")
    return trimmed


Text = Annotated[
    str,
    StringConstraints(min_length=1, max_length=TEXT_MAX_LENGTH),
    AfterValidator(_text),
    Field(json_schema_extra={"pattern": TEXT_PATTERN}),
]
"""A short human text: 1-200 characters as sent, not all white space, no NUL; kept without the
white space around it."""


def money_str(amount: Decimal) -> str:
    """Money as its canonical JSON string, always two decimals."""
    return str(amount.quantize(Decimal("0.01")))
