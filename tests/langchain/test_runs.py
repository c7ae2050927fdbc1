"""Runs, per-model budgets and task attribution on real langchain-openai models.

HTTP is replayed from ``cassettes/langchain/chat.yaml`` (Paris, then Lisbon);
expected dollars are the recorded usage times the gpt-4o-mini list price
(conftest), and every block is proven by the number of requests sent.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from langchain_openai import ChatOpenAI

from crew_budget import BudgetExceeded, Guard
from crew_budget.langchain import BudgetCallbackHandler
from crew_budget.report import build_report
from crew_budget.runs import run
from tests.fixtures.http_replay import recorded_usage, replay
from tests.langchain.conftest import LC, cost

Q_FR = "Name the capital of France in one word."
Q_PT = "Name the capital of Portugal in one word."
USAGE = recorded_usage(LC / "chat.yaml")
PARIS, LISBON = cost(USAGE[0]), cost(USAGE[1])


def chat(handler: BudgetCallbackHandler) -> ChatOpenAI:
    return ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", max_tokens=64, max_retries=0,
                      callbacks=[handler])


def reservation(guard: Guard) -> Decimal:
    """What one of these calls reserves (16 prompt tokens + 64 output at list price)."""
    amount = guard.estimate("researcher", "gpt-4o-mini", [{"role": "user", "content": Q_FR}],
                            max_tokens=64).amount
    assert amount == guard.estimate("researcher", "gpt-4o-mini",
                                    [{"role": "user", "content": Q_PT}], max_tokens=64).amount
    return amount


def run_spent(guard: Guard, r: Any, scope: str = "run") -> Decimal:
    [row] = [s for s in r.status(guard) if s.scope == scope]
    assert row.reserved == 0
    return row.spent


def test_the_expected_dollars() -> None:
    assert (Decimal("0.0000036"), Decimal("0.0000042")) == (PARIS, LISBON)


def test_a_run_cap_stops_the_second_call_and_the_next_run_starts_fresh() -> None:
    guard = Guard({"roles": {"researcher": {"daily": 1}}}, "memory://")
    cap = reservation(guard)  # room for one call's reservation, not for a second after it
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    with replay(LC / "chat.yaml") as cassette:
        with run("lc-job", usd=cap) as first:
            assert chat(handler).invoke(Q_FR).content == "Paris."
            with pytest.raises(BudgetExceeded) as info:
                chat(handler).invoke(Q_PT)
            assert cassette.play_count == 1  # blocked before its HTTP request
        assert (info.value.scope, info.value.period, info.value.spent) == (
            "run", first.run_id, PARIS)
        with run("lc-job", usd=cap) as second:
            assert chat(handler).invoke(Q_PT).content == "Lisbon."
        assert cassette.play_count == 2
    assert run_spent(guard, first) == PARIS and run_spent(guard, second) == LISBON
    report = build_report(guard.ledger.records(), ["run"], sort="key")
    assert sorted((row.key[0], row.calls, row.blocked, row.cost) for row in report.rows) == \
        sorted([(first.run_id, 1, 1, PARIS), (second.run_id, 1, 0, LISBON)])


async def test_two_concurrent_runs_of_the_same_code_are_separate_budgets() -> None:
    guard = Guard({"roles": {"researcher": {"daily": 1}},
                   "crew": {"name": "lc", "per_run": str(reservation(
                       Guard({"roles": {"researcher": {}}}, "memory://")))}}, "memory://")
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    started = asyncio.Event()

    async def job(question: str) -> tuple[str, str]:
        with run("same-code") as r:
            if question == Q_PT:
                await started.wait()  # after the other run has reserved and settled
            answer = await chat(handler).ainvoke(question)
            started.set()
            return r.run_id, str(answer.content)

    with replay(LC / "chat.yaml") as cassette:
        done = await asyncio.gather(job(Q_FR), job(Q_PT))
    # One shared $cap budget would have refused the second call.
    assert [a for _, a in done] == ["Paris.", "Lisbon."]
    assert cassette.play_count == 2
    spent = {rec.metadata["run"]: rec.cost_nano for rec in guard.ledger.records()}
    assert spent == {done[0][0]: 3600, done[1][0]: 4200}


def test_a_model_budget_spans_roles() -> None:
    # gpt-4o-mini may spend one call's reservation across all roles today.
    probe = Guard({"roles": {"researcher": {}}}, "memory://")
    guard = Guard({"roles": {"researcher": {}, "writer": {}},
                   "models": {"gpt-4o-mini": {"daily": str(reservation(probe))}}}, "memory://")
    with replay(LC / "chat.yaml") as cassette:
        assert chat(BudgetCallbackHandler(role="researcher", guard=guard)).invoke(
            Q_FR).content == "Paris."
        with pytest.raises(BudgetExceeded) as info:
            chat(BudgetCallbackHandler(role="writer", guard=guard)).invoke(Q_PT)
    assert cassette.play_count == 1
    assert (info.value.role, info.value.scope, info.value.window, info.value.spent) == (
        "writer", "model:gpt-4o-mini", "day", PARIS)


def test_records_carry_run_name_tags_and_task_for_report_by_task() -> None:
    guard = Guard({"roles": {"researcher": {"daily": 1}}}, "memory://")
    model = chat(BudgetCallbackHandler(role="researcher", guard=guard))
    with replay(LC / "chat.yaml") as cassette:
        model.invoke(Q_FR, config={"run_name": "capital-fr", "tags": ["geo", "eu"]})
        model.invoke(Q_PT, config={"metadata": {"task": "capitals"}, "tags": ["geo"]})
    assert cassette.play_count == 2
    first, second = guard.ledger.records()
    assert (first.metadata["run_name"], first.metadata["tags"]) == ("capital-fr", ["geo", "eu"])
    assert "task" not in first.metadata
    assert (second.metadata["task"], second.metadata["tags"]) == ("capitals", ["geo"])
    report = build_report(guard.ledger.records(), ["task"], sort="key")
    assert [(row.key, row.calls, row.cost) for row in report.rows] == [
        (("capital-fr",), 1, PARIS), (("capitals",), 1, LISBON)]


def test_an_agent_run_with_middleware_is_one_run_with_its_tags_and_task() -> None:
    from langchain.agents import create_agent

    from crew_budget.langchain import BudgetMiddleware
    from tests.langchain.test_middleware import ASK, SYSTEM, get_weather

    guard = Guard({"roles": {"researcher": {"daily": 1}}}, "memory://")
    agent = create_agent(ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", max_retries=0),
                         [get_weather], system_prompt=SYSTEM,
                         middleware=[BudgetMiddleware(role="researcher", guard=guard)])
    with replay(LC / "agent_tools.yaml") as cassette, run("weather") as r:
        result = agent.invoke(ASK, config={"tags": ["travel"], "metadata": {"task": "weather"}})
    assert result["messages"][-1].content == "It is 18C and sunny in Lisbon."
    assert cassette.play_count == 2
    records = guard.ledger.records()
    assert [(x.outcome, x.metadata["run"], x.metadata["task"], "travel" in x.metadata["tags"])
            for x in records] == [("settled", r.run_id, "weather", True)] * 2
    usages = recorded_usage(LC / "agent_tools.yaml")
    assert run_spent(guard, r) == cost(usages[0]) + cost(usages[1]) == Decimal("0.0000426")
    report = build_report(records, ["run", "task"])
    assert [(row.key, row.calls, row.cost) for row in report.rows] == [
        ((r.run_id, "weather"), 2, Decimal("0.0000426"))]
