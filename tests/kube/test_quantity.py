"""Kubernetes quantities: the API server's grammar, exact values, and bounds."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpumix.kube.quantity import MAX_QUANTITY, QuantityError, parse_quantity, whole_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("1", 1),
        ("+2", 2),
        ("-3", -3),
        ("1.", 1),
        (".5", Fraction(1, 2)),
        ("1.5", Fraction(3, 2)),
        ("500m", Fraction(1, 2)),
        ("250u", Fraction(1, 4000)),
        ("5n", Fraction(5, 10**9)),
        ("1k", 1000),
        ("2M", 2 * 10**6),
        ("3G", 3 * 10**9),
        ("4T", 4 * 10**12),
        ("5P", 5 * 10**15),
        ("6E", 6 * 10**18),  # a bare E is exa, not an exponent
        ("1Ki", 1024),
        ("1Mi", 2**20),
        ("1Gi", 2**30),
        ("1Ti", 2**40),
        ("1Pi", 2**50),
        ("1Ei", 2**60),
        ("1.5Gi", 3 * 2**29),
        ("1e3", 1000),
        ("1E3", 1000),
        ("1e+3", 1000),
        ("12e-1", Fraction(6, 5)),
        ("9e18", 9 * 10**18),
        ("0e999999999999", 0),  # zero, however large the exponent
        ("1e-12", Fraction(1, 10**9)),  # rounded up to a nano, as the API server does
        ("-1e-12", Fraction(-1, 10**9)),
        ("1e-999999999", Fraction(1, 10**9)),
        ("9223372036854775807", MAX_QUANTITY),
        ("-9223372036854775807", -MAX_QUANTITY),
    ],
)
def test_kubernetes_quantities_are_read_exactly(text: str, value: Fraction | int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("10e399", "out of range"),  # what the API server stores for "1e400"
        ("1e400", "out of range"),
        ("1e999999999999999", "out of range"),
        ("9223372036854775808", "out of range"),
        ("8Ei", "out of range"),
        ("9" * 100, "out of range"),
        ("9" * 129, "longer than 128 characters"),
        (2**63, "out of range"),
        (10**400, "out of range"),
        ("inf", "not a quantity"),
        ("Infinity", "not a quantity"),
        ("NaN", "not a quantity"),
        ("", "not a quantity"),
        (".", "not a quantity"),
        ("+", "not a quantity"),
        ("1e", "not a quantity"),
        ("1 ", "not a quantity"),
        (" 1", "not a quantity"),
        ("1ki", "not a quantity"),
        ("1Kib", "not a quantity"),
        ("1e3Ki", "not a quantity"),
        ("\u0661", "not a quantity"),  # ARABIC-INDIC DIGIT ONE: a digit of another script
        ("²", "not a quantity"),
        (float("inf"), "not a finite number"),
        (float("-inf"), "not a finite number"),
        (float("nan"), "not a finite number"),
        (1e300, "out of range"),
        (True, "a boolean is not a quantity"),
        (None, "must be a string or a number, got NoneType"),
        ([1], "must be a string or a number, got list"),
    ],
)
def test_values_beyond_range_or_grammar_are_refused_with_a_reason(
    value: object, reason: str
) -> None:
    with pytest.raises(QuantityError, match=reason):
        parse_quantity(value)


def test_numbers_read_as_the_quantity_they_print_as() -> None:
    assert parse_quantity(3) == 3
    assert parse_quantity(1.5) == Fraction(3, 2)
    assert parse_quantity(1e16) == 10**16
    assert parse_quantity(0.1) == Fraction(1, 10)  # repr 0.1, not the binary float


@pytest.mark.parametrize(
    ("value", "reason"),
    [("0.5", "whole number"), ("500m", "whole number"), ("-1", "must not be negative")],
)
def test_whole_quantities_refuse_fractions_and_negatives(value: str, reason: str) -> None:
    with pytest.raises(QuantityError, match=reason):
        whole_quantity(value)


@pytest.mark.parametrize(("value", "count"), [("1", 1), ("2k", 2000), ("1Ki", 1024), (8.0, 8)])
def test_whole_quantities(value: object, count: int) -> None:
    assert whole_quantity(value) == count


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789.+-eEnumkKMGTPi", max_size=30))
def test_any_text_is_read_or_refused_never_crashes_or_exceeds_the_bound(text: str) -> None:
    try:
        value = parse_quantity(text)
    except QuantityError:
        return
    assert abs(value) <= MAX_QUANTITY
    assert (value * 10**9).denominator == 1  # at most nano precision
