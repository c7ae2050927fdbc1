"""Prices: overrides first, then genai-prices, then litellm's bundled map; never $0.

Expected rates are the data's own entries (genai-prices' bundled snapshot,
litellm's ``model_prices_and_context_window_backup.json``), quoted per
million tokens where they are written that way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest

from crew_budget import PriceBook, UnknownModelError, Usage, cost_of
from crew_budget.errors import PricingError
from crew_budget.pricing import Price, litellm_price_map_path, normalize_provider


def test_map_floats_become_exact_decimals() -> None:
    price = PriceBook(genai_prices=False).get("gpt-4o-mini")
    # litellm: input 1.5e-07, cache read 7.5e-08, output 6e-07 USD per token.
    assert price.input == Decimal("1.5E-7")
    assert price.cached_input == Decimal("7.5E-8")
    assert price.output == Decimal("6E-7")
    assert price.provider == "openai"
    assert price.max_output_tokens == 16384
    assert (price.source, price.model) == ("litellm", "gpt-4o-mini")


def test_genai_prices_is_the_primary_source_and_keeps_litellms_output_cap() -> None:
    price = PriceBook().get("gpt-4o-mini")
    # genai-prices gpt-4o-mini: $0.15 / $0.075 cached / $0.60 per million.
    assert (price.source, price.model, price.provider) == ("genai-prices", "gpt-4o-mini", "openai")
    assert (price.input, price.cached_input, price.output) == (
        Decimal("1.5E-7"), Decimal("7.5E-8"), Decimal("6E-7"))
    assert price.max_output_tokens == 16384  # from litellm's map: caps the output reservation


@pytest.mark.parametrize("name", ["gpt-4o-mini", "openai/gpt-4o-mini"])
def test_provider_prefixes_resolve(name: str) -> None:
    assert PriceBook().get(name).input == Decimal("1.5E-7")


def test_anthropic_cache_write_and_read_prices_are_used() -> None:
    price = PriceBook(genai_prices=False).get("claude-sonnet-4-5")
    raw = json.loads(litellm_price_map_path().read_text())["claude-sonnet-4-5"]
    assert price.provider == "anthropic"
    assert price.cache_write == Decimal(repr(raw["cache_creation_input_token_cost"]))
    # 1000 uncached in, 2000 cache reads, 500 cache writes, 100 out, at
    # $3/M, $0.30/M, $3.75/M and $15/M (litellm's claude-sonnet-4-5 entry).
    usage = Usage(
        input_tokens=1000, cached_input_tokens=2000, cache_write_tokens=500, output_tokens=100
    )
    expected = Decimal("0.003") + Decimal("0.0006") + Decimal("0.001875") + Decimal("0.0015")
    assert cost_of(usage, price) == expected
    # genai-prices' claude-sonnet-4-5 entry has the same four rates.
    assert cost_of(usage, PriceBook().get("claude-sonnet-4-5")) == expected


def test_separate_reasoning_price_applies_to_reasoning_tokens_only() -> None:
    book = PriceBook(
        {"r1": {"input_per_million": 1, "output_per_million": 2, "reasoning_per_million": 8}}
    )
    usage = Usage(input_tokens=10, output_tokens=100, reasoning_tokens=40)
    # 10 x $1/M + 60 x $2/M + 40 x $8/M
    assert cost_of(usage, book.get("r1")) == Decimal("0.00045")


def test_overrides_beat_the_map() -> None:
    book = PriceBook({"gpt-4o-mini": {"input_per_million": 9, "output_per_million": 9}})
    price = book.get("gpt-4o-mini")
    assert price.input == Decimal("0.000009")
    assert (price.source, price.model) == ("override", "gpt-4o-mini")
    # ... also when the call names it with a provider prefix or a provider.
    assert book.get("openai/gpt-4o-mini") is price
    assert book.get("gpt-4o-mini", provider="openai") is price


def test_unknown_model_is_an_error_with_suggestions() -> None:
    with pytest.raises(UnknownModelError) as info:
        PriceBook().get("gpt-4o-mni")
    assert info.value.model == "gpt-4o-mni"
    assert "gpt-4o-mini" in info.value.suggestions
    assert "prices:" in str(info.value)
    assert "provider" in str(info.value)


def test_suggestions_are_written_so_that_they_price() -> None:
    """Only Groq's list has llama-3.1-8b-instant: the suggestion carries the prefix."""
    book = PriceBook()
    with pytest.raises(UnknownModelError) as info:
        book.get("llama-3.1-8b-instant")
    assert info.value.suggestions[0] == "groq/llama-3.1-8b-instant"
    price = book.get(info.value.suggestions[0])
    # genai-prices groq llama-3.1-8b-instant: $0.05 in, $0.08 out per million.
    assert (price.input, price.output) == (Decimal("5E-8"), Decimal("8E-8"))
    assert book.get("llama-3.1-8b-instant", provider="groq") == price


def test_without_litellm_installed_genai_prices_and_overrides_still_price(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from genai_prices import data_snapshot

    data_snapshot.get_snapshot()  # imported before sys.path loses site-packages
    monkeypatch.setattr("sys.path", ["/nonexistent"])
    with pytest.raises(PricingError, match="pip install litellm"):
        litellm_price_map_path()
    book = PriceBook({"mine": {"input_per_million": 1, "output_per_million": 1}})
    assert book.get("mine").output == Decimal("0.000001")
    assert book.get("gpt-4o-mini").source == "genai-prices"
    assert book.get("gpt-4o-mini").max_output_tokens is None  # litellm's cap is unknown
    with pytest.raises(UnknownModelError):
        PriceBook(genai_prices=False).get("gpt-4o-mini")


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


# -- names as users write them -----------------------------------------------------

# (name, provider hint, matched entry, source, USD per million in, out). The
# rates are the matched entry's in genai-prices' bundled snapshot.
NAMES = [
    # Anthropic: dated, undated, -0 and -latest aliases; litellm's map keeps
    # only Bedrock entries for claude-sonnet-4-20250514 and none for 3.5 Haiku.
    ("claude-sonnet-4-20250514", None, "claude-sonnet-4-0", "3", "15"),
    ("anthropic/claude-sonnet-4-20250514", None, "claude-sonnet-4-0", "3", "15"),
    ("claude-sonnet-4-0", None, "claude-sonnet-4-0", "3", "15"),
    ("claude-3-5-haiku-20241022", None, "claude-3-5-haiku-latest", "0.8", "4"),
    ("claude-3-5-haiku-latest", "anthropic", "claude-3-5-haiku-latest", "0.8", "4"),
    # URL-encoded ids, as they appear in request paths.
    ("anthropic%2Fclaude-sonnet-4-20250514", None, "claude-sonnet-4-0", "3", "15"),
    # Bedrock: region / inference-profile prefixes, routes, ARNs, %3A.
    ("bedrock/us.anthropic.claude-3-5-sonnet-20241022-v2:0", None,
     "regional.anthropic.claude-3-5-sonnet-20241022-v2:0", "3", "15"),
    ("bedrock/eu.anthropic.claude-3-7-sonnet-20250219-v1:0", None,
     "regional.anthropic.claude-3-7-sonnet-20250219-v1:0", "3", "15"),
    ("us.anthropic.claude-3-5-sonnet-20241022-v2%3A0", "bedrock",
     "regional.anthropic.claude-3-5-sonnet-20241022-v2:0", "3", "15"),
    ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
     "us.anthropic.claude-3-5-haiku-20241022-v1:0", "bedrock",
     "regional.anthropic.claude-3-5-haiku-20241022-v1:0", "0.8", "4"),
    ("anthropic.claude-3-haiku-20240307-v1:0", "bedrock",
     "regional.anthropic.claude-3-haiku-20240307-v1:0", "0.25", "1.25"),
    # Vertex / Gemini.
    ("vertex_ai/claude-3-5-sonnet-v2@20241022", None, "claude-3-5-sonnet", "3", "15"),
    ("gemini-2.0-flash", None, "gemini-2.0-flash", "0.1", "0.4"),
    ("gemini/gemini-2.5-flash", None, "gemini-2.5-flash", "0.3", "2.5"),
    ("gemini-3-pro-preview", None, "gemini-3-pro-preview", "2", "12"),
    # OpenAI, dated; Azure serves OpenAI's models at OpenAI's list prices.
    ("gpt-4o-2024-08-06", None, "gpt-4o", "2.5", "10"),
    ("azure/gpt-4o", None, "gpt-4o", "2.5", "10"),
    ("gpt-4o-mini", "https://myorg.openai.azure.com/", "gpt-4o-mini", "0.15", "0.6"),
    ("chatgpt-4o-latest", None, "chatgpt-4o-latest", "5", "15"),
    # Hosts with their own price lists.
    ("groq/llama-3.3-70b-versatile", None, "llama-3.3-70b-versatile", "0.59", "0.79"),
    ("cerebras/llama3.1-8b", None, "llama3.1-8b", "0.1", "0.1"),
    ("mistral-large-latest", "mistral", "mistral-large", "2", "6"),
    ("openrouter/openai/gpt-4o-mini", None, "openai/gpt-4o-mini", "0.15", "0.6"),
    ("openai/gpt-4o-mini-2024-07-18", "https://openrouter.ai/api/v1", "openai/gpt-4o-mini",
     "0.15", "0.6"),
    # Off-peak (16:30-00:30 UTC) in genai-prices' data; peak is $0.27 / $1.10
    # (tests/test_tiers.py follows the switch).
    ("deepseek/deepseek-chat", None, "deepseek-chat", "0.135", "0.55"),
]
# Prices are looked up at a fixed moment: some have time-of-day windows
# (DeepSeek's off-peak discount), and what a name resolves to must not depend
# on the hour the suite runs.
PRICED_AT = datetime(2026, 12, 1, 20, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("name", "provider", "entry", "inp", "out"), NAMES)
def test_names_as_users_write_them(
    name: str, provider: str | None, entry: str, inp: str, out: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    book = PriceBook()
    monkeypatch.setattr(book, "_now", lambda: PRICED_AT)
    price = book.get(name, provider)
    assert (price.source, price.model) == ("genai-prices", entry)
    assert (price.input * 10**6, price.output * 10**6) == (Decimal(inp), Decimal(out))


def test_the_provider_picks_its_own_price_list() -> None:
    """OpenRouter lists Claude under its own id; with the provider, that entry prices it."""
    book = PriceBook()
    routed = book.get("anthropic/claude-sonnet-4", provider="openrouter")
    direct = book.get("anthropic/claude-sonnet-4")
    assert (routed.model, routed.provider) == ("anthropic/claude-sonnet-4", "openrouter")
    assert (direct.model, direct.provider) == ("claude-sonnet-4-0", "anthropic")


def test_a_local_server_gives_no_provider_so_the_name_decides() -> None:
    book = PriceBook()
    price = book.get("gpt-5-mini", provider="http://localhost:8080/v1")
    assert (price.model, price.provider) == ("gpt-5-mini", "openai")
    with pytest.raises(UnknownModelError):
        book.get("gemma3:4b", provider="ollama")


@pytest.mark.parametrize(("hint", "expected"), [
    ("anthropic", "anthropic"), ("bedrock", "aws"), ("vertex_ai", "google"),
    ("gemini", "google"), ("azure", "azure"), ("together_ai", "together"), ("xai", "x-ai"),
    ("https://api.groq.com/openai/v1", "groq"), ("https://api.together.ai/v1", "together"),
    ("https://generativelanguage.googleapis.com/v1beta/openai/", "google"),
    ("anthropic-chat", "anthropic"), ("openai-chat", "openai"),
    ("chat-google-generative-ai", "google"), ("amazon_bedrock_converse_chat", "aws"),
    ("http://localhost:11434", None), ("ollama", None), (None, None),
    ("ChatAnthropic", "anthropic"), ("AzureChatOpenAI", "azure"), ("ChatVertexAI", "google"),
    ("ChatBedrockConverse", "aws"), ("ChatOllama", None),
    ("huggingface_together", "huggingface_together"),  # genai-prices' own ids pass through
])
def test_provider_hints(hint: str | None, expected: str | None) -> None:
    assert normalize_provider(hint) == expected


def test_genai_prices_is_consulted_once_per_provider_and_model() -> None:
    book = PriceBook()
    calls: list[tuple[str | None, str]] = []
    real = book._from_genai

    def counting(provider_id: str | None, name: str) -> Price | None:
        calls.append((provider_id, name))
        return real(provider_id, name)

    book._from_genai = counting  # type: ignore[method-assign]
    first = book.get("claude-sonnet-4-20250514", provider="anthropic")
    n = len(calls)
    assert n >= 1
    for _ in range(3):
        assert book.get("claude-sonnet-4-20250514", provider="anthropic") is first
    assert len(calls) == n
    book.get("claude-sonnet-4-20250514")  # another (provider, model): one more resolution
    assert len(calls) > n


def test_import_is_lazy_and_lookups_never_touch_the_network() -> None:
    """`import crew_budget` loads neither price library; the first lookup reads
    genai-prices' bundled snapshot with every socket refused, and no update
    thread is left running."""
    code = (
        "import socket, sys, threading\n"
        "def refuse(*a, **k):\n"
        "    raise OSError('network used')\n"
        "socket.socket.connect = refuse\n"
        "socket.socket.connect_ex = refuse\n"
        "socket.create_connection = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "import crew_budget\n"
        "from crew_budget.pricing import PriceBook\n"
        "print('genai_prices' in sys.modules, 'litellm' in sys.modules)\n"
        "p = PriceBook().get('gemini-2.5-pro')\n"
        "print(p.source, p.input, 'genai_prices' in sys.modules, 'litellm' in sys.modules)\n"
        "print(sorted(t.name for t in threading.enumerate()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.splitlines()
    assert out == [
        "False False",
        "genai-prices 0.00000125 True False",
        "['MainThread']",
    ]


def test_a_yaml_override_can_price_1h_cache_writes(tmp_path: Any) -> None:
    from crew_budget.config import load_config

    cfg = tmp_path / "budgets.yaml"
    cfg.write_text("prices:\n  my-claude: {input_per_million: 3, output_per_million: 15, "
                   "cache_write_per_million: 3.75, cache_write_1h_per_million: 6, "
                   "provider: anthropic}\n")
    price = PriceBook(load_config(cfg).prices).get("my-claude")
    assert (price.source, price.cache_write, price.cache_write_1h) == (
        "override", Decimal("0.00000375"), Decimal("0.000006"))
    usage = Usage(input_tokens=10, cache_write_tokens=3000, cache_write_1h_tokens=2000)
    # 10 x 3/M + 1,000 x 3.75/M + 2,000 x 6/M
    assert cost_of(usage, price) == Decimal("0.01578")


def test_a_provider_only_genai_prices_knows_is_passed_through() -> None:
    price = PriceBook().get("Qwen/Qwen2.5-7B-Instruct", provider="huggingface_together")
    assert (price.source, price.model, price.provider) == (
        "genai-prices", "Qwen/Qwen2.5-7B-Instruct", "huggingface_together")
    with pytest.raises(UnknownModelError) as info:
        PriceBook().get("Qwen/Qwen2.5-VL-7B-Instruct")
    # A suggestion only another provider's list has says which provider.
    assert any("(provider=" in s for s in info.value.suggestions)
