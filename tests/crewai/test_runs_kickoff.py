"""Per-run budgets with no ``crew_budget.run`` in sight: each ``kickoff()`` of an
attached crew is a run, concurrent kickoffs are separate runs, and a CrewAI
Flow run (with every crew it kicks off) is one run.

HTTP is replayed from ``cassettes/crewai/pair_crew.yaml`` (researcher, then
writer; gpt-4o-mini): the researcher's call costs $0.0000264 and the
writer's $0.00002475 (tests/crewai/test_callback.py pins both). With
``max_output_tokens: 200`` a call reserves about $0.00013, so a $0.00015
per-run cap admits one call of a run and refuses the next.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from crewai import LLM, Agent, Crew, Task

from crew_budget.crewai import BudgetCallback, CrewBudgetExceeded
from crew_budget.report import build_report
from crew_budget.runs import current_run
from tests.crewai.replay import replay
from tests.crewai.scenarios import pair_crew

RESEARCHER = Decimal("0.0000264")
WRITER = Decimal("0.00002475")
CAP = "0.00015"


def config(**crew: Any) -> dict[str, Any]:
    return {"crew": {"name": "pair", "daily": 1, **crew},
            "roles": {"researcher": {"max_output_tokens": 200},
                      "writer": {"max_output_tokens": 200}}}


def new_pair() -> Crew:
    return pair_crew(LLM(model="gpt-4o-mini"), LLM(model="gpt-4o-mini"))


def one_agent_crew(role: str) -> Crew:
    agent = Agent(role=role, goal="Answer in one sentence", backstory="You are brief.",
                  llm=LLM(model="gpt-4o-mini"))
    task = Task(description=f"Do the {role}'s part about sodium-ion batteries.",
                expected_output="One sentence", agent=agent)
    return Crew(agents=[agent], tasks=[task])


def runs_of(budget: BudgetCallback) -> dict[str, list[tuple[str, str, Decimal]]]:
    """Each run id -> its records as (role, outcome, cost), in order."""
    out: dict[str, list[tuple[str, str, Decimal]]] = {}
    for r in budget.guard.ledger.records():
        out.setdefault(str(r.metadata.get("run")), []).append(
            (r.role, r.outcome, Decimal(r.cost_nano) / 10**9))
    return out


@pytest.mark.parametrize("how", ["per_run_usd", "yaml"])
def test_each_kickoff_is_a_run_capped_on_its_own(how: str) -> None:
    """Two kickoffs one after the other: each makes its researcher's request
    and is stopped at its writer, by its own run's cap (never the other's)."""
    budget = (BudgetCallback(config(), "memory://", per_run_usd=CAP) if how == "per_run_usd"
              else BudgetCallback(config(per_run=CAP), "memory://"))
    assert budget.guard.config.crew is not None
    assert budget.guard.config.crew.per_run == Decimal(CAP)
    stops = []
    for _ in range(2):
        crew = budget.attach(new_pair())
        with replay("pair_crew") as cas, pytest.raises(CrewBudgetExceeded) as info:
            crew.kickoff()
        assert cas.play_count == 1  # the researcher's request; the writer's never went out
        exc = info.value
        assert (exc.role, exc.scope, exc.window, exc.limit, exc.spent) == (
            "writer", "crew:pair", "run", Decimal(CAP), RESEARCHER)
        assert exc.period.startswith("pair#")
        assert current_run() is None  # the kickoff's run ended with it, even on a stop
        stops.append(exc.period)
    assert stops[0] != stops[1]
    assert runs_of(budget) == {
        rid: [("researcher", "settled", RESEARCHER), ("writer", "blocked", Decimal(0))]
        for rid in stops}
    [day] = [s for s in budget.guard.status() if s.scope == "crew:pair"]
    assert day.spent == 2 * RESEARCHER
    report = build_report(budget.guard.ledger.records(), ["run"], sort="key")
    assert [(row.key, row.calls, row.blocked, row.cost) for row in report.rows] == sorted(
        ((rid,), 1, 1, RESEARCHER) for rid in stops)


def test_per_run_usd_and_the_yaml_stricter_wins() -> None:
    loose = BudgetCallback(config(per_run="0.5"), "memory://", per_run_usd=CAP)
    tight = BudgetCallback(config(per_run=CAP), "memory://", per_run_usd="0.5")
    for budget in (loose, tight):
        assert budget.guard.config.crew is not None
        assert budget.guard.config.crew.per_run == Decimal(CAP)
    # No crew in the YAML: the cap goes on the global scope.
    bare = BudgetCallback({"roles": {"researcher": {}}}, "memory://", per_run_usd=2)
    assert bare.guard.config.global_limits is not None
    assert bare.guard.config.global_limits.per_run == Decimal(2)


def test_per_run_usd_is_checked_like_any_limit() -> None:
    from crew_budget.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        BudgetCallback(config(), "memory://", per_run_usd="-1")
    assert "per_run_usd" in str(info.value)
    assert "BudgetCallback" in str(info.value)


def test_a_kickoff_without_any_per_run_limit_is_still_a_run() -> None:
    budget = BudgetCallback(config(), "memory://")
    crew = budget.attach(new_pair())
    with replay("pair_crew") as cas:
        crew.kickoff()
    assert cas.play_count == 2
    [(rid, records)] = runs_of(budget).items()
    assert rid.startswith("pair#")
    assert records == [("researcher", "settled", RESEARCHER), ("writer", "settled", WRITER)]


def test_two_concurrent_kickoffs_are_two_runs() -> None:
    """Two kickoffs in flight at once (``kickoff_async`` runs each on its own
    thread): two runs, each stopped at its writer by its own cap, so exactly
    two requests went out in all (one per run)."""
    budget = BudgetCallback(config(), "memory://", per_run_usd=CAP)
    crews = [budget.attach(new_pair()), budget.attach(new_pair())]

    async def both() -> list[Any]:
        return await asyncio.gather(*(c.kickoff_async() for c in crews),
                                    return_exceptions=True)

    with replay("pair_crew") as cas:
        results = asyncio.run(both())
    assert cas.play_count == 2
    assert all(isinstance(r, CrewBudgetExceeded) for r in results), results
    periods = {r.period for r in results}
    assert len(periods) == 2
    runs = runs_of(budget)
    assert set(runs) == periods
    # Which run's researcher got which recorded reply is up to the threads;
    # each run made exactly one call and was refused the next.
    spends = sorted(sum(cost for _, _, cost in recs) for recs in runs.values())
    assert spends == sorted([RESEARCHER, WRITER])
    for recs in runs.values():
        assert [(role, outcome) for role, outcome, _ in recs] == [
            ("researcher", "settled"), ("writer", "blocked")]
    [day] = [s for s in budget.guard.status() if s.scope == "crew:pair"]
    assert day.spent == RESEARCHER + WRITER
    # summary(): "this run" is the kickoff that began last, by its run id: its
    # own call only, never the other kickoff's, which overlapped it in time.
    summary = budget.summary()
    assert summary.run_id in periods
    own = sum(cost for _, _, cost in runs[summary.run_id])
    assert [(r.role, r.calls, r.blocked, r.cost) for r in sorted(summary.run, key=lambda r: r.role)
            ] == [("researcher", 1, 0, own), ("writer", 0, 1, Decimal(0))]
    assert summary.total("today") == RESEARCHER + WRITER


def two_crew_flow(first: Crew, second: Crew) -> Any:
    from crewai.flow.flow import Flow, listen, start

    class ResearchThenWrite(Flow):  # type: ignore[type-arg]
        @start()
        def research(self) -> str:
            return str(first.kickoff().raw)

        @listen(research)
        def write(self, fact: str) -> str:
            return str(second.kickoff().raw)

    return ResearchThenWrite()


def test_a_flow_with_two_crews_is_one_run() -> None:
    """The researcher crew's call fits the $0.00015 run cap; the writer crew's,
    in the same Flow run, does not fit beside it: one run, not two."""
    budget = BudgetCallback(config(), "memory://", per_run_usd=CAP)
    first = budget.attach(one_agent_crew("researcher"))
    second = budget.attach(one_agent_crew("writer"))
    with replay("pair_crew") as cas, pytest.raises(CrewBudgetExceeded) as info:
        two_crew_flow(first, second).kickoff()
    assert cas.play_count == 1
    exc = info.value
    assert (exc.role, exc.scope, exc.window, exc.spent) == (
        "writer", "crew:pair", "run", RESEARCHER)
    assert exc.period.startswith("ResearchThenWrite#")
    assert runs_of(budget) == {exc.period: [("researcher", "settled", RESEARCHER),
                                            ("writer", "blocked", Decimal(0))]}
    assert current_run() is None


def test_the_same_two_crews_outside_a_flow_are_two_runs() -> None:
    budget = BudgetCallback(config(), "memory://", per_run_usd=CAP)
    first = budget.attach(one_agent_crew("researcher"))
    second = budget.attach(one_agent_crew("writer"))
    with replay("pair_crew") as cas:
        first.kickoff()
        second.kickoff()
    assert cas.play_count == 2
    runs = runs_of(budget)
    assert sorted(runs.values()) == [[("researcher", "settled", RESEARCHER)],
                                     [("writer", "settled", WRITER)]]


def test_a_flow_inside_a_user_run_is_charged_to_that_run() -> None:
    from crew_budget.runs import run

    budget = BudgetCallback(config(), "memory://")
    first = budget.attach(one_agent_crew("researcher"))
    second = budget.attach(one_agent_crew("writer"))
    with replay("pair_crew") as cas, run("nightly") as r:
        two_crew_flow(first, second).kickoff()
    assert cas.play_count == 2
    assert runs_of(budget) == {r.run_id: [("researcher", "settled", RESEARCHER),
                                          ("writer", "settled", WRITER)]}


def test_summary_shows_the_latest_kickoffs_run_by_its_id() -> None:
    """``summary()``'s "this run" is the latest kickoff's run (by id): after two
    kickoffs it holds the second's two calls only, today holds all four."""
    budget = BudgetCallback(config(), "memory://")
    ids = []
    for _ in range(2):
        crew = budget.attach(new_pair())
        with replay("pair_crew") as cas:
            crew.kickoff()
        assert cas.play_count == 2
        ids.append(budget.summary().run_id)
    assert ids[0] != ids[1] and all(i is not None and i.startswith("pair#") for i in ids)
    summary = budget.summary()
    assert sorted((r.role, r.calls, r.cost) for r in summary.run) == [
        ("researcher", 1, RESEARCHER), ("writer", 1, WRITER)]
    assert summary.total("run") == RESEARCHER + WRITER
    assert summary.total("today") == 2 * (RESEARCHER + WRITER)
    assert set(runs_of(budget)) == set(ids)
    assert f"Spend this run {ids[1]} (crew pair):" in str(summary)
