"""The LangChain adapters tell the guard where a call goes, so it is priced
from that provider's list: a base URL beats ``ls_provider``, which beats the
class name. Blocks are proven by HTTP request counts (zero: nothing sent).

Rates (genai-prices' bundled snapshot): Groq llama-3.1-8b-instant $0.05 in /
$0.08 out per million; OpenRouter openai/gpt-4o-mini $0.15 / $0.60.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_openai import ChatOpenAI

from crew_budget import BudgetExceeded, Guard, UnknownModelError
from crew_budget.guard import GuardEvent
from crew_budget.langchain import BudgetCallbackHandler, BudgetMiddleware
from crew_budget.langchain._common import provider_hint
from tests.fixtures.http_replay import recorded_usage, replay
from tests.langchain.conftest import LC, cost, spent

Q_FR = "Name the capital of France in one word."
GROQ = "https://api.groq.com/openai/v1"


def events(guard: Guard) -> list[GuardEvent]:
    seen: list[GuardEvent] = []
    guard.add_listener(seen.append)
    return seen


def test_chat_openai_pointed_at_groq_is_priced_from_groqs_list(guard: Guard) -> None:
    seen = events(guard)
    handler = BudgetCallbackHandler(role="broke", guard=guard)
    model = ChatOpenAI(model="llama-3.1-8b-instant", base_url=GROQ, api_key="sk-test",
                       max_tokens=64, max_retries=0, callbacks=[handler])
    with replay(LC / "chat.yaml") as cassette, pytest.raises(BudgetExceeded) as info:
        model.invoke(Q_FR)
    assert cassette.play_count == 0
    [blocked] = seen
    assert blocked.outcome == "blocked"
    same = guard.estimate("broke", "llama-3.1-8b-instant",
                          [{"role": "user", "content": Q_FR}], max_tokens=64, provider=GROQ)
    assert same.price.model == "llama-3.1-8b-instant" and same.price.provider == "groq"
    assert info.value.estimate == blocked.estimate == same.amount == (
        same.prompt_tokens * Decimal("5E-8") + 64 * Decimal("8E-8"))


def test_without_the_base_url_the_same_name_has_no_price(guard: Guard) -> None:
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    model = ChatOpenAI(model="llama-3.1-8b-instant", api_key="sk-test", max_tokens=64,
                       max_retries=0, callbacks=[handler])
    with replay(LC / "chat.yaml") as cassette, pytest.raises(UnknownModelError) as info:
        model.invoke(Q_FR)
    assert cassette.play_count == 0
    assert info.value.suggestions[0] == "groq/llama-3.1-8b-instant"


def test_chat_openai_pointed_at_openrouter_uses_openrouters_entry(guard: Guard) -> None:
    seen = events(guard)
    handler = BudgetCallbackHandler(role="broke", guard=guard)
    model = ChatOpenAI(model="openai/gpt-4o-mini", base_url="https://openrouter.ai/api/v1",
                       api_key="sk-test", max_tokens=64, max_retries=0, callbacks=[handler])
    with replay(LC / "chat.yaml") as cassette, pytest.raises(BudgetExceeded):
        model.invoke(Q_FR)
    assert cassette.play_count == 0
    price = guard.price("openai/gpt-4o-mini", "https://openrouter.ai/api/v1")
    assert (price.source, price.model, price.provider) == (
        "genai-prices", "openai/gpt-4o-mini", "openrouter")
    assert seen[0].outcome == "blocked"


def test_a_real_call_carries_ls_provider_to_settle(guard: Guard) -> None:
    """ChatOpenAI on api.openai.com: ls_provider "openai" is the hint, the
    ticket keeps it, and settle charges the recorded usage at OpenAI's price."""
    seen = events(guard)
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    model = ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", max_tokens=64, max_retries=0,
                       callbacks=[handler])
    with replay(LC / "chat.yaml") as cassette:
        model.invoke(Q_FR)
    assert cassette.play_count == 1
    allowed = seen[0]
    assert allowed.outcome == "allowed" and allowed.ticket is not None
    assert allowed.ticket.provider == "openai"
    expected = cost(recorded_usage(LC / "chat.yaml")[0])
    assert seen[1].outcome == "settled" and seen[1].cost == expected
    assert spent(guard, "role:researcher") == expected


def test_agent_middleware_passes_the_base_url(guard: Guard) -> None:
    seen = events(guard)
    mw = BudgetMiddleware(role="broke", guard=guard)
    model = ChatOpenAI(model="llama-3.1-8b-instant", base_url=GROQ, api_key="sk-test",
                       max_retries=0)
    agent = create_agent(model, [], middleware=[mw])
    with replay(LC / "agent_tools.yaml") as cassette:
        result = agent.invoke({"messages": [{"role": "user", "content": Q_FR}]})
    assert cassette.play_count == 0  # blocked: the agent ends with the budget message
    assert "budget" in str(result["messages"][-1].content).lower()
    [blocked] = seen
    assert blocked.outcome == "blocked" and blocked.error is not None
    # The same request estimated by hand with Groq's prices: the role has no
    # output cap, so 4096 tokens (default_max_output_tokens) at $0.08/M.
    same = guard.estimate("broke", "llama-3.1-8b-instant", [{"role": "user", "content": Q_FR}],
                          provider=GROQ)
    assert same.output_tokens_reserved == 4096
    assert blocked.estimate == same.amount == (
        same.prompt_tokens * Decimal("5E-8") + 4096 * Decimal("8E-8"))


@pytest.mark.parametrize(("ls", "fields", "cls", "expected"), [
    ("openai", {"openai_api_base": "https://openrouter.ai/api/v1"}, "ChatOpenAI",
     "https://openrouter.ai/api/v1"),
    ("openai", {"openai_api_base": None}, "ChatOpenAI", "openai"),
    (None, {}, "ChatAnthropic", "ChatAnthropic"),
    ("azure", {"azure_endpoint": "https://x.openai.azure.com/"}, "AzureChatOpenAI",
     "https://x.openai.azure.com/"),
    (None, None, None, None),
])
def test_provider_hint_order(ls: Any, fields: Any, cls: Any, expected: Any) -> None:
    assert provider_hint(ls, fields, cls) == expected
