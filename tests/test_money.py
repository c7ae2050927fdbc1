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


def test_integer_atto_rounding_matches_the_decimal_rounding() -> None:
    """The hot path's integer rounding gives what the Decimal functions give."""
    import random

    from crew_budget.money import atto_to_nano_ceil, atto_to_nano_round

    rng = random.Random(5)
    edges = [0, 1, 10**9 - 1, 10**9, 10**9 + 1, 15 * 10**8, 25 * 10**8, -15 * 10**8, -25 * 10**8]
    for atto in edges + [rng.randrange(-10**24, 10**24) for _ in range(5000)]:
        usd = Decimal(atto).scaleb(-18)
        assert atto_to_nano_ceil(atto) == to_nano_ceil(usd), atto
        assert atto_to_nano_round(atto) == to_nano_round(usd), atto


def test_prices_finer_than_one_atto_dollar_keep_the_decimal_path() -> None:
    from crew_budget.money import atto_per_token

    assert atto_per_token(Decimal("1.5E-7")) == 150_000_000_000
    assert atto_per_token(Decimal("0.000000000000000001")) == 1
    assert atto_per_token(Decimal("0.0000000000000000015")) is None
