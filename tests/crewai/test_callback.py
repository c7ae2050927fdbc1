"""BudgetCallback on real crews: plain-LLM agents, charge once, stricter wins,
hierarchical managers, async kickoffs, the summary.

Prices: gpt-4o-mini at $0.15/M input and $0.60/M output (litellm's map, pinned
in test_llm.py). Cassette usage and the resulting dollars:

    pair_crew      researcher  84 in, 23 out  0.0000126 + 0.0000138 = 0.0000264
                   writer     117 in, 12 out  0.00001755 + 0.0000072 = 0.00002475
    hierarchical   manager    582 in, 48 out  0.0000873 + 0.0000288 = 0.0001161
                   researcher 131 in, 23 out  0.00001965 + 0.0000138 = 0.00003345
                   manager    701 in, 23 out  0.00010515 + 0.0000138 = 0.00011895
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from crewai import LLM

from crew_budget.crewai import BudgetCallback, BudgetLLM, CrewBudgetExceeded
from tests.crewai.conftest import GPT_4O_MINI, openai_cost
from tests.crewai.replay import cassette_usage, live_bodies, replay
from tests.crewai.scenarios import hierarchical_crew, pair_crew

RESEARCHER = Decimal("0.0000264")
WRITER = Decimal("0.00002475")


def yaml_config(**roles: Any) -> dict[str, Any]:
    return {
        "crew": {"name": "pair", "daily": 1},
        "roles": {name: {"max_output_tokens": 200, **limits} for name, limits in roles.items()},
    }


def spent(budget: BudgetCallback) -> dict[str, Decimal]:
    out = {}
    for s in budget.status():
        assert s.reserved == 0, f"{s.scope} has an open reservation"
        out[s.scope] = s.spent
    return out


def test_cassette_dollars_match_the_docstring() -> None:
    usage = cassette_usage("pair_crew")
    assert [openai_cost(u, GPT_4O_MINI) for u in usage if u] == [RESEARCHER, WRITER]
    hier = [openai_cost(u, GPT_4O_MINI) for u in cassette_usage("hierarchical") if u]
    assert hier == [Decimal("0.0001161"), Decimal("0.00003345"), Decimal("0.00011895")]


def test_plain_llm_agent_is_blocked_before_any_http() -> None:
    budget = BudgetCallback(yaml_config(researcher={"daily": 1}, writer={"daily": "0.00003"}),
                            "memory://")
    plain = LLM(model="gpt-4o-mini")
    crew = budget.attach(pair_crew(plain, LLM(model="gpt-4o-mini")))
    assert crew.agents[0].llm is plain and type(plain).__name__ == "OpenAICompletion"

    with replay("pair_crew") as cas, pytest.raises(CrewBudgetExceeded) as info:
        crew.kickoff()
    # The researcher's call went out; the writer's (needs > $0.00003) never did.
    assert cas.play_count == 1
    assert live_bodies(cas)[0]["max_completion_tokens"] == 200
    assert (info.value.role, info.value.scope, info.value.limit) == (
        "writer", "role:writer", Decimal("0.00003"))
    assert spent(budget) == {"role:researcher": RESEARCHER, "role:writer": 0,
                             "crew:pair": RESEARCHER}
    assert [(r.role, r.outcome) for r in budget.guard.ledger.records()] == [
        ("researcher", "settled"), ("writer", "blocked")]


def test_flat_crew_limit_spans_agents() -> None:
    # No dollar limit per role; the crew's $0.00015 admits the researcher's call
    # (reserved: ~84 prompt tokens + 200 output = ~$0.00013) but not the writer's
    # after it ($0.0000264 spent + ~$0.00014 reserved).
    config = {"crew": {"name": "pair", "daily": "0.00015"},
              "roles": {"researcher": {"max_output_tokens": 200},
                        "writer": {"max_output_tokens": 200}}}
    budget = BudgetCallback(config, "memory://")
    crew = budget.attach(pair_crew(LLM(model="gpt-4o-mini"), LLM(model="gpt-4o-mini")))
    with replay("pair_crew") as cas, pytest.raises(CrewBudgetExceeded) as info:
        crew.kickoff()
    assert cas.play_count == 1
    assert (info.value.role, info.value.scope) == ("writer", "crew:pair")
    assert spent(budget) == {"crew:pair": RESEARCHER}


def test_budget_llm_under_a_callback_is_charged_once(tmp_path: Path) -> None:
    researcher_llm = BudgetLLM(role="researcher", daily_usd=5, model="gpt-4o-mini")
    budget = BudgetCallback(yaml_config(researcher={"daily": 2}, writer={"daily": 2}),
                            "memory://")
    crew = budget.attach(pair_crew(researcher_llm, LLM(model="gpt-4o-mini")))
    assert crew.agents[0].llm is researcher_llm  # kept, not wrapped twice
    assert researcher_llm.guard is budget.guard

    with replay("pair_crew") as cas:
        result = crew.kickoff()
    assert result.raw == "Cheaper Cells Ahead: Sodium Steps In for Lithium"
    assert cas.play_count == 2
    # One reservation per call: role and crew each hold the call's cost once.
    assert spent(budget) == {"role:researcher": RESEARCHER, "role:writer": WRITER,
                             "crew:pair": RESEARCHER + WRITER}
    assert [r.outcome for r in budget.guard.ledger.records()] == ["settled", "settled"]
    # The BudgetLLM's own (default, SQLite) guard was never even opened.
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    ("yaml_daily", "inline_daily", "expected_limit"),
    [("1", "0.00001", Decimal("0.00001")),   # inline is stricter
     ("0.00001", "5", Decimal("0.00001"))],  # YAML is stricter
)
def test_stricter_limit_wins(yaml_daily: str, inline_daily: str, expected_limit: Decimal) -> None:
    budget = BudgetCallback(yaml_config(researcher={"daily": yaml_daily}, writer={}), "memory://")
    researcher_llm = BudgetLLM(role="researcher", daily_usd=inline_daily, model="gpt-4o-mini")
    crew = budget.attach(pair_crew(researcher_llm, LLM(model="gpt-4o-mini")))
    with replay("pair_crew") as cas, pytest.raises(CrewBudgetExceeded) as info:
        crew.kickoff()
    assert cas.play_count == 0
    assert (info.value.role, info.value.limit) == ("researcher", expected_limit)
    assert budget.guard.config.roles["researcher"].daily == expected_limit


def test_hierarchical_manager_is_budgeted_under_its_role() -> None:
    config = {"roles": {"Crew Manager": {"daily": 1, "max_output_tokens": 300},
                        "researcher": {"daily": 1, "max_output_tokens": 200}}}
    budget = BudgetCallback(config, "memory://")
    crew = budget.attach(hierarchical_crew(LLM(model="gpt-4o-mini"), LLM(model="gpt-4o-mini")))
    with replay("hierarchical") as cas:
        result = crew.kickoff()
    assert result.raw.startswith("Sodium-ion batteries use abundant sodium")
    assert cas.play_count == 3
    # Manager, delegated researcher, manager again, each with its own role's cap.
    assert [b["max_completion_tokens"] for b in live_bodies(cas)] == [300, 200, 300]
    assert spent(budget) == {
        "role:Crew Manager": Decimal("0.0001161") + Decimal("0.00011895"),
        "role:researcher": Decimal("0.00003345"),
    }


async def test_kickoff_async() -> None:
    budget = BudgetCallback(yaml_config(researcher={"daily": 1}, writer={"daily": 1}),
                            "memory://")
    crew = budget.attach(pair_crew(LLM(model="gpt-4o-mini"), LLM(model="gpt-4o-mini")))
    with replay("pair_crew") as cas:
        result = await crew.kickoff_async()
    assert result.raw == "Cheaper Cells Ahead: Sodium Steps In for Lithium"
    assert cas.play_count == 2
    assert spent(budget)["crew:pair"] == RESEARCHER + WRITER


async def test_native_async_kickoff_uses_acall() -> None:
    budget = BudgetCallback(yaml_config(researcher={"daily": 1}, writer={"daily": 1}),
                            "memory://")
    crew = budget.attach(pair_crew(LLM(model="gpt-4o-mini"), LLM(model="gpt-4o-mini")))
    with replay("pair_crew") as cas:
        result = await crew.akickoff()
    assert result.raw == "Cheaper Cells Ahead: Sodium Steps In for Lithium"
    assert cas.play_count == 2
    assert spent(budget) == {"role:researcher": RESEARCHER, "role:writer": WRITER,
                             "crew:pair": RESEARCHER + WRITER}


def test_summary_by_role_and_model() -> None:
    budget = BudgetCallback(yaml_config(researcher={"daily": 1}, writer={"daily": 1}),
                            "memory://")
    crew = budget.attach(pair_crew(LLM(model="gpt-4o-mini"), LLM(model="gpt-4o-mini")))
    with replay("pair_crew"):
        crew.kickoff()
    summary = budget.summary()
    assert summary.crew == "pair"
    assert [(r.role, r.model, r.calls, r.input_tokens, r.output_tokens, r.cost)
            for r in summary.run] == [
        ("researcher", "gpt-4o-mini", 1, 84, 23, RESEARCHER),
        ("writer", "gpt-4o-mini", 1, 117, 12, WRITER),
    ]
    assert summary.today == summary.run
    assert summary.total() == RESEARCHER + WRITER
    assert summary.by_role() == {"researcher": RESEARCHER, "writer": WRITER}
    text = str(summary)
    assert "researcher" in text and "0.00005115" in text


def test_detach_restores_the_crew() -> None:
    budget = BudgetCallback(yaml_config(researcher={"daily": 1}), "memory://")
    plain = LLM(model="gpt-4o-mini")
    inline = BudgetLLM(role="writer", daily_usd=1, model="gpt-4o-mini", ledger="memory://")
    crew = budget.attach(pair_crew(plain, inline))
    assert inline.guard is budget.guard
    budget.detach()
    assert crew.agents[0].llm is plain
    assert crew.agents[1].llm is inline and inline.guard is not budget.guard
    assert crew.before_kickoff_callbacks == []
    # Detached: the plain agent's call is no longer reserved by this callback.
    with replay("pair_crew") as cas:
        crew.kickoff()
    assert cas.play_count == 2
    assert [r.role for r in budget.guard.ledger.records()] == []


def test_default_ledger_and_env_override(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text("roles:\n  researcher: {daily: 1}\n", encoding="utf-8")
    budget = BudgetCallback.from_yaml(path)
    default = tmp_path / "state" / "crew-budget" / "ledger.db"  # XDG_STATE_HOME (conftest)
    assert budget.guard.ledger.url == f"sqlite:///{default}"
    monkeypatch.setenv("CREW_BUDGET_LEDGER", f"sqlite:///{tmp_path / 'env.db'}")
    assert BudgetCallback.from_yaml(path).guard.ledger.url.endswith("env.db")
