"""Prices: litellm's bundled map read exactly, overrides first, never $0."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from crew_budget import PriceBook, UnknownModelError, Usage, cost_of
from crew_budget.errors import PricingError
from crew_budget.pricing import litellm_price_map_path


def test_map_floats_become_exact_decimals() -> None:
    price = PriceBook().get("gpt-4o-mini")
    # litellm: input 1.5e-07, cache read 7.5e-08, output 6e-07 USD per token.
    assert price.input == Decimal("1.5E-7")
    assert price.cached_input == Decimal("7.5E-8")
    assert price.output == Decimal("6E-7")
    assert price.provider == "openai"
    assert price.max_output_tokens == 16384


@pytest.mark.parametrize("name", ["gpt-4o-mini", "openai/gpt-4o-mini"])
def test_provider_prefixes_resolve(name: str) -> None:
    assert PriceBook().get(name).input == Decimal("1.5E-7")


def test_anthropic_cache_write_and_read_prices_are_used() -> None:
    price = PriceBook().get("claude-sonnet-4-5")
    raw = json.loads(litellm_price_map_path().read_text())["claude-sonnet-4-5"]
    assert price.provider == "anthropic"
    assert price.cache_write == Decimal(repr(raw["cache_creation_input_token_cost"]))
    # 1000 uncached in, 2000 cache reads, 500 cache writes, 100 out, at
    # $3/M, $0.30/M, $3.75/M and $15/M (litellm's claude-sonnet-4-5 entry).
    usage = Usage(
        input_tokens=1000, cached_input_tokens=2000, cache_write_tokens=500, output_tokens=100
    )
    assert cost_of(usage, price) == Decimal("0.003") + Decimal("0.0006") + Decimal(
        "0.001875"
    ) + Decimal("0.0015")


def test_separate_reasoning_price_applies_to_reasoning_tokens_only() -> None:
    book = PriceBook(
        {"r1": {"input_per_million": 1, "output_per_million": 2, "reasoning_per_million": 8}}
    )
    usage = Usage(input_tokens=10, output_tokens=100, reasoning_tokens=40)
    # 10 x $1/M + 60 x $2/M + 40 x $8/M
    assert cost_of(usage, book.get("r1")) == Decimal("0.00045")


def test_overrides_beat_the_map() -> None:
    book = PriceBook({"gpt-4o-mini": {"input_per_million": 9, "output_per_million": 9}})
    assert book.get("gpt-4o-mini").input == Decimal("0.000009")


def test_unknown_model_is_an_error_with_suggestions() -> None:
    with pytest.raises(UnknownModelError) as info:
        PriceBook().get("gpt-4o-mni")
    assert info.value.model == "gpt-4o-mni"
    assert "gpt-4o-mini" in info.value.suggestions
    assert "prices:" in str(info.value)


def test_without_litellm_installed_only_overrides_price(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.path", ["/nonexistent"])
    with pytest.raises(PricingError, match="pip install litellm"):
        litellm_price_map_path()
    book = PriceBook({"mine": {"input_per_million": 1, "output_per_million": 1}})
    assert book.get("mine").output == Decimal("0.000001")
    with pytest.raises(UnknownModelError):
        book.get("gpt-4o-mini")


def test_integer_cost_and_estimate_equal_the_decimal_ones_for_every_model_in_the_map() -> None:
    """Settle and preflight price in whole atto-USD per token (``Price.atto``);
    for every model litellm prices, and random usages, the nano-USD results
    are exactly what the Decimal formulas (``cost_of`` + banker's rounding,
    ceiling for estimates) give."""
    import random

    from crew_budget.money import atto_to_nano_ceil, to_nano_ceil, to_nano_round
    from crew_budget.pricing import _load_litellm_map, _price_from_map
    from crew_budget.usage import Usage, cost_nano_of, cost_of

    rng = random.Random(11)
    checked = integer = 0
    for name, entry in _load_litellm_map().items():
        if "input_cost_per_token" not in entry or "output_cost_per_token" not in entry:
            continue
        price = _price_from_map(name, entry)
        if price.atto is None:  # float noise in the map, e.g. 0.0000029999900000000002
            assert cost_nano_of(Usage(7, 0, 0, 3, 0), price) == to_nano_round(
                cost_of(Usage(7, 0, 0, 3, 0), price))
            checked += 1
            continue
        integer += 1
        for _ in range(3):
            out = rng.randrange(0, 200_000)
            usage = Usage(rng.randrange(0, 2_000_000), rng.randrange(0, 500_000),
                          rng.randrange(0, 100_000), out, rng.randrange(0, out + 1))
            assert cost_nano_of(usage, price) == to_nano_round(cost_of(usage, price)), name
            pt, ot = rng.randrange(0, 2_000_000), rng.randrange(0, 200_000)
            assert atto_to_nano_ceil(pt * price.atto[0] + ot * price.atto[1]) == to_nano_ceil(
                pt * price.input + ot * price.output), name
        checked += 1
    assert checked > 1000 and integer > 0.95 * checked


def test_an_override_finer_than_one_atto_dollar_is_priced_with_decimal() -> None:
    from crew_budget.money import to_nano_round
    from crew_budget.usage import Usage, cost_nano_of, cost_of

    book = PriceBook({"fine-model": {"input_per_million": "0.0000000000001",
                                     "output_per_million": "1"}})
    price = book.get("fine-model")
    assert price.atto is None
    usage = Usage(input_tokens=10**12 + 7, output_tokens=3)
    # 10^12 tokens x 10^-19 $ = 100 nano-USD, 3 x 10^-6 $ = 3,000 nano-USD
    assert cost_nano_of(usage, price) == to_nano_round(cost_of(usage, price)) == 3100
