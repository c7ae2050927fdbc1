"""Invariant 5: money is integers inside, exact Decimal at the edge."""

from __future__ import annotations

from decimal import Decimal

import pytest

from crew_budget.money import from_nano, parse_usd, to_nano, to_nano_ceil, to_nano_round


@pytest.mark.parametrize("value", [5, 5.0, "5", "5.00", "$5", Decimal("5.000"), " 5.0 "])
def test_every_spelling_of_five_dollars_is_exactly_five(value: object) -> None:
    assert parse_usd(value) == Decimal(5)
    assert to_nano(parse_usd(value)) == 5_000_000_000


def test_floats_are_read_by_their_shortest_repr_not_binary_value() -> None:
    assert parse_usd(0.1) == Decimal("0.1")
    assert to_nano(0.1) + to_nano(0.2) == to_nano("0.3")


@pytest.mark.parametrize("bad", [True, float("nan"), float("inf"), "five", None, [5]])
def test_non_amounts_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_usd(bad)


def test_sub_nano_amounts_are_rejected_exactly_or_rounded_by_intent() -> None:
    with pytest.raises(ValueError, match="finer than one nano-USD"):
        to_nano("0.0000000001")
    # Reservations round up, settled costs round half-even.
    assert to_nano_ceil(Decimal("0.0000000001")) == 1
    assert to_nano_round(Decimal("0.0000000015")) == 2
    assert to_nano_round(Decimal("0.0000000025")) == 2


def test_from_nano_is_exact_and_round_trips() -> None:
    assert from_nano(1) == Decimal("0.000000001")
    assert from_nano(1_500_000_000) == Decimal("1.5")
    assert from_nano(7_000_000_000) == Decimal(7)
    for n in (0, 1, 999, 10**9 + 1, 123_456_789_012):
        assert to_nano(from_nano(n)) == n
