"""Gemini, Azure OpenAI and AWS Bedrock billed like their invoices, through the
real LiteLLM SDK with HTTP replayed from hand-written cassettes in each
provider's wire format (cassettes/providers/, written by its author.py).

Every expected amount is computed here by hand: the cassette's usage numbers
(chosen by hand) times the price per million tokens in genai-prices' bundled
data (genai_prices/data.py, the snapshot crew-budget bills from), which cites
the providers' pricing pages:

- gemini-2.5-pro (ai.google.dev/gemini-api/docs/pricing): prompts <= 200k
  tokens $1.25 in / $0.125 cached / $10 out; prompts > 200k tokens $2.50 /
  $0.25 / $15 for *every* token of the call. Thinking tokens are output.
- gemini-2.5-flash: $0.30 in (text/image/video) / $1.00 audio in / $2.50 out.
- Azure OpenAI "Global" deployments (genai-prices' azure provider, which
  falls back to OpenAI's list prices): gpt-4o-mini $0.15 in / $0.075 cached /
  $0.60 out; gpt-4o $2.50 / $10; gpt-4.1 $2.00 / $0.50 cached / $8.00;
  o4-mini $1.10 / $4.40 (reasoning billed as output).
- regional.anthropic.claude-sonnet-4-20250514-v1:0 (Bedrock, us./eu./apac.
  inference profiles): $3 in / $0.30 cache read / $3.75 cache write / $15 out.
- claude-sonnet-4-5 on Bedrock: regional (us.) profile $3.30 in / $6.60
  1-hour cache write / $16.50 out; global. profile $3 / $6 / $15.

Each test asserts the HTTP requests sent (one per call), the settled nano-USD,
and which source priced the call under what name.

Azure: before the call only the deployment name is known, so a call is
reserved and settled at the price of the name it was made with: a deployment
named after its model ("azure/gpt-4o-mini"), litellm's ``base_model=`` for a
deployment with its own name, or a ``prices:`` entry for that name; an
unpriceable deployment name is refused before any request. The response's
``model`` is compared afterwards and a mismatch is logged with the fix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import litellm
import pytest

from crew_budget import Guard, UnknownModelError
from crew_budget.litellm import BudgetLogger, completion
from tests.fixtures.http_replay import CASSETTES, live_bodies, record_mode, replay
from tests.fixtures.waiting import await_for, wait_for
from tests.litellm.conftest import outcomes, unregister

PV = CASSETTES / "providers"
MSG = [{"role": "user", "content": "Name the capital of France in one word."}]
NO_RETRY = {"num_retries": 0, "max_retries": 0}
RECORDING = record_mode() != "none"
AZURE_BASE = "https://contoso.openai.azure.com"
AZURE = {"api_base": os.environ["AZURE_API_BASE"] if RECORDING else AZURE_BASE,
         "api_key": os.environ["AZURE_API_KEY"] if RECORDING else "fake-azure-key",
         "api_version": "2024-10-21", **NO_RETRY}
M = Decimal(1_000_000)

BUDGETS: dict[str, Any] = {
    "roles": {"analyst": {"daily": "5.00", "max_output_tokens": 2048}},
}


def nano(dollars: Decimal) -> int:
    whole = dollars * 10**9
    assert whole == whole.to_integral_value(), dollars  # the hand sums are exact
    return int(whole)


@pytest.fixture(autouse=True)
def _fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bedrock requests are SigV4-signed with these; nothing checks the signature
    # (replay matches method + URL path), and no real credential is read.
    # Re-recording (CREW_BUDGET_RECORD_MODE) uses the real environment instead.
    if RECORDING:
        return
    monkeypatch.setenv("GEMINI_API_KEY", "fake-gemini-key")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKEFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-access-key")
    monkeypatch.setenv("AWS_REGION_NAME", "us-east-1")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AZURE_API_KEY", "AZURE_API_BASE"):
        monkeypatch.delenv(name, raising=False)


def make_guard(prices: dict[str, Any] | None = None) -> Guard:
    return Guard({**BUDGETS, **({"prices": prices} if prices else {})}, "memory://")


@pytest.fixture
def guard() -> Iterator[Guard]:
    g = make_guard()
    yield g
    g.close()


@pytest.fixture
def logger(guard: Guard) -> Iterator[BudgetLogger]:
    budget_logger = BudgetLogger(guard, role="analyst")
    litellm.callbacks.append(budget_logger)
    try:
        yield budget_logger
    finally:
        unregister(budget_logger)


def settled(guard: Guard) -> list[int]:
    """Settled nano-USD of each call, in order."""
    records = guard.ledger.records()
    assert [r.outcome for r in records] == ["settled"] * len(records)
    return [r.cost_nano for r in records]


def source(guard: Guard, model: str) -> tuple[str, str]:
    price = guard.price(model)
    return price.source, price.model


def text_of(stream: Any) -> str:
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


# -- Gemini (Google AI Studio) -----------------------------------------------------------


def contract() -> str:
    """A ~795 kB prompt (14,000 numbered clauses): a > 200k-token request, so
    the reservation lands in the long-context tier as the bill does."""
    return " ".join(f"Clause {i}: the supplier delivers batch {i * 7 % 1000} by day {i % 365}."
                    for i in range(14_000))


def test_gemini_pro_above_200k_bills_every_token_at_the_long_context_tier(
    guard: Guard, logger: BudgetLogger
) -> None:
    long_prompt = [{"role": "user", "content": contract()}]
    with replay(PV / "gemini_generate.yaml") as cassette:
        response = completion(model="gemini/gemini-2.5-pro", messages=long_prompt, **NO_RETRY)
    assert response.choices[0].message.content.startswith("The archive is")
    assert cassette.play_count == 1
    sent = live_bodies(cassette)[0]
    assert sent["contents"][0]["parts"][0]["text"] == contract()
    assert sent["generationConfig"] == {"max_output_tokens": 2048}  # the role's cap
    # usageMetadata: promptTokenCount 250,000 (incl. cachedContentTokenCount
    # 4,000), candidatesTokenCount 800, thoughtsTokenCount 1,200. Over 200k:
    # 246,000 x $2.50 + 4,000 x $0.25 + (800 + 1,200) x $15, per million.
    expected = (246_000 * Decimal("2.50") + 4_000 * Decimal("0.25")
                + 2_000 * Decimal(15)) / M
    assert expected == Decimal("0.646")
    assert settled(guard) == [nano(expected)] == [646_000_000]
    assert source(guard, "gemini/gemini-2.5-pro") == ("genai-prices", "gemini-2.5-pro")
    [record] = guard.ledger.records()
    assert (record.input_tokens, record.cached_input_tokens, record.output_tokens,
            record.reasoning_tokens) == (246_000, 4_000, 2_000, 1_200)
    # The reservation was priced in the same tier (> 200k prompt tokens
    # estimated), so it covered the bill: no overrun.
    assert record.estimate_nano >= record.cost_nano
    assert guard.counters["overruns"] == 0


def test_gemini_flash_bills_tool_use_prompt_and_audio_tokens(
    guard: Guard, logger: BudgetLogger
) -> None:
    with replay(PV / "gemini_generate.yaml") as cassette:
        # The first interaction is the gemini-2.5-pro one: skip it by playing it.
        completion(model="gemini/gemini-2.5-pro", messages=MSG, **NO_RETRY)
        completion(model="gemini/gemini-2.5-flash", messages=MSG, **NO_RETRY)
    assert cassette.play_count == 2
    # promptTokenCount 1,000 (600 TEXT + 400 AUDIO) + toolUsePromptTokenCount
    # 500 (billed as input: ai.google.dev/api/generate-content#UsageMetadata
    # counts it apart from the prompt), candidates 200 + thoughts 100.
    expected = (1_100 * Decimal("0.30") + 400 * Decimal("1.00") + 300 * Decimal("2.50")) / M
    assert expected == Decimal("0.00148")
    assert settled(guard)[1] == nano(expected) == 1_480_000
    assert source(guard, "gemini/gemini-2.5-flash") == ("genai-prices", "gemini-2.5-flash")


@pytest.mark.parametrize("sync", [True, False])
def test_gemini_stream_bills_cached_and_thinking_tokens_below_the_tier(
    guard: Guard, logger: BudgetLogger, sync: bool
) -> None:
    import asyncio

    async def consume() -> str:
        stream = await litellm.acompletion(model="gemini/gemini-2.5-pro", messages=MSG,
                                           stream=True, **NO_RETRY)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    with replay(PV / "gemini_stream.yaml") as cassette:
        if sync:
            text = text_of(completion(model="gemini/gemini-2.5-pro", messages=MSG, stream=True,
                                      **NO_RETRY))
        else:
            text = asyncio.run(consume())
        wait_for(lambda: logger.in_flight == 0)
    assert text == "Paris."
    assert cassette.play_count == 1
    # Final usageMetadata: 12,000 prompt (4,000 cached), 300 + 1,200 thinking:
    # 8,000 x $1.25 + 4,000 x $0.125 + 1,500 x $10, per million.
    expected = (8_000 * Decimal("1.25") + 4_000 * Decimal("0.125") + 1_500 * Decimal(10)) / M
    assert expected == Decimal("0.0255")
    assert settled(guard) == [nano(expected)] == [25_500_000]


# -- Azure OpenAI -------------------------------------------------------------------------


async def test_azure_deployment_named_for_its_model_bills_cached_reads(
    guard: Guard, logger: BudgetLogger
) -> None:
    with replay(PV / "azure_chat.yaml") as cassette:
        response = await litellm.acompletion(model="azure/gpt-4o-mini", messages=MSG, **AZURE)
        await await_for(lambda: logger.in_flight == 0)
    assert response.choices[0].message.content == "Paris."
    assert cassette.play_count == 1
    assert cassette.live[0].path == "/openai/deployments/gpt-4o-mini/chat/completions"
    assert live_bodies(cassette)[0]["max_tokens"] == 2048  # the role's cap, injected
    # 2,400 prompt of which 1,280 cached, 40 out.
    expected = (1_120 * Decimal("0.15") + 1_280 * Decimal("0.075") + 40 * Decimal("0.60")) / M
    assert settled(guard) == [nano(expected)] == [288_000]
    assert source(guard, "azure/gpt-4o-mini") == ("genai-prices", "gpt-4o-mini")


def test_azure_stream_bills_cached_reads_from_the_usage_chunk(
    guard: Guard, logger: BudgetLogger
) -> None:
    with replay(PV / "azure_stream.yaml") as cassette:
        text = text_of(completion(model="azure/gpt-4.1", messages=MSG, stream=True, **AZURE))
        wait_for(lambda: logger.in_flight == 0)
    assert text == "Paris."
    assert cassette.play_count == 1
    assert live_bodies(cassette)[0]["stream_options"] == {"include_usage": True}
    # Last chunk's usage: 3,000 prompt of which 2,048 cached, 90 out; gpt-4.1
    # is $2.00 in / $0.50 cached / $8.00 out.
    expected = (952 * Decimal(2) + 2_048 * Decimal("0.50") + 90 * Decimal(8)) / M
    assert settled(guard) == [nano(expected)] == [3_648_000]
    assert source(guard, "azure/gpt-4.1") == ("genai-prices", "gpt-4.1")


def test_azure_o_series_stream_bills_reasoning_as_output(
    guard: Guard, logger: BudgetLogger
) -> None:
    with replay(PV / "azure_stream.yaml") as cassette:
        text_of(completion(model="azure/gpt-4.1", messages=MSG, stream=True, **AZURE))
        wait_for(lambda: logger.in_flight == 0)
        text = text_of(completion(model="azure/o4-mini", messages=MSG, stream=True, **AZURE))
        wait_for(lambda: logger.in_flight == 0)
    assert text == "Paris."
    assert cassette.play_count == 2
    # litellm fake-streams Azure o-series: the request is not a stream.
    assert "stream" not in live_bodies(cassette)[1]
    # 1,500 prompt, 700 completion (512 of them reasoning, billed as output).
    expected = (1_500 * Decimal("1.10") + 700 * Decimal("4.40")) / M
    assert settled(guard)[1] == nano(expected) == 4_730_000
    assert source(guard, "azure/o4-mini") == ("genai-prices", "o4-mini")


def test_azure_deployment_with_its_own_name_needs_a_price_before_any_request(
    guard: Guard, logger: BudgetLogger
) -> None:
    # The deployment name is all that is known before the call; "prod-chat"
    # names no model, and guessing would bill the wrong price (or $0).
    with replay(PV / "azure_chat.yaml") as cassette, \
            pytest.raises(UnknownModelError) as info:
        completion(model="azure/prod-chat", messages=MSG, **AZURE)
    assert cassette.play_count == 0
    assert "no price known for model 'azure/prod-chat'" in str(info.value)
    assert "prices:" in str(info.value)
    assert outcomes(guard) == []


def test_azure_deployment_priced_by_the_users_override() -> None:
    # The documented fix: price the deployment under its own name with the
    # model it runs (here gpt-4o: $2.50 in / $1.25 cached / $10 out).
    g = make_guard({"azure/prod-chat": {"input_per_million": "2.50",
                                        "cached_input_per_million": "1.25",
                                        "output_per_million": "10.00"}})
    budget_logger = BudgetLogger(g, role="analyst")
    litellm.callbacks.append(budget_logger)
    try:
        with replay(PV / "azure_chat.yaml") as cassette:
            completion(model="azure/gpt-4o-mini", messages=MSG, **AZURE)
            response = completion(model="azure/prod-chat", messages=MSG, **AZURE)
        assert cassette.play_count == 2
        assert response.model == "gpt-4o-2024-11-20"  # what the deployment runs
        # 900 prompt, 120 out at the override.
        expected = (900 * Decimal("2.50") + 120 * Decimal(10)) / M
        assert settled(g)[1] == nano(expected) == 3_450_000
        assert source(g, "azure/prod-chat") == ("override", "azure/prod-chat")
    finally:
        unregister(budget_logger)
        g.close()


def test_azure_deployment_priced_by_litellms_base_model(
    guard: Guard, logger: BudgetLogger
) -> None:
    # litellm's own answer to "what does this deployment run": base_model=,
    # the kwarg its cost tracking reads. The reservation and the settle use it.
    with replay(PV / "azure_chat.yaml") as cassette:
        completion(model="azure/gpt-4o-mini", messages=MSG, **AZURE)
        response = completion(model="azure/prod-chat", base_model="azure/gpt-4o",
                              messages=MSG, **AZURE)
    assert cassette.play_count == 2
    assert cassette.live[1].path == "/openai/deployments/prod-chat/chat/completions"
    assert "base_model" not in live_bodies(cassette)[1]  # litellm keeps it to itself
    assert response.model == "gpt-4o-2024-11-20"
    # 900 prompt, 120 out at gpt-4o's $2.50 / $10.00 per million.
    expected = (900 * Decimal("2.50") + 120 * Decimal(10)) / M
    assert settled(guard)[1] == nano(expected) == 3_450_000
    assert guard.ledger.records()[1].model == "azure/gpt-4o"
    assert source(guard, "azure/gpt-4o") == ("genai-prices", "gpt-4o")


def test_a_proxy_request_cannot_pick_its_price_with_base_model(
    guard: Guard, logger: BudgetLogger
) -> None:
    # On the proxy the body is the client's: base_model there is ignored, so
    # the deployment name must be priced by the operator's configuration.
    data = {"model": "azure/prod-chat", "base_model": "gpt-4o-mini", "messages": MSG}
    with pytest.raises(UnknownModelError, match="no price known for model 'azure/prod-chat'"):
        logger.reserve("proxy-call-1", "analyst", data, "proxy")
    assert outcomes(guard) == [] and logger.in_flight == 0


def test_azure_deployment_answering_as_another_model_is_billed_as_that_model(
    guard: Guard, logger: BudgetLogger, caplog: pytest.LogCaptureFixture
) -> None:
    # Only the deployment name is known before the call, so the call is
    # reserved at that name's price; Azure invoices the model that answered
    # (the response's ``model``), so the call is charged at that model's price
    # and the mismatch and its fix are logged (once per pair).
    with caplog.at_level(logging.WARNING, logger="crew_budget"), \
            replay(PV / "azure_chat.yaml") as cassette:
        completion(model="azure/gpt-4o-mini", messages=MSG, **AZURE)  # answers as mini
        response = completion(model="azure/gpt-4o-mini", messages=MSG, **AZURE)
    assert cassette.play_count == 2
    assert response.model == "gpt-4o-2024-11-20"
    # The second call: 900 prompt, 120 out at gpt-4o's $2.50 / $10 (genai-prices),
    # not the deployment name's gpt-4o-mini $0.15 / $0.60 (which would be 207,000).
    expected = (900 * Decimal("2.50") + 120 * Decimal(10)) / M
    assert settled(guard)[1] == nano(expected) == 3_450_000
    # The first (answered as gpt-4o-mini-2024-07-18): 2,400 prompt of which 1,280
    # cached, 40 out, at gpt-4o-mini's $0.15 / $0.075 cached / $0.60.
    assert settled(guard)[0] == nano((1_120 * Decimal("0.15") + 1_280 * Decimal("0.075")
                                      + 40 * Decimal("0.60")) / M) == 288_000
    warnings = [r.getMessage() for r in caplog.records if "answered as" in r.getMessage()]
    assert warnings == [
        "crew-budget: Azure deployment azure/gpt-4o-mini is priced as gpt-4o-mini, but it "
        "answered as gpt-4o-2024-11-20 (priced as gpt-4o); its calls are charged at gpt-4o's "
        "rates, as Azure bills them, but reserved at gpt-4o-mini's, so they can overrun. "
        "Fix: pass base_model='azure/gpt-4o' to litellm, or price the deployment under "
        "`prices:`"]


def test_azure_deployment_with_a_prices_entry_keeps_the_users_rate(
    caplog: pytest.LogCaptureFixture
) -> None:
    # The user priced the deployment name themselves (a negotiated rate, a PTU):
    # that price is charged whatever model answered, and the mismatch is logged.
    g = make_guard({"azure/gpt-4o-mini": {"input_per_million": "0.15",
                                          "output_per_million": "0.60"}})
    budget_logger = BudgetLogger(g, role="analyst")
    litellm.callbacks.append(budget_logger)
    try:
        with caplog.at_level(logging.WARNING, logger="crew_budget"), \
                replay(PV / "azure_chat.yaml") as cassette:
            completion(model="azure/gpt-4o-mini", messages=MSG, **AZURE)
            completion(model="azure/gpt-4o-mini", messages=MSG, **AZURE)
        assert cassette.play_count == 2
        expected = (900 * Decimal("0.15") + 120 * Decimal("0.60")) / M
        assert settled(g)[1] == nano(expected) == 207_000
        warnings = [r.getMessage() for r in caplog.records if "answered as" in r.getMessage()]
        assert warnings == [
            "crew-budget: Azure deployment azure/gpt-4o-mini answered as gpt-4o-2024-11-20 "
            "(priced as gpt-4o); its calls are charged at your `prices:` entry for "
            "azure/gpt-4o-mini, as configured"]
    finally:
        unregister(budget_logger)
        g.close()


# -- AWS Bedrock (Converse) -----------------------------------------------------------------

SONNET = "bedrock/us.anthropic.claude-sonnet-4-20250514-v1:0"


async def test_bedrock_converse_bills_cache_reads_and_writes(
    guard: Guard, logger: BudgetLogger
) -> None:
    with replay(PV / "bedrock_converse.yaml") as cassette:
        response = await litellm.acompletion(model=SONNET, messages=MSG, **NO_RETRY)
        await await_for(lambda: logger.in_flight == 0)
    assert response.choices[0].message.content == "Paris."
    assert cassette.play_count == 1
    assert live_bodies(cassette)[0]["inferenceConfig"]["maxTokens"] == 2048
    # Converse usage: inputTokens 1,800 (excluding the cache), cacheReadInputTokens
    # 4,000, cacheWriteInputTokens 1,000, outputTokens 400.
    expected = (1_800 * Decimal(3) + 4_000 * Decimal("0.30") + 1_000 * Decimal("3.75")
                + 400 * Decimal(15)) / M
    assert expected == Decimal("0.01635")
    assert settled(guard) == [nano(expected)] == [16_350_000]
    assert source(guard, SONNET) == ("genai-prices",
                                     "regional.anthropic.claude-sonnet-4-20250514-v1:0")
    [record] = guard.ledger.records()
    assert (record.input_tokens, record.cached_input_tokens, record.cache_write_tokens,
            record.output_tokens) == (1_800, 4_000, 1_000, 400)


def test_bedrock_converse_stream_bills_from_the_metadata_event(
    guard: Guard, logger: BudgetLogger
) -> None:
    with replay(PV / "bedrock_converse_stream.yaml") as cassette:
        text = text_of(completion(model=SONNET, messages=MSG, stream=True, **NO_RETRY))
        wait_for(lambda: logger.in_flight == 0)
    assert text == "Paris."
    assert cassette.play_count == 1
    # metadata event usage: 2,600 in, 6,000 cache read, 250 out.
    expected = (2_600 * Decimal(3) + 6_000 * Decimal("0.30") + 250 * Decimal(15)) / M
    assert settled(guard) == [nano(expected)] == [13_350_000]


@pytest.mark.parametrize(("profile", "rates", "expected_nano"), [
    # regional.anthropic.claude-sonnet-4-5-20250929-v1:0 (us./eu./jp. profiles,
    # 10 % above the global rate): $3.30 in / $6.60 1-hour cache write / $16.50 out.
    ("us", (Decimal("3.30"), Decimal("6.60"), Decimal("16.50")), 24_750_000),
    # global.anthropic.claude-sonnet-4-5-20250929-v1:0: $3 / $6 / $15.
    ("global", (Decimal(3), Decimal(6), Decimal(15)), 22_500_000),
])
async def test_bedrock_one_hour_cache_writes_and_the_profiles_price(
    guard: Guard, logger: BudgetLogger, profile: str, rates: tuple[Decimal, ...],
    expected_nano: int,
) -> None:
    model = f"bedrock/{profile}.anthropic.claude-sonnet-4-5-20250929-v1:0"
    with replay(PV / "bedrock_converse_ttl.yaml") as cassette:
        if profile == "global":  # the second interaction
            await litellm.acompletion(model=model.replace("global.", "us."), messages=MSG,
                                      **NO_RETRY)
        await litellm.acompletion(model=model, messages=MSG, **NO_RETRY)
        await await_for(lambda: logger.in_flight == 0)
    assert cassette.play_count == (2 if profile == "global" else 1)
    # usage: inputTokens 500, cacheWriteInputTokens 3,000 all with ttl "1h"
    # (cacheDetails), outputTokens 200. A 1-hour write is 2x input
    # (docs.aws.amazon.com/bedrock/latest/userguide/prompt-caching.html).
    inp, write_1h, out = rates
    expected = (500 * inp + 3_000 * write_1h + 200 * out) / M
    assert settled(guard)[-1] == nano(expected) == expected_nano
    assert source(guard, model) == ("genai-prices",
                                    f"{'regional' if profile == 'us' else 'global'}"
                                    ".anthropic.claude-sonnet-4-5-20250929-v1:0")
