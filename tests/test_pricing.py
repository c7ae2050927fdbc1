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
