"""A LangChain call whose role matches no budget is refused before any HTTP request.

The handler and the middleware surface ``crew_budget.UnknownRoleError`` the
way they surface a configuration problem: it propagates out of ``invoke``
(a refusal to run, not a budget stop the agent could work around), with the
closest configured role named; a case/whitespace variant is charged to the
configured role.
"""

from __future__ import annotations

import pytest
from langchain.agents import create_agent
from langchain_openai import ChatOpenAI

from crew_budget import Guard, UnknownRoleError
from crew_budget.langchain import BudgetCallbackHandler, BudgetMiddleware
from tests.fixtures.http_replay import recorded_usage, replay
from tests.langchain.conftest import LC, cost, outcomes, spent

Q_FR = "Name the capital of France in one word."


def chat(handler: BudgetCallbackHandler) -> ChatOpenAI:
    return ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", max_tokens=64, max_retries=0,
                      callbacks=[handler])


def test_handler_refuses_a_misspelt_role_before_http(guard: Guard) -> None:
    handler = BudgetCallbackHandler(role="reseacher", guard=guard)
    with replay(LC / "chat.yaml") as cassette, pytest.raises(UnknownRoleError) as info:
        chat(handler).invoke(Q_FR)
    assert cassette.play_count == 0
    assert (info.value.role, info.value.suggestion) == ("reseacher", "researcher")
    assert outcomes(guard) == []
    assert handler.in_flight == 0


def test_handler_charges_a_case_variant_to_the_configured_role(guard: Guard) -> None:
    handler = BudgetCallbackHandler(role="Researcher ", guard=guard)
    with replay(LC / "chat.yaml") as cassette:
        chat(handler).invoke(Q_FR)
    assert cassette.play_count == 1
    assert spent(guard, "role:researcher") == cost(recorded_usage(LC / "chat.yaml")[0])
    assert [r.role for r in guard.ledger.records()] == ["researcher"]


def test_middleware_refuses_an_unknown_role_before_http(guard: Guard) -> None:
    mw = BudgetMiddleware(role="Senior Researcher", guard=guard)
    runner = create_agent(ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", max_retries=0),
                          [], system_prompt="Be brief.", middleware=[mw])
    with replay(LC / "agent_tools.yaml") as cassette, pytest.raises(UnknownRoleError) as info:
        runner.invoke({"messages": [{"role": "user", "content": Q_FR}]})
    assert cassette.play_count == 0
    assert info.value.suggestion == "researcher"
    assert outcomes(guard) == []
