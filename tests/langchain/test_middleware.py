"""BudgetMiddleware on real LangChain v1 agents (create_agent), HTTP replayed by VCR.py."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ExtendedModelResponse
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.types import Command

from crew_budget import BudgetExceeded, ConfigError, Guard
from crew_budget.langchain import BudgetCallbackHandler, BudgetMiddleware
from tests.fixtures.http_replay import live_bodies, recorded_usage, replay
from tests.langchain.conftest import LC, cost, outcomes, reserved, spent

SYSTEM = "You are a concise travel assistant."
ASK = {"messages": [{"role": "user", "content": "What is the weather in Lisbon?"}]}


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return "18C and sunny"


def model(**kwargs: Any) -> ChatOpenAI:
    # No max_tokens: the middleware must add the role's cap (256) to the request.
    return ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", max_retries=0, **kwargs)


def agent(mw: BudgetMiddleware, **kwargs: Any) -> Any:
    return create_agent(model(**kwargs), [get_weather], system_prompt=SYSTEM, middleware=[mw])


def sent_cap(body: dict[str, Any]) -> Any:
    return body.get("max_completion_tokens", body.get("max_tokens"))


def test_agent_run_settles_every_model_call_and_injects_max_tokens(guard: Guard) -> None:
    mw = BudgetMiddleware(role="researcher", guard=guard)
    with replay(LC / "agent_tools.yaml") as cassette:
        result = agent(mw).invoke(ASK)
    assert result["messages"][-1].content == "It is 18C and sunny in Lisbon."
    assert any(isinstance(m, ToolMessage) for m in result["messages"])
    assert cassette.play_count == 2
    # The request had no output cap, so the reserved one went over the wire.
    assert [sent_cap(b) for b in live_bodies(cassette)] == [256, 256]
    usages = recorded_usage(LC / "agent_tools.yaml")
    # (72 x 0.15 + 15 x 0.60 + 104 x 0.15 + 12 x 0.60) / 1M
    assert cost(usages[0]) + cost(usages[1]) == Decimal("0.0000426")
    assert spent(guard, "role:researcher") == Decimal("0.0000426")
    assert outcomes(guard) == ["settled", "settled"]


async def test_async_agent_run_settles_every_model_call(guard: Guard) -> None:
    mw = BudgetMiddleware(role="researcher", guard=guard)
    with replay(LC / "agent_tools.yaml") as cassette:
        result = await agent(mw).ainvoke(ASK)
    assert result["messages"][-1].content == "It is 18C and sunny in Lisbon."
    assert cassette.play_count == 2
    assert spent(guard, "role:researcher") == Decimal("0.0000426")
    assert reserved(guard, "role:researcher") == 0


def test_streaming_agent_settles_from_the_final_usage_chunk(guard: Guard) -> None:
    mw = BudgetMiddleware(role="researcher", guard=guard)
    runner = create_agent(model(streaming=True, stream_usage=True), [], system_prompt=SYSTEM,
                          middleware=[mw])
    ask = {"messages": [{"role": "user", "content": "Suggest one museum in Lisbon."}]}
    with replay(LC / "agent_stream.yaml") as cassette:
        chunks = [c for c, _ in runner.stream(ask, stream_mode="messages")]
    assert "".join(str(c.content) for c in chunks if isinstance(c, AIMessage)) \
        .endswith("The Gulbenkian Museum.")
    assert cassette.play_count == 1
    assert live_bodies(cassette)[0]["stream_options"] == {"include_usage": True}
    assert spent(guard, "role:researcher") == cost(recorded_usage(LC / "agent_stream.yaml")[0])


async def test_async_streaming_agent_settles_from_the_final_usage_chunk(guard: Guard) -> None:
    mw = BudgetMiddleware(role="researcher", guard=guard)
    runner = create_agent(model(streaming=True, stream_usage=True), [], system_prompt=SYSTEM,
                          middleware=[mw])
    ask = {"messages": [{"role": "user", "content": "Suggest one museum in Lisbon."}]}
    with replay(LC / "agent_stream.yaml") as cassette:
        chunks = [c async for c, _ in runner.astream(ask, stream_mode="messages")]
    assert "".join(str(c.content) for c in chunks if isinstance(c, AIMessage)) \
        .endswith("The Gulbenkian Museum.")
    assert cassette.play_count == 1
    assert spent(guard, "role:researcher") == cost(recorded_usage(LC / "agent_stream.yaml")[0])
    assert outcomes(guard) == ["settled"]


def test_exit_end_stops_the_agent_with_a_message_and_no_http(guard: Guard) -> None:
    mw = BudgetMiddleware(role="broke", guard=guard, exit_behavior="end")
    with replay(LC / "agent_tools.yaml") as cassette:
        result = agent(mw).invoke(ASK)
    assert cassette.play_count == 0
    last = result["messages"][-1]
    assert isinstance(last, AIMessage) and not last.tool_calls
    assert "budget exceeded for role 'broke'" in str(last.content)
    facts = last.response_metadata["crew_budget"]
    assert facts["blocked"] is True and facts["scope"] == "role:broke"
    assert facts["limit"] == "0.000001"
    assert outcomes(guard) == ["blocked"]


async def test_exit_error_raises_budget_exceeded_and_no_http(guard: Guard) -> None:
    mw = BudgetMiddleware(role="broke", guard=guard, exit_behavior="error")
    with replay(LC / "agent_tools.yaml") as cassette, pytest.raises(BudgetExceeded) as info:
        await agent(mw).ainvoke(ASK)
    assert cassette.play_count == 0
    assert info.value.role == "broke"
    assert outcomes(guard) == ["blocked"]


def test_agent_stopped_mid_run_when_the_budget_runs_out(guard: Guard) -> None:
    first = cost(recorded_usage(LC / "agent_tools.yaml")[0])
    mw = BudgetMiddleware(role="researcher", guard=guard, exit_behavior="end")

    @tool
    def tighten(city: str) -> str:
        """Current weather for a city."""
        # Runs between the two model calls: the role now has one micro-dollar
        # left, and the second call reserves at least 256 x $0.60/M.
        guard.limit_role("researcher", daily_usd=first + Decimal("0.000001"))
        return "18C and sunny"

    tighten.name = "get_weather"
    runner = create_agent(model(), [tighten], system_prompt=SYSTEM, middleware=[mw])
    with replay(LC / "agent_tools.yaml") as cassette:
        result = runner.invoke(ASK)
    assert cassette.play_count == 1
    assert "Stopped by crew-budget" in str(result["messages"][-1].content)
    assert spent(guard, "role:researcher") == first
    assert outcomes(guard) == ["settled", "blocked"]


def test_handler_on_the_same_model_does_not_reserve_twice(guard: Guard) -> None:
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    mw = BudgetMiddleware(role="researcher", guard=guard)
    runner = create_agent(model(callbacks=[handler]), [get_weather], system_prompt=SYSTEM,
                          middleware=[mw])
    with replay(LC / "agent_tools.yaml") as cassette:
        runner.invoke(ASK)
    assert cassette.play_count == 2
    assert outcomes(guard) == ["settled", "settled"]  # one record per HTTP request
    assert spent(guard, "role:researcher") == Decimal("0.0000426")
    assert handler.in_flight == 0


def test_role_from_the_runtime_context(guard: Guard) -> None:
    mw = BudgetMiddleware(guard=guard)
    runner = create_agent(model(), [get_weather], system_prompt=SYSTEM, middleware=[mw],
                          context_schema=dict)
    with replay(LC / "agent_tools.yaml"):
        runner.invoke(ASK, context={"crew_budget_role": "writer"})
    assert spent(guard, "role:writer") == Decimal("0.0000426")
    with pytest.raises(ConfigError, match="exit_behavior"):
        BudgetMiddleware(role="x", guard=guard, exit_behavior="stop")  # type: ignore[arg-type]


class Annotating(AgentMiddleware):  # type: ignore[type-arg]
    """An inner middleware that returns a model response plus a state Command."""

    def wrap_model_call(self, request: Any, handler: Any) -> Any:
        return ExtendedModelResponse(model_response=handler(request),
                                     command=Command(update={"messages": []}))


def test_inner_middleware_returning_a_command_is_still_settled_exactly(guard: Guard) -> None:
    mw = BudgetMiddleware(role="researcher", guard=guard)
    runner = create_agent(model(), [get_weather], system_prompt=SYSTEM,
                          middleware=[mw, Annotating()])
    with replay(LC / "agent_tools.yaml") as cassette:
        result = runner.invoke(ASK)
    assert result["messages"][-1].content == "It is 18C and sunny in Lisbon."
    assert cassette.play_count == 2
    assert spent(guard, "role:researcher") == Decimal("0.0000426")
