"""Token and call limits on real LangChain runs (issue 12, item 3), HTTP replayed.

``agent_tools.yaml``: a create_agent run with one weather tool and two
model calls (usage: 72 prompt + 15 completion, then 104 + 12); the
middleware injects the role's 256-token output cap. ``chat.yaml``: two
single questions (16 + 2, then 16 + 3) sent with ``max_tokens=64``.

- ``output_tokens: {daily: 270}``: call 1 reserves 256 and settles at 15;
  call 2 needs 15 + 256 = 271 > 270: refused before its request (exactly
  one request). At 271 both fit.
- ``calls: {daily: 1}``: one request, the second call refused.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from crew_budget import BudgetExceeded, Guard
from crew_budget.langchain import BudgetCallbackHandler, BudgetMiddleware
from tests.fixtures.http_replay import recorded_usage, replay
from tests.langchain.conftest import LC, outcomes

SYSTEM = "You are a concise travel assistant."
ASK = {"messages": [{"role": "user", "content": "What is the weather in Lisbon?"}]}


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return "18C and sunny"


def _agent(mw: BudgetMiddleware) -> Any:
    chat = ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", max_retries=0)
    return create_agent(chat, [get_weather], system_prompt=SYSTEM, middleware=[mw])


def _row(guard: Guard, unit: str) -> tuple[Any, ...]:
    (r,) = [s for s in guard.status() if s.scope == "role:researcher" and s.unit == unit]
    return r.limit, r.spent, r.reserved


def test_cassette_usage_is_what_the_docstring_says() -> None:
    assert [(u["prompt_tokens"], u["completion_tokens"])
            for u in recorded_usage(LC / "agent_tools.yaml")] == [(72, 15), (104, 12)]
    assert [(u["prompt_tokens"], u["completion_tokens"])
            for u in recorded_usage(LC / "chat.yaml")] == [(16, 2), (16, 3)]


@pytest.mark.parametrize(("limit", "requests"), [(270, 1), (271, 2)])
def test_an_output_token_limit_stops_the_agent_before_the_request(limit: int,
                                                                   requests: int) -> None:
    guard = Guard({"roles": {"researcher": {"daily": 1, "max_output_tokens": 256,
                                            "output_tokens": {"daily": limit}}}}, "memory://")
    mw = BudgetMiddleware(role="researcher", guard=guard, exit_behavior="error")
    with replay(LC / "agent_tools.yaml") as cassette:
        if requests == 1:
            with pytest.raises(BudgetExceeded) as info:
                _agent(mw).invoke(ASK)
            assert (info.value.unit, info.value.limit, info.value.spent,
                    info.value.estimate) == ("output_tokens", limit, 15, 256)
        else:
            result = _agent(mw).invoke(ASK)
            assert result["messages"][-1].content == "It is 18C and sunny in Lisbon."
    assert cassette.play_count == requests
    assert _row(guard, "output_tokens") == (limit, [15, 27][requests - 1], 0)
    assert outcomes(guard) == (["settled", "blocked"] if requests == 1
                               else ["settled", "settled"])
    guard.close()


def test_a_calls_limit_ends_the_agent_with_a_message_naming_it() -> None:
    guard = Guard({"roles": {"researcher": {"daily": 1, "max_output_tokens": 256,
                                            "calls": {"daily": 1}}}}, "memory://")
    mw = BudgetMiddleware(role="researcher", guard=guard, exit_behavior="end")
    with replay(LC / "agent_tools.yaml") as cassette:
        result = _agent(mw).invoke(ASK)
    assert cassette.play_count == 1
    text = str(result["messages"][-1].content)
    assert "role:researcher daily calls: 1 of 1 used" in text
    assert "this gpt-4o-mini call needs 1, so it was not sent" in text
    assert _row(guard, "calls") == (1, 1, 0)
    assert outcomes(guard) == ["settled", "blocked"]
    guard.close()


def test_the_callback_handler_refuses_the_call_over_an_input_token_limit() -> None:
    """The first question bills 16 prompt tokens; a limit of 20 leaves 4,
    fewer than any prompt of the second question: refused, one request."""
    guard = Guard({"roles": {"researcher": {"daily": 1, "input_tokens": {"hourly": 20}}}},
                  "memory://")
    chat = ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", max_retries=0, max_tokens=64,
                      callbacks=[BudgetCallbackHandler(role="researcher", guard=guard)])
    with replay(LC / "chat.yaml") as cassette:
        chat.invoke("Name the capital of France in one word.")
        with pytest.raises(BudgetExceeded) as info:
            chat.invoke("Name the capital of Portugal in one word.")
    assert cassette.play_count == 1
    assert (info.value.unit, info.value.window, info.value.spent, info.value.limit) == (
        "input_tokens", "hour", 16, 20)
    (r,) = [s for s in guard.status() if s.unit == "input_tokens"]
    assert (r.spent, r.reserved, r.remaining) == (16, 0, 4)
    assert outcomes(guard) == ["settled", "blocked"]
    guard.close()
