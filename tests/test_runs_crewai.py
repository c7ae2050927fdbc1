"""A CrewAI kickoff inside ``crew_budget.run``: per-run crew budgets on a real crew.

HTTP is replayed from ``cassettes/crewai/pair_crew.yaml`` (researcher, then
writer; gpt-4o-mini). Dollars (tests/crewai/test_callback.py pins them): the
researcher's call costs $0.0000264; with ``max_output_tokens: 200`` each call
reserves about $0.00013, so a $0.00015 crew budget admits the researcher's
call and refuses the writer's after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from crew_budget.report import build_report
from crew_budget.runs import run

RESEARCHER = Decimal("0.0000264")


@pytest.fixture(autouse=True)
def _dummy_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    yield


def budgets(**crew: Any) -> dict[str, Any]:
    return {"crew": {"name": "pair", **crew},
            "roles": {"researcher": {"max_output_tokens": 200},
                      "writer": {"max_output_tokens": 200}}}


def kickoff_in_a_run(budget: Any, crew_factory: Any, *, use_async: bool = False
                     ) -> tuple[Any, Any, int]:
    from crew_budget.crewai import CrewBudgetExceeded
    from tests.crewai.replay import replay

    crew = budget.attach(crew_factory())
    with replay("pair_crew") as cas, run("pair-kickoff") as r, \
            pytest.raises(CrewBudgetExceeded) as info:
        if use_async:
            asyncio.run(crew.kickoff_async())  # CrewAI runs kickoff in asyncio.to_thread
        else:
            crew.kickoff()
    return r, info.value, cas.play_count


@pytest.mark.parametrize("use_async", [False, True], ids=["kickoff", "kickoff_async"])
def test_a_per_run_crew_budget_resets_with_each_kickoff(use_async: bool) -> None:
    from crewai import LLM

    from crew_budget.crewai import BudgetCallback
    from tests.crewai.scenarios import pair_crew

    budget = BudgetCallback(budgets(per_run="0.00015", daily=1), "memory://")

    def factory() -> Any:
        return pair_crew(LLM(model="gpt-4o-mini"), LLM(model="gpt-4o-mini"))

    runs = []
    for _ in range(2):
        r, exc, requests = kickoff_in_a_run(budget, factory, use_async=use_async)
        # Each run: the researcher's request went out, the writer's never did.
        assert requests == 1
        assert (exc.role, exc.scope, exc.window, exc.period) == (
            "writer", "crew:pair", "run", r.run_id)
        assert exc.spent == RESEARCHER
        runs.append(r)
    for r in runs:
        assert {s.scope: s.spent for s in r.status(budget.guard)} == {
            "run": RESEARCHER, "crew:pair": RESEARCHER}
    [day] = [s for s in budget.guard.status() if s.scope == "crew:pair"]
    assert day.spent == 2 * RESEARCHER
    report = build_report(budget.guard.ledger.records(), ["run", "role"], sort="key")
    assert sorted((row.key, row.calls, row.blocked, row.cost) for row in report.rows) == sorted(
        [((r.run_id, "researcher"), 1, 0, RESEARCHER) for r in runs]
        + [((r.run_id, "writer"), 0, 1, Decimal(0)) for r in runs])


def test_the_same_limit_as_a_daily_budget_blocks_the_second_kickoff_at_once() -> None:
    from crewai import LLM

    from crew_budget.crewai import BudgetCallback, CrewBudgetExceeded
    from tests.crewai.replay import replay
    from tests.crewai.scenarios import pair_crew

    budget = BudgetCallback(budgets(daily="0.00015"), "memory://")
    _r, exc, requests = kickoff_in_a_run(
        budget, lambda: pair_crew(LLM(model="gpt-4o-mini"), LLM(model="gpt-4o-mini")))
    assert (requests, exc.role, exc.window) == (1, "writer", "day")
    crew = budget.attach(pair_crew(LLM(model="gpt-4o-mini"), LLM(model="gpt-4o-mini")))
    with replay("pair_crew") as cas, run("pair-kickoff"), \
            pytest.raises(CrewBudgetExceeded) as info:
        crew.kickoff()
    assert cas.play_count == 0  # the day's budget is shared: no room left for the researcher
    assert (info.value.role, info.value.window, info.value.spent) == (
        "researcher", "day", RESEARCHER)
