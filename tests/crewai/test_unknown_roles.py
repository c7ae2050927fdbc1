"""Unknown roles in a real CrewAI crew: refused at ``attach`` or natively at call time.

HTTP is replayed from the cassettes; ``play_count`` is the number of requests
that went out. Dollars are the pair_crew cassette's usage at gpt-4o-mini's
prices (see test_callback.py): researcher $0.0000264, writer $0.00002475.
"""

from __future__ import annotations

import pickle
from decimal import Decimal
from typing import Any

import pytest
from crewai import LLM, Agent, Crew, Task
from crewai.hooks.dispatch import HookAborted

from crew_budget import BudgetConfig, ConfigError, UnknownRoleError
from crew_budget.crewai import BudgetCallback, BudgetLLM, CrewUnknownRole
from tests.crewai.replay import replay
from tests.crewai.scenarios import hierarchical_crew, loop_crew, pair_crew

RESEARCHER = Decimal("0.0000264")
WRITER = Decimal("0.00002475")


def titled_crew(researcher_role: str, writer_role: str) -> Crew:
    """pair_crew with the roles people actually write in CrewAI."""
    researcher = Agent(role=researcher_role, goal="Give one sourced fact",
                       backstory="You answer from memory in one sentence.",
                       llm=LLM(model="gpt-4o-mini"))
    writer = Agent(role=writer_role, goal="Turn a fact into one headline",
                   backstory="You write short headlines.", llm=LLM(model="gpt-4o-mini"))
    return Crew(agents=[researcher, writer], tasks=[
        Task(description="State one fact about sodium-ion batteries.",
             expected_output="One sentence", agent=researcher),
        Task(description="Write a headline from the fact.", expected_output="One headline",
             agent=writer)])


def test_attach_lists_every_unmatched_role_before_any_request() -> None:
    config = {"roles": {"researcher": {"daily": 1}, "editor": {"daily": 1}}}
    budget = BudgetCallback(config, "memory://")
    crew = titled_crew("Senior Researcher", "writer")
    plain = crew.agents[0].llm
    with replay("pair_crew") as cas:
        with pytest.raises(CrewUnknownRole) as info:
            budget.attach(crew)
        assert cas.play_count == 0
    err = info.value
    assert isinstance(err, UnknownRoleError) and isinstance(err, HookAborted)
    assert err.unmatched == ("Senior Researcher", "writer")
    assert str(err) == (
        "this crew has agent roles that match no budget under roles: 'Senior Researcher' "
        "(closest: 'researcher'), 'writer'; configured roles: researcher, "
        "editor. Nothing was attached and no call was sent. Roles match exactly, or ignoring "
        "case and extra whitespace. Fix: rename the agent's role, add it as an alias, e.g. "
        "`researcher: {aliases: ['Senior Researcher']}`, set default_role: to budget every "
        "role not listed, or set unknown_roles: allow to charge them to the crew and global "
        "budgets only.")
    assert crew.agents[0].llm is plain  # nothing was swapped
    assert budget.guard.ledger.records() == []
    clone = pickle.loads(pickle.dumps(err))
    assert (type(clone), clone.unmatched, str(clone)) == (CrewUnknownRole, err.unmatched, str(err))


def test_attach_checks_the_managers_role_too() -> None:
    budget = BudgetCallback({"roles": {"researcher": {"daily": 1}}}, "memory://")
    with pytest.raises(CrewUnknownRole) as info:
        budget.attach(hierarchical_crew(LLM(model="gpt-4o-mini"), LLM(model="gpt-4o-mini")))
    assert info.value.unmatched == ("Crew Manager",)


def test_aliases_budget_crewai_role_titles_under_the_yaml_names() -> None:
    config = {"crew": {"name": "pair", "daily": 1},
              "roles": {"researcher": {"daily": 1, "aliases": ["Senior Researcher"]},
                        "writer": {"daily": 1, "max_output_tokens": 200}}}
    budget = BudgetCallback(config, "memory://")
    crew = budget.attach(titled_crew("Senior Researcher", "  WRITER "))
    with replay("pair_crew") as cas:
        result = crew.kickoff()
    assert result.raw == "Cheaper Cells Ahead: Sodium Steps In for Lithium"
    assert cas.play_count == 2
    assert {s.scope: s.spent for s in budget.status()} == {
        "role:researcher": RESEARCHER, "role:writer": WRITER, "crew:pair": RESEARCHER + WRITER}
    assert [(r.role, r.metadata["requested_role"]) for r in budget.guard.ledger.records()] == [
        ("researcher", "Senior Researcher"), ("writer", "  WRITER ")]


def test_default_role_lets_attach_through_and_shares_one_budget() -> None:
    config = {"roles": {"editor": {"daily": 1}}, "default_role": {"daily": 1}}
    budget = BudgetCallback(config, "memory://")
    crew = budget.attach(pair_crew(LLM(model="gpt-4o-mini"), LLM(model="gpt-4o-mini")))
    with replay("pair_crew") as cas:
        crew.kickoff()
    assert cas.play_count == 2
    assert {s.scope: s.spent for s in budget.status()} == {
        "role:editor": 0, "role:default_role": RESEARCHER + WRITER}


def test_unknown_role_at_call_time_is_a_native_stop_with_no_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: list[Any] = []
    resolve = BudgetConfig.resolve_role

    def counting(self: BudgetConfig, name: object) -> str:
        attempts.append(name)
        return resolve(self, name)

    monkeypatch.setattr(BudgetConfig, "resolve_role", counting)
    llm = BudgetLLM(role="reseacher", model="gpt-4o-mini",
                    config={"roles": {"researcher": {"daily": 1, "max_output_tokens": 256}}},
                    ledger="memory://")
    with replay("researcher_loop") as cas, pytest.raises(CrewUnknownRole) as info:
        loop_crew(llm).kickoff()
    assert cas.play_count == 0
    assert attempts == ["reseacher"]  # CrewAI would retry anything else 3 times
    assert (info.value.role, info.value.suggestion) == ("reseacher", "researcher")
    assert llm.guard.ledger.records() == []


def test_inline_limits_are_bounded_when_the_llm_is_built() -> None:
    with pytest.raises(ConfigError) as info:
        BudgetLLM(role="researcher", daily_usd=2_000_000, model="gpt-4o-mini")
    assert str(info.value).startswith(
        "limits set in code: researcher: daily_usd: budget 2000000 is above the maximum of "
        "$1,000,000;")
    with pytest.raises(ConfigError, match="max_output_tokens must be a whole number from 1 to "
                                          "1,000,000, got 5000000"):
        BudgetLLM(role="researcher", max_output_tokens=5_000_000, model="gpt-4o-mini")
