"""Token and call limits stop a real CrewAI loop (issue 12, item 3).

HTTP is replayed from ``cassettes/crewai/researcher_loop.yaml`` (a researcher
that answers every step with one more ``web_search`` call); ``play_count``
is the number of requests CrewAI sent. The cassette's usage per call:
prompt 194, 458, 740, 995, 1245 tokens; completion 18, 21, 20, 22, 19.

- ``output_tokens: {daily: 315}`` with ``max_output_tokens: 256``: each
  call reserves 256 output tokens and settles at its completion tokens, so
  call n fits while the completions before it plus 256 stay within 315:
  call 4 needs 18+21+20 + 256 = 315 (fits exactly), call 5 needs
  81 + 256 = 337 (refused). No estimator is involved: exactly 4 requests.
- ``input_tokens: {daily: 2987}``: before call 5, 194+458+740+995 = 2387
  prompt tokens are spent, so call 5 is refused unless its 1245-token
  prompt is estimated below 600 (more than 52 % too low), and call 4
  (995 tokens, 1392 spent before it) fits unless estimated above 1595
  (1.6x too high): exactly 4 requests.
- ``calls: {per_run: 3}`` inside ``crew_budget.run``: exactly 3 requests.
"""

from __future__ import annotations

from typing import Any

import pytest
from crewai import LLM
from crewai.hooks.dispatch import HookAborted

import crew_budget
from crew_budget import BudgetExceeded
from crew_budget.crewai import BudgetCallback, BudgetLLM, CrewBudgetExceeded
from tests.crewai.replay import cassette_usage, live_bodies, replay
from tests.crewai.scenarios import loop_crew

PROMPTS = [194, 458, 740, 995, 1245]
COMPLETIONS = [18, 21, 20, 22, 19]


def _usage_matches_the_docstring() -> None:
    usage = [u for u in cassette_usage("researcher_loop") if u][:5]
    assert [u["prompt_tokens"] for u in usage] == PROMPTS
    assert [u["completion_tokens"] for u in usage] == COMPLETIONS


def _row(guard: Any, unit: str, window: str = "day") -> tuple[Any, ...]:
    (r,) = [s for s in guard.status("researcher") if s.unit == unit and s.window == window]
    return r.limit, r.spent, r.reserved


def test_an_output_token_limit_lets_exactly_four_calls_through() -> None:
    _usage_matches_the_docstring()
    llm = BudgetLLM(role="researcher", model="gpt-4o-mini", ledger="memory://", config={
        "roles": {"researcher": {"daily": 1, "max_output_tokens": 256,
                                 "output_tokens": {"daily": 315}}}})
    with replay("researcher_loop") as cas, pytest.raises(CrewBudgetExceeded) as info:
        loop_crew(llm).kickoff()

    assert cas.play_count == 4
    assert all(b["max_completion_tokens"] == 256 for b in live_bodies(cas))
    assert _row(llm.guard, "output_tokens") == (315, sum(COMPLETIONS[:4]), 0)
    exc = info.value
    assert isinstance(exc, BudgetExceeded) and isinstance(exc, HookAborted)
    assert (exc.unit, exc.scope, exc.window, exc.limit, exc.spent, exc.reserved,
            exc.estimate) == ("output_tokens", "role:researcher", "day", 315, 81, 0, 256)
    day = exc.period
    assert str(exc) == (
        "budget exceeded for role 'researcher': role:researcher daily output_tokens: 81 of 315 "
        f"used ({day}); this gpt-4o-mini call needs 256, so it was not sent.")
    assert [r.outcome for r in llm.guard.ledger.records()] == ["settled"] * 4 + ["blocked"]


def test_an_input_token_limit_stops_the_callback_crew_before_the_fifth_request() -> None:
    budget = BudgetCallback(config={"roles": {"researcher": {
        "daily": 1, "max_output_tokens": 256, "input_tokens": {"daily": 2987}}}},
        ledger="memory://")
    crew = budget.attach(loop_crew(LLM(model="gpt-4o-mini")))
    with replay("researcher_loop") as cas, pytest.raises(CrewBudgetExceeded) as info:
        crew.kickoff()

    assert cas.play_count == 4
    assert _row(budget.guard, "input_tokens") == (2987, sum(PROMPTS[:4]), 0)
    assert (info.value.unit, info.value.spent) == ("input_tokens", 2387)
    assert info.value.estimate > 2987 - 2387
    assert {s.unit for s in budget.guard.status()} == {"usd", "input_tokens"}
    assert [r.outcome for r in budget.guard.ledger.records()] == ["settled"] * 4 + ["blocked"]


def test_a_per_run_limit_of_three_calls_per_kickoff() -> None:
    llm = BudgetLLM(role="researcher", model="gpt-4o-mini", ledger="memory://", config={
        "roles": {"researcher": {"daily": 1, "max_output_tokens": 256,
                                 "calls": {"per_run": 3}}}})
    with replay("researcher_loop") as cas, crew_budget.run("loop") as run, \
            pytest.raises(CrewBudgetExceeded) as info:
        loop_crew(llm).kickoff()

    assert cas.play_count == 3
    exc = info.value
    assert (exc.unit, exc.window, exc.period, exc.limit, exc.spent) == (
        "calls", "run", run.run_id, 3, 3)
    assert str(exc).startswith(
        f"budget exceeded for role 'researcher': role:researcher per-run calls: 3 of 3 used "
        f"(run {run.run_id}); this gpt-4o-mini call needs 1")
    settled = [r for r in llm.guard.ledger.records() if r.outcome == "settled"]
    assert [r.input_tokens + r.cached_input_tokens for r in settled] == PROMPTS[:3]
    assert all(r.metadata["run"] == run.run_id for r in settled)
