"""Billing like the invoice: context tiers, service tiers, cache TTLs, audio,
image, searches and per-request fees, each in exact ``Decimal`` dollars.

Every rate is the entry in genai-prices' bundled snapshot (asserted first, so
a data change shows up as a wrong rate, not a wrong total), which cites the
provider's pricing page:

- Gemini 2.5 Pro (ai.google.dev/gemini-api/docs/pricing): per million tokens,
  input $1.25 (prompts <= 200k) / $2.50 (> 200k), output $10 / $15, cached
  input $0.125 / $0.25; batch half of each.
- GPT-5 (openai.com/api/pricing): standard $1.25 in / $0.125 cached / $10 out,
  flex $0.625 / $0.0625 / $5, priority $2.50 / $0.25 / $20.
- Claude Sonnet 4.5 (docs.anthropic.com/en/docs/about-claude/pricing): $3 in,
  $3.75 5-minute cache write, $6 1-hour write, $0.30 read, $15 out; web search
  $10 per 1,000; above 200k prompt tokens $6 / $7.50 / $12 / $0.60 / $22.50;
  batch half.
- gpt-audio-mini: text $0.60 in / $2.40 out, audio $10 in / $20 out.
- gemini-2.5-flash-image: text $0.30 in / $2.50 out, image output $30.
- Perplexity sonar-pro: $3 in / $15 out, $14 per 1,000 requests.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest

from crew_budget import Guard
from crew_budget.money import to_nano_round
from crew_budget.pricing import Price, PriceBook, price_from_genai
from crew_budget.usage import Usage, cost_nano_of, cost_of, parse_usage

D = Decimal
M = D(1_000_000)
BOOK = PriceBook()


def per_million(price: Price) -> tuple[Decimal, ...]:
    return (price.input * M, price.output * M,
            (price.cached_input or price.input) * M)


# -- context-length tiers ----------------------------------------------------------


def test_gemini_25_pro_rates_and_tier_threshold() -> None:
    price = BOOK.get("gemini-2.5-pro")
    assert (price.source, price.model) == ("genai-prices", "gemini-2.5-pro")
    assert per_million(price) == (D("1.25"), D(10), D("0.125"))
    [(above, tier)] = price.tiers
    assert above == 200_000
    assert per_million(tier) == (D("2.5"), D(15), D("0.25"))


def test_gemini_25_pro_300k_prompt_settles_at_the_above_200k_rate_through_the_guard() -> None:
    """The issue's acceptance case: 300k in / 100 out is $0.7515, not $0.376.

    The preflight estimate for a prompt over 200k tokens also uses the
    >200k rates: every estimated prompt token at $2.50/M plus the 100
    reserved output tokens at $15/M.
    """
    guard = Guard({"roles": {"r": {"daily": 10}}}, "memory://")
    messages = [{"role": "user", "content": "word " * 250_000}]
    ticket = guard.preflight("r", "gemini-2.5-pro", messages, max_tokens=100)
    assert ticket.prompt_tokens > 200_000
    assert ticket.estimate == ticket.prompt_tokens * D("0.0000025") + 100 * D("0.000015")
    settled = guard.settle(ticket, {"promptTokenCount": 300_000, "candidatesTokenCount": 100})
    # 300,000 x $2.50/M + 100 x $15/M
    assert settled.cost == D("0.7515")
    assert guard.status("r")[0].spent == D("0.7515")
    assert guard.status("r")[0].reserved == 0


def test_a_short_prompt_is_estimated_and_settled_at_the_base_rate() -> None:
    guard = Guard({"roles": {"r": {"daily": 10}}}, "memory://")
    ticket = guard.preflight("r", "gemini-2.5-pro", [{"role": "user", "content": "hi"}],
                             max_tokens=100)
    assert ticket.estimate == ticket.prompt_tokens * D("0.00000125") + 100 * D("0.00001")
    settled = guard.settle(ticket, {"prompt_tokens": 1000, "completion_tokens": 100})
    assert settled.cost == D("0.00225")  # 1000 x 1.25/M + 100 x 10/M


@pytest.mark.parametrize(("prompt", "expected"), [
    (200_000, D("0.251")),        # exactly 200k is "<= 200k": 0.25 + 0.001
    (200_001, D("0.5015025")),    # one more token bills all of them higher
])
def test_the_tier_is_a_cliff_at_the_threshold(prompt: int, expected: Decimal) -> None:
    usage = Usage(input_tokens=prompt, output_tokens=100)
    price = BOOK.get("gemini-2.5-pro")
    assert cost_of(usage, price) == expected
    assert cost_nano_of(usage, price) == int(expected * 10**9)


def test_cached_tokens_count_toward_the_tier_and_bill_at_its_cached_rate() -> None:
    # 100k uncached + 150k cached = 250k prompt: >200k rates for all.
    usage = parse_usage({"promptTokenCount": 250_000, "cachedContentTokenCount": 150_000,
                         "candidatesTokenCount": 1000})
    assert usage == Usage(input_tokens=100_000, cached_input_tokens=150_000, output_tokens=1000)
    # 100,000 x 2.50/M + 150,000 x 0.25/M + 1,000 x 15/M
    assert cost_of(usage, BOOK.get("gemini-2.5-pro")) == D("0.3025")


def test_claude_sonnet_45_long_context_tier() -> None:
    price = BOOK.get("claude-sonnet-4-5")
    [(above, tier)] = price.tiers
    assert above == 200_000
    assert (tier.input * M, tier.output * M, tier.cache_write * M if tier.cache_write else None,
            tier.cache_write_1h * M if tier.cache_write_1h else None) == (
        D(6), D("22.5"), D("7.5"), D(12))
    usage = parse_usage({"input_tokens": 150_000, "cache_read_input_tokens": 60_000,
                         "cache_creation_input_tokens": 0, "output_tokens": 2000})
    # 210k prompt: 150,000 x 6/M + 60,000 x 0.60/M + 2,000 x 22.50/M
    assert cost_of(usage, price) == D("0.9") + D("0.036") + D("0.045")


# -- service tiers ------------------------------------------------------------------


GPT5_USAGE = {"prompt_tokens": 10_000, "completion_tokens": 2000,
              "prompt_tokens_details": {"cached_tokens": 4000}}


@pytest.mark.parametrize(("tier", "expected"), [
    (None, D("0.028")),        # 6,000 x 1.25/M + 4,000 x 0.125/M + 2,000 x 10/M
    ("default", D("0.028")),
    ("flex", D("0.014")),      # 6,000 x 0.625/M + 4,000 x 0.0625/M + 2,000 x 5/M
    ("priority", D("0.056")),  # 6,000 x 2.50/M + 4,000 x 0.25/M + 2,000 x 20/M
])
def test_openai_service_tier_from_the_response(tier: str | None, expected: Decimal) -> None:
    response: dict[str, Any] = {"object": "chat.completion", "usage": GPT5_USAGE}
    if tier is not None:
        response["service_tier"] = tier
    usage = parse_usage(response)
    assert usage.service_tier == (tier if tier in ("flex", "priority") else None)
    price = BOOK.get("gpt-5")
    assert cost_of(usage, price) == expected
    assert cost_nano_of(usage, price) == int(expected * 10**9)


def test_flex_request_is_estimated_and_settled_at_flex_rates() -> None:
    """The request's service_tier prices the reservation; a usage that does
    not say which tier served it settles at the tier the request asked for."""
    guard = Guard({"roles": {"r": {"daily": 10}}}, "memory://")
    messages = [{"role": "user", "content": "Summarise the report."}]
    flex = guard.preflight("r", "gpt-5", messages, max_tokens=2000,
                           extra={"service_tier": "flex"})
    standard = guard.estimate("r", "gpt-5", messages, max_tokens=2000)
    assert flex.service_tier == "flex"
    assert flex.estimate == flex.prompt_tokens * D("0.000000625") + 2000 * D("0.000005")
    assert standard.amount == flex.prompt_tokens * D("0.00000125") + 2000 * D("0.00001")
    assert guard.settle(flex, GPT5_USAGE).cost == D("0.014")


def test_anthropic_batch_tier_from_usage() -> None:
    usage = parse_usage({"input_tokens": 1000, "output_tokens": 100,
                         "service_tier": "batch"})
    assert usage.service_tier == "batch"
    # Claude Sonnet 4.5 batch: 1,000 x 1.50/M + 100 x 7.50/M
    assert cost_of(usage, BOOK.get("claude-sonnet-4-5")) == D("0.00225")
    standard = parse_usage({"input_tokens": 1000, "output_tokens": 100,
                            "service_tier": "standard"})
    assert standard.service_tier is None
    assert cost_of(standard, BOOK.get("claude-sonnet-4-5")) == D("0.0045")


def test_an_unknown_or_unpriced_service_tier_bills_the_standard_rate() -> None:
    # gpt-4o-mini has no flex prices in the data: flex is billed as standard.
    usage = Usage(input_tokens=1000, output_tokens=100, service_tier="flex")
    assert cost_of(usage, BOOK.get("gpt-4o-mini")) == D("0.00021")  # 0.15 + 0.06 per M


# -- cache writes by TTL, web searches --------------------------------------------------


def test_anthropic_cache_writes_by_ttl_and_web_searches() -> None:
    usage = parse_usage({
        "input_tokens": 10, "cache_read_input_tokens": 500,
        "cache_creation_input_tokens": 3000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
        "output_tokens": 5, "server_tool_use": {"web_search_requests": 2},
        "service_tier": "standard",
    })
    assert usage == Usage(input_tokens=10, cached_input_tokens=500, cache_write_tokens=3000,
                          output_tokens=5, cache_write_1h_tokens=2000, web_search_requests=2)
    price = BOOK.get("claude-sonnet-4-5")
    assert (price.cache_write * M, price.cache_write_1h, price.web_search) == (
        D("3.75"), D("0.000006"), D("0.01"))
    # 10 x 3/M + 500 x 0.30/M + 1,000 x 3.75/M + 2,000 x 6/M + 5 x 15/M + 2 x $0.01
    expected = D("0.00003") + D("0.00015") + D("0.00375") + D("0.012") + D("0.000075") + D("0.02")
    assert cost_of(usage, price) == expected == D("0.036005")
    assert cost_nano_of(usage, price) == 36_005_000


def test_langchain_usage_metadata_carries_the_1h_writes() -> None:
    usage = parse_usage({"input_tokens": 3510, "output_tokens": 5, "total_tokens": 3515,
                         "input_token_details": {"cache_read": 500, "cache_creation": 3000,
                                                 "ephemeral_5m_input_tokens": 1000,
                                                 "ephemeral_1h_input_tokens": 2000}})
    assert usage == Usage(input_tokens=10, cached_input_tokens=500, cache_write_tokens=3000,
                          output_tokens=5, cache_write_1h_tokens=2000)
    assert cost_of(usage, BOOK.get("claude-sonnet-4-5")) == D("0.016005")


def test_without_a_1h_rate_a_1h_write_bills_at_the_5m_rate() -> None:
    book = PriceBook({"m": {"input_per_million": 1, "output_per_million": 2,
                            "cache_write_per_million": "1.25"}})
    usage = Usage(cache_write_tokens=1000, cache_write_1h_tokens=400)
    assert cost_of(usage, book.get("m")) == D("0.00125")
    both = PriceBook({"m": {"input_per_million": 1, "output_per_million": 2,
                            "cache_write_per_million": "1.25",
                            "cache_write_1h_per_million": 2}})
    assert cost_of(usage, both.get("m")) == D("0.00075") + D("0.0008")


# -- audio, image, per-request fees ---------------------------------------------------


def test_openai_audio_tokens_bill_at_audio_rates() -> None:
    usage = parse_usage({
        "prompt_tokens": 1200, "completion_tokens": 800,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 1000},
        "completion_tokens_details": {"audio_tokens": 600, "reasoning_tokens": 0},
    })
    assert (usage.input_tokens, usage.audio_input_tokens, usage.output_tokens,
            usage.audio_output_tokens) == (1200, 1000, 800, 600)
    price = BOOK.get("gpt-audio-mini")
    assert (price.input * M, price.input_audio * M if price.input_audio else None,
            price.output * M, price.output_audio * M if price.output_audio else None) == (
        D("0.6"), D(10), D("2.4"), D(20))
    # 200 x 0.60/M + 1,000 x 10/M + 200 x 2.40/M + 600 x 20/M
    assert cost_of(usage, price) == D("0.00012") + D("0.01") + D("0.00048") + D("0.012")
    assert cost_nano_of(usage, price) == 22_600_000


def test_gemini_image_output_tokens_bill_at_the_image_rate() -> None:
    usage = parse_usage({
        "promptTokenCount": 100, "candidatesTokenCount": 1300,
        "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 10},
                                    {"modality": "IMAGE", "tokenCount": 1290}],
    })
    assert (usage.output_tokens, usage.image_output_tokens) == (1300, 1290)
    price = BOOK.get("gemini-2.5-flash-image")
    # 100 x 0.30/M + 10 x 2.50/M + 1,290 x 30/M
    assert cost_of(usage, price) == D("0.00003") + D("0.000025") + D("0.0387")


def test_gemini_audio_input_tokens_bill_at_the_audio_rate() -> None:
    usage = parse_usage({
        "promptTokenCount": 1500, "candidatesTokenCount": 20,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 500},
                                {"modality": "AUDIO", "tokenCount": 1000}],
    })
    assert usage.audio_input_tokens == 1000
    # gemini-2.5-flash: 500 x 0.30/M + 1,000 x 1/M + 20 x 2.50/M
    assert cost_of(usage, BOOK.get("gemini-2.5-flash")) == D("0.00015") + D("0.001") + D(
        "0.00005")


def test_a_per_request_fee_is_charged_once_per_call() -> None:
    price = BOOK.get("sonar-pro", provider="perplexity")
    assert price.per_request == D("0.014")
    usage = Usage(input_tokens=1000, output_tokens=500)
    # 1,000 x 3/M + 500 x 15/M + $14 / 1,000 requests
    assert cost_of(usage, price) == D("0.003") + D("0.0075") + D("0.014")
    assert cost_nano_of(usage, price) == 24_500_000
    # The reservation includes the fee too, so the settle cannot exceed it.
    guard = Guard({"roles": {"r": {"daily": 1}}}, "memory://")
    ticket = guard.preflight("r", "sonar-pro", [{"role": "user", "content": "hi"}],
                             max_tokens=500, provider="perplexity")
    assert ticket.estimate == ticket.prompt_tokens * D("0.000003") + 500 * D("0.000015") + D(
        "0.014")


# -- litellm's map as the fallback also bills tiers ---------------------------------------


def test_litellms_tier_fields_are_used_when_it_is_the_source() -> None:
    price = PriceBook(genai_prices=False).get("gemini/gemini-2.5-pro")
    assert price.source == "litellm"
    usage = Usage(input_tokens=300_000, output_tokens=100)
    assert cost_of(usage, price) == D("0.7515")
    # litellm's gemini-2.5-pro priority fields: 2.25e-06 in / 1.8e-05 out (<=200k)
    # and 4.5e-06 / 2.7e-05 above 200k.
    assert cost_of(Usage(input_tokens=1000, output_tokens=100, service_tier="priority"),
                   price) == D("0.00225") + D("0.0018")
    assert cost_of(Usage(input_tokens=300_000, output_tokens=100, service_tier="priority"),
                   price) == D("1.35") + D("0.0027")
    one_hour = PriceBook(genai_prices=False).get("claude-sonnet-4-5")
    assert one_hour.cache_write_1h == D("0.000006")


# -- integer fast path equals Decimal everywhere -------------------------------------------


def test_integer_cost_equals_decimal_cost_for_every_genai_prices_model() -> None:
    """For each token-priced model in genai-prices' snapshot, random usages
    (across tiers, service tiers, 1 h writes, audio, images, searches) cost
    the same in integer nano-USD as ``cost_of`` rounded half-even."""
    from genai_prices import data_snapshot

    rng = random.Random(7)
    now = datetime.now(tz=timezone.utc)
    checked = tiered = 0
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            prices = model.get_prices(now)
            if getattr(prices, "input_mtok", None) is None or getattr(
                    prices, "output_mtok", None) is None:
                continue
            price = price_from_genai(model, provider)
            assert price is not None, model.id
            tiered += bool(price.tiers or price.service_tiers)
            for _ in range(2):
                out = rng.randrange(0, 50_000)
                inp = rng.randrange(0, 400_000)
                write = rng.randrange(0, 10_000)
                reasoning = rng.randrange(0, out + 1)
                audio_out = rng.randrange(0, out - reasoning + 1)
                usage = Usage(inp, rng.randrange(0, 300_000), write, out, reasoning,
                              rng.randrange(0, write + 1), rng.randrange(0, inp + 1),
                              audio_out, 0, 0, rng.randrange(0, 3),
                              rng.choice([None, "priority", "flex", "batch"]))
                assert cost_nano_of(usage, price) == to_nano_round(cost_of(usage, price)), (
                    model.id)
            checked += 1
    assert checked > 2000 and tiered > 100


# -- prices that change with the date or the time of day ------------------------------


def test_deepseek_off_peak_hours_and_the_cache_follows_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """genai-prices' deepseek-chat: $0.27 in / $1.10 out per million from 00:30
    to 16:30 UTC, $0.135 / $0.55 outside it (DeepSeek's off-peak discount).
    The cached price carries the moment it changes, and is looked up again then."""
    book = PriceBook()
    clock = [datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc)]
    monkeypatch.setattr(book, "_now", lambda: clock[0])
    peak = book.get("deepseek-chat", provider="deepseek")
    assert (peak.input * M, peak.output * M) == (D("0.27"), D("1.1"))
    assert peak.expires_at == datetime(2026, 1, 5, 16, 30, tzinfo=timezone.utc).timestamp()
    # That moment is long past on the real clock: the next get looks again.
    clock[0] = datetime(2026, 1, 5, 20, 0, tzinfo=timezone.utc)
    off_peak = book.get("deepseek-chat", provider="deepseek")
    assert (off_peak.input * M, off_peak.output * M) == (D("0.135"), D("0.55"))
    assert off_peak.expires_at == datetime(2026, 1, 6, 0, 30, tzinfo=timezone.utc).timestamp()
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert (cost_of(usage, peak), cost_of(usage, off_peak)) == (D("1.37"), D("0.685"))


def test_a_price_without_dated_changes_is_cached_for_good() -> None:
    book = PriceBook()
    price = book.get("gpt-4o-mini")
    assert price.expires_at is None
    assert book.get("gpt-4o-mini") is price
