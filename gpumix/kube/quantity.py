"""Kubernetes resource quantities (``resource.Quantity``), read exactly and bounded.

The grammar is the API server's::

    <quantity>  ::= <sign>? <digits>[.<digits>] <suffix>
    <suffix>    ::= Ki | Mi | Gi | Ti | Pi | Ei        (binary: 2^10 ... 2^60)
                  | n | u | m | "" | k | M | G | T | P | E   (decimal: 10^-9 ... 10^18)
                  | e<sign>?<digits> | E<sign>?<digits>      (decimal exponent)

A number (``1``, ``1.5``, ``1e+16``, what JSON and YAML readers hand over for an
unquoted value) is read as the quantity it prints as.  As the API server does, a
value with more than nano precision is rounded up, away from zero, to the next
nano (``1e-12`` reads as ``1n``).

Values are exact fractions.  A value whose magnitude is above
:data:`MAX_QUANTITY` (the largest whole count Kubernetes keeps, an ``int64``) is
refused with :class:`QuantityError` before it is ever computed, so ``1e400`` (which
the API server stores as ``10e399``) or ``1e999999999`` cost nothing; ``inf``,
``NaN``, booleans and anything not of the grammar are refused the same way.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

MAX_QUANTITY = 2**63 - 1
"""The largest magnitude read: Kubernetes counts whole units in an ``int64``."""
MAX_TEXT = 128
"""Longer texts are refused unread (a canonical quantity is at most ~25 characters)."""

_NANO = Fraction(1, 10**9)
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
# ASCII digits only: \d would also take other scripts' digits, which the API server refuses.
_QUANTITY = re.compile(
    r"(?P<sign>[+-]?)(?P<int>[0-9]*)(?:\.(?P<frac>[0-9]*))?"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])|[eE](?P<exp>[+-]?[0-9]+))?"
)


class QuantityError(ValueError):
    """A value that is not a quantity gpumix can read; the message says why."""


def parse_quantity(value: object) -> Fraction:
    """The exact value of a quantity (a string, or an int or float as JSON/YAML give
    them); raise :class:`QuantityError` for anything else or out of range."""
    if isinstance(value, bool):
        raise QuantityError("a boolean is not a quantity")
    if isinstance(value, int):
        if abs(value) > MAX_QUANTITY:
            raise QuantityError(_out_of_range())
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QuantityError("not a finite number")
        return parse_quantity(repr(value))
    if not isinstance(value, str):
        raise QuantityError(f"must be a string or a number, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise QuantityError(f"longer than {MAX_TEXT} characters")
    m = _QUANTITY.fullmatch(value)
    if m is None or not (m["int"] or m["frac"]):
        raise QuantityError(
            "not a quantity (expected digits with an optional sign, fraction and suffix "
            "such as 1, 500m, 2Ki, 1e3)"
        )
    int_part, frac_part = m["int"], m["frac"] or ""
    digits = (int_part + frac_part).lstrip("0")
    if not digits:
        return Fraction(0)
    exponent = -len(frac_part)
    if m["exp"] is not None:
        exp_text = m["exp"].lstrip("+-").lstrip("0")
        if len(exp_text) > 6:  # |exponent| >= 10^6: far out of range either way
            if m["exp"].startswith("-"):
                return _round_up_to_nano(Fraction(-1 if m["sign"] == "-" else 1, 10**12))
            raise QuantityError(_out_of_range())
        exponent += int(m["exp"])
    else:
        exponent += _DECIMAL.get(m["suffix"] or "", 0)
    binary = _BINARY.get(m["suffix"] or "", 0)
    # The value is in [10^(magnitude-1), 10^magnitude) * 2^binary: decide the range on
    # the digits' count before computing anything large.
    magnitude = len(digits) + exponent
    if magnitude > 20 + binary // 3:
        raise QuantityError(_out_of_range())
    if magnitude < -30:  # far below a nano: rounds up to one
        return _round_up_to_nano(Fraction(-1 if m["sign"] == "-" else 1, 10**12))
    amount = Fraction(int(digits)) * Fraction(10) ** exponent * 2**binary
    if m["sign"] == "-":
        amount = -amount
    if abs(amount) > MAX_QUANTITY:
        raise QuantityError(_out_of_range())
    return _round_up_to_nano(amount)


def _round_up_to_nano(amount: Fraction) -> Fraction:
    if (amount / _NANO).denominator == 1:
        return amount
    nanos = math.ceil(abs(amount) / _NANO)
    return nanos * _NANO if amount > 0 else -nanos * _NANO


def _out_of_range() -> str:
    return f"out of range (above {MAX_QUANTITY}, the largest count Kubernetes keeps)"


def whole_quantity(value: object) -> int:
    """A count of a resource that only comes whole (an extended resource such as
    ``nvidia.com/gpu``): a non-negative integer, else :class:`QuantityError`."""
    if type(value) is str and len(value) <= 18 and value.isascii() and value.isdigit():
        return int(value)  # the common case, "1": what the API server stores for 1 GPU
    amount = parse_quantity(value)
    if amount < 0:
        raise QuantityError("must not be negative")
    if amount.denominator != 1:
        raise QuantityError("must be a whole number (extended resources come whole)")
    return int(amount)
