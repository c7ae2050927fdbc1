"""CrewAI 1.x's native Bedrock provider (``LLM("bedrock/...")`` -> boto3's
Converse API) under ``BudgetLLM``, billed like the invoice, with HTTP replayed
from the hand-written cassettes in cassettes/providers/ (see
tests/litellm/test_providers_billing.py for the litellm route and the prices).

Gemini and Azure have no offline CrewAI route here: CrewAI 1.15 serves
``gemini/...`` and ``azure/...`` only through its native classes, which need
the ``google-genai`` and ``azure-ai-inference`` extras (``LLM(...)`` raises
``ImportError`` without them); their billing is proven through litellm.

Prices (genai-prices' bundled data, cited per test): us.anthropic.claude-
sonnet-4 = $3 in / $0.30 cache read / $3.75 cache write / $15 out per million;
claude-sonnet-4-5 us. profile $3.30 in / $6.60 1-hour write / $16.50 out,
global. profile $3 / $6 / $15.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from crew_budget.crewai import BudgetLLM
from tests.fixtures.http_replay import CASSETTES, live_bodies, record_mode, replay

PV = CASSETTES / "providers"
M = Decimal(1_000_000)
MSGS = [{"role": "user", "content": "Name the capital of France in one word."}]
CONFIG = {"roles": {"analyst": {"daily": "5.00", "max_output_tokens": 300}}}
SONNET_4 = "bedrock/us.anthropic.claude-sonnet-4-20250514-v1:0"


@pytest.fixture(autouse=True)
def _fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    # boto3 signs with these (SigV4); replay matches method + URL path only.
    # Re-recording (CREW_BUDGET_RECORD_MODE) uses the real environment instead.
    if record_mode() != "none":
        return
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKEFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-access-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION_NAME", "us-east-1")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_BEARER_TOKEN_BEDROCK"):
        monkeypatch.delenv(name, raising=False)


def llm(model: str, **kwargs: object) -> BudgetLLM:
    return BudgetLLM(role="analyst", model=model, config=CONFIG, ledger="memory://", **kwargs)


def settled(budget_llm: BudgetLLM) -> list[int]:
    records = budget_llm.guard.ledger.records()
    assert [r.outcome for r in records] == ["settled"] * len(records)
    return [r.cost_nano for r in records]


def test_crewai_bedrock_converse_bills_cache_reads_and_writes() -> None:
    budget_llm = llm(SONNET_4)
    with replay(PV / "bedrock_converse.yaml") as cassette:
        answer = budget_llm.call(MSGS)
    assert answer == "Paris."
    assert cassette.play_count == 1
    assert live_bodies(cassette)[0]["inferenceConfig"]["maxTokens"] == 300
    # inputTokens 1,800 + cacheReadInputTokens 4,000 + cacheWriteInputTokens
    # 1,000 + outputTokens 400.
    expected = (1_800 * Decimal(3) + 4_000 * Decimal("0.30") + 1_000 * Decimal("3.75")
                + 400 * Decimal(15)) / M
    assert settled(budget_llm) == [int(expected * 10**9)] == [16_350_000]
    price = budget_llm.guard.price(SONNET_4, "bedrock")
    assert (price.source, price.model) == ("genai-prices",
                                           "regional.anthropic.claude-sonnet-4-20250514-v1:0")


def test_crewai_bedrock_stream_bills_from_the_metadata_event() -> None:
    budget_llm = llm(SONNET_4, stream=True)
    with replay(PV / "bedrock_converse_stream.yaml") as cassette:
        answer = budget_llm.call(MSGS)
    assert answer == "Paris."
    assert cassette.play_count == 1
    expected = (2_600 * Decimal(3) + 6_000 * Decimal("0.30") + 250 * Decimal(15)) / M
    assert settled(budget_llm) == [int(expected * 10**9)] == [13_350_000]


def test_crewai_bedrock_one_hour_cache_writes() -> None:
    budget_llm = llm("bedrock/us.anthropic.claude-sonnet-4-5-20250929-v1:0")
    with replay(PV / "bedrock_converse_ttl.yaml") as cassette:
        budget_llm.call(MSGS)
    assert cassette.play_count == 1
    # 500 in, 3,000 written with ttl "1h" (cacheDetails), 200 out, us. profile.
    expected = (500 * Decimal("3.30") + 3_000 * Decimal("6.60") + 200 * Decimal("16.50")) / M
    assert settled(budget_llm) == [int(expected * 10**9)] == [24_750_000]
