"""On-exceed policies with the real CrewAI (issue 12 part 5): downgrade, end_task, shadow.

HTTP is replayed from ``cassettes/crewai``; ``cas.play_count`` is the number
of requests CrewAI sent and ``live_bodies`` what each one carried. Dollars
are the cassette's ``usage`` times litellm's gpt-4o-mini price (see
``conftest.GPT_4O_MINI``), never crew-budget's own estimate.

``end_task_pair.yaml`` is hand-written: the writer's request as CrewAI 1.15
sends it after the researcher's task ended with the budget answer, and a
headline reply whose usage was counted with tiktoken's ``o200k_base`` (177
prompt tokens: the two messages plus 3 per message and 3 priming, as OpenAI
bills gpt-4o-mini chat; 13 completion tokens).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from crewai import LLM

from crew_budget.crewai import BudgetCallback, BudgetLLM, CrewBudgetExceeded
from tests.crewai.conftest import GPT_4O_MINI, openai_cost
from tests.crewai.replay import cassette_usage, live_bodies, replay
from tests.crewai.scenarios import loop_crew, pair_crew

# The stop test's arithmetic (tests/crewai/test_stop.py): at gpt-4o-mini, a
# $0.00064 day fits calls 1-4 of the loop and refuses call 5. At gpt-4o
# (16x the price) not even call 1 fits: 194 prompt tokens + 256 reserved
# output cost about $0.003.
LOOP_LIMIT = "0.00064"
FOUR_CALLS = Decimal("0.00040665")  # test_stop.py prices the cassette's usage by hand


def _downgrade_config(**extra: Any) -> dict[str, Any]:
    return {"roles": {"researcher": {"daily": LOOP_LIMIT, "max_output_tokens": 256,
                                     "on_exceed": {"downgrade": ["gpt-4o-mini"]}, **extra}}}


@pytest.mark.parametrize("path", ["budget_llm", "callback"])
def test_downgrade_sends_each_call_to_the_cheaper_model(path: str) -> None:
    if path == "budget_llm":
        llm: Any = BudgetLLM(role="researcher", model="gpt-4o", config=_downgrade_config(),
                             ledger="memory://")
        crew = loop_crew(llm)
        guard = llm.guard
        user_llm = llm.inner
    else:
        user_llm = LLM(model="gpt-4o")
        budget = BudgetCallback(config=_downgrade_config(), ledger="memory://")
        crew = budget.attach(loop_crew(user_llm))
        guard = budget.guard
    with replay("researcher_loop") as cas, pytest.raises(CrewBudgetExceeded) as info:
        crew.kickoff()

    # Four requests went out, every one of them to gpt-4o-mini, none to gpt-4o.
    assert cas.play_count == 4
    assert [b["model"] for b in live_bodies(cas)] == ["gpt-4o-mini"] * 4
    assert user_llm.model == "gpt-4o"  # the user's LLM is restored after each call
    expected = sum((openai_cost(u, GPT_4O_MINI) for u in cassette_usage("researcher_loop")[:4]
                    if u), Decimal(0))
    assert expected == FOUR_CALLS
    (day,) = guard.status("researcher")
    assert (day.spent, day.reserved) == (FOUR_CALLS, 0)
    records = sorted(guard.ledger.records(), key=lambda r: r.ts)
    assert [(r.outcome, r.model) for r in records] == (
        [("blocked", "gpt-4o"), ("settled", "gpt-4o-mini")] * 4
        + [("blocked", "gpt-4o"), ("blocked", "gpt-4o-mini")])
    assert all(r.metadata["downgraded_from"] == "gpt-4o" for r in records
               if r.outcome == "settled")
    # When not even gpt-4o-mini fits, the usual stop: the refusal names gpt-4o.
    assert (info.value.role, info.value.model, info.value.spent) == (
        "researcher", "gpt-4o", FOUR_CALLS)


@pytest.mark.parametrize("path", ["budget_llm", "callback"])
def test_end_task_ends_the_researchers_task_and_the_writer_still_runs(path: str) -> None:
    config = {"roles": {"researcher": {"daily": 0, "on_exceed": "end_task"},
                        "writer": {"daily": 1}}}
    budget = BudgetCallback(config=config, ledger="memory://")
    researcher_llm: Any = (BudgetLLM(role="researcher", model="gpt-4o-mini")
                           if path == "budget_llm" else LLM(model="gpt-4o-mini"))
    crew = budget.attach(pair_crew(researcher_llm, LLM(model="gpt-4o-mini")))
    with replay("end_task_pair") as cas:
        out = crew.kickoff()

    # One request: the writer's. The researcher's call was never sent.
    assert cas.play_count == 1
    (body,) = live_bodies(cas)
    assert body["messages"][0]["content"].startswith("You are writer.")
    # The researcher's task output is the budget answer, handed to the writer as context.
    research, headline = (t.raw for t in out.tasks_output)
    assert research.startswith("Budget exhausted for role 'researcher': this task ended "
                               "early, without a complete answer (on_exceed: end_task). "
                               "budget exceeded for role 'researcher': role:researcher day "
                               "budget $0.00")
    assert "Budget exhausted for role 'researcher'" in body["messages"][1]["content"]
    assert headline == "Research Pending: Sodium-Ion Battery Facts Held Back by Budget Limits"
    # Dollars: the writer's call only, 177 x $0.15/M + 13 x $0.60/M.
    (usage,) = cassette_usage("end_task_pair")
    assert usage is not None
    assert openai_cost(usage, GPT_4O_MINI) == Decimal("0.00003435")
    status = {s.scope: s for s in budget.guard.status()}
    assert status["role:writer"].spent == Decimal("0.00003435")
    assert status["role:researcher"].spent == 0
    outcomes = [(r.outcome, r.role) for r in sorted(budget.guard.ledger.records(),
                                                     key=lambda r: r.ts)]
    assert outcomes == [("blocked", "researcher"), ("settled", "writer")]


def test_without_end_task_the_same_crew_stops_and_the_writer_never_runs() -> None:
    budget = BudgetCallback(config={"roles": {"researcher": {"daily": 0},
                                              "writer": {"daily": 1}}}, ledger="memory://")
    crew = budget.attach(pair_crew(LLM(model="gpt-4o-mini"), LLM(model="gpt-4o-mini")))
    with replay("end_task_pair") as cas, pytest.raises(CrewBudgetExceeded):
        crew.kickoff()
    assert cas.play_count == 0


def test_shadow_mode_lets_the_looping_agent_through_and_flags_what_it_would_block() -> None:
    # The stop test's crew and limit, in shadow mode: nothing is blocked, so
    # the loop runs until the cassette's 8 scripted answers are used up.
    llm = BudgetLLM(role="researcher", model="gpt-4o-mini", ledger="memory://", config={
        "mode": "shadow", "roles": {"researcher": {"daily": LOOP_LIMIT,
                                                   "max_output_tokens": 256}}})
    events: list[str] = []
    llm.guard.add_listener(lambda e: events.append(e.outcome))
    with replay("researcher_loop") as cas, pytest.raises(Exception) as info:
        loop_crew(llm).kickoff()
    assert not isinstance(info.value, CrewBudgetExceeded)  # the cassette ran out, not money
    assert cas.play_count == 8
    usages = cassette_usage("researcher_loop")
    total = sum((openai_cost(u, GPT_4O_MINI) for u in usages if u), Decimal(0))
    (day,) = llm.guard.status("researcher")
    assert (day.spent, day.reserved) == (total, 0)
    assert total > Decimal(LOOP_LIMIT)
    records = sorted(llm.guard.ledger.records(), key=lambda r: r.ts)
    # The 9th call (3 attempts: CrewAI retries a connection error) found no
    # recorded answer: nothing was sent, so each was released at $0.
    assert [r.outcome for r in records] == ["settled"] * 8 + ["released"] * 3
    # Calls 5-8 are the ones the budget would have refused (see test_stop.py).
    assert [bool(r.metadata.get("shadow_blocked")) for r in records[:8]] == (
        [False] * 4 + [True] * 4)
    assert events.count("shadow_blocked") == 4 + 3
    assert events.count("blocked") == 0
