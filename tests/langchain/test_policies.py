"""On-exceed policies on LangChain v1 agents (issue 12 part 5), HTTP replayed by VCR.py.

The agent of ``test_middleware.py`` (one weather tool, two model calls) is
built on ``gpt-4o``; its role's budget only fits gpt-4o-mini, and
``on_exceed: {downgrade: [gpt-4o-mini]}`` sends both requests there. The
bodies that went over the wire name the model; dollars are the cassette's
usage x gpt-4o-mini's list price (conftest).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from langchain.agents import create_agent
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from crew_budget import Guard
from crew_budget.langchain import BudgetMiddleware
from tests.fixtures.http_replay import live_bodies, replay
from tests.langchain.conftest import LC, spent

SYSTEM = "You are a concise travel assistant."
ASK = {"messages": [{"role": "user", "content": "What is the weather in Lisbon?"}]}
# gpt-4o reserves ~70 prompt tokens x $2.50/M + 256 x $10/M, about $0.0028:
# over $0.001. gpt-4o-mini reserves about $0.00017 per call.
DOWNGRADE = {"roles": {"researcher": {"daily": "0.001", "max_output_tokens": 256,
                                      "on_exceed": {"downgrade": ["gpt-4o-mini"]}}}}


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return "18C and sunny"


def _agent(mw: BudgetMiddleware, chat: ChatOpenAI) -> Any:
    return create_agent(chat, [get_weather], system_prompt=SYSTEM, middleware=[mw])


def test_downgrade_sends_both_model_calls_to_the_cheaper_model() -> None:
    guard = Guard(DOWNGRADE, "memory://")
    chat = ChatOpenAI(model="gpt-4o", api_key="sk-test", max_retries=0)
    mw = BudgetMiddleware(role="researcher", guard=guard)
    with replay(LC / "agent_tools.yaml") as cassette:
        result = _agent(mw, chat).invoke(ASK)
    assert result["messages"][-1].content == "It is 18C and sunny in Lisbon."
    assert cassette.play_count == 2
    assert [b["model"] for b in live_bodies(cassette)] == ["gpt-4o-mini"] * 2
    assert chat.model_name == "gpt-4o"  # the user's model object is untouched
    # (72 x 0.15 + 15 x 0.60 + 104 x 0.15 + 12 x 0.60) / 1M, as test_middleware.py
    assert spent(guard, "role:researcher") == Decimal("0.0000426")
    records = sorted(guard.ledger.records(), key=lambda r: r.ts)
    assert [(r.outcome, r.model) for r in records] == (
        [("blocked", "gpt-4o"), ("settled", "gpt-4o-mini")] * 2)
    assert {r.metadata.get("downgraded_from") for r in records if r.outcome == "settled"} == {
        "gpt-4o"}
    guard.close()


def test_end_task_is_the_agents_end_exit_even_when_stops_raise() -> None:
    guard = Guard({"roles": {"researcher": {"daily": 0, "on_exceed": "end_task"}}}, "memory://")
    chat = ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", max_retries=0)
    mw = BudgetMiddleware(role="researcher", guard=guard, exit_behavior="error")
    with replay(LC / "agent_tools.yaml") as cassette:
        result = _agent(mw, chat).invoke(ASK)
    assert cassette.play_count == 0
    assert str(result["messages"][-1].content).startswith(
        "Stopped by crew-budget: budget exceeded for role 'researcher'")
    assert result["messages"][-1].response_metadata["crew_budget"]["blocked"] is True
    assert [r.outcome for r in guard.ledger.records()] == ["blocked"]
    guard.close()


def test_shadow_mode_sends_both_calls_and_flags_them() -> None:
    guard = Guard({"mode": "shadow", "roles": {"researcher": {
        "daily": "0.0000001", "max_output_tokens": 256}}}, "memory://")
    chat = ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", max_retries=0)
    with replay(LC / "agent_tools.yaml") as cassette:
        _agent(BudgetMiddleware(role="researcher", guard=guard), chat).invoke(ASK)
    assert cassette.play_count == 2
    assert spent(guard, "role:researcher") == Decimal("0.0000426")
    assert [(r.outcome, r.metadata.get("shadow_blocked")) for r in guard.ledger.records()] == [
        ("settled", "role:researcher|day")] * 2
    guard.close()
