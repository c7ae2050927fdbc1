"""A looping agent is stopped at its budget: counted HTTP requests, exact dollars.

The cassette ``researcher_loop`` scripts a researcher that answers every step
with one more ``web_search`` call (8 scripted answers, more than will ever be
used). With a $0.00064 daily limit for the role, calls 1-4 fit and call 5
does not; nothing after the block reaches the network.

Why exactly 4, whatever the estimator's error: each call reserves its prompt
estimate plus 256 output tokens (the role's cap) = $0.0001536. Before call 4,
$0.0002442 is spent, so call 4 fits if its prompt (995 billed tokens,
$0.00014925) is estimated at most (0.00064 - 0.0002442 - 0.0001536) /
0.00014925 = 1.62x too high. Before call 5, $0.00040665 is spent, and call 5
(1245 billed tokens, $0.00018675) is refused unless its prompt is estimated
more than 57% too low: (0.00064 - 0.00040665 - 0.0001536) / 0.00018675 = 0.43.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from crewai.hooks.dispatch import HookAborted

from crew_budget import BudgetExceeded
from crew_budget.crewai import BudgetLLM, CrewBudgetExceeded
from tests.crewai.conftest import GPT_4O_MINI, openai_cost
from tests.crewai.replay import cassette_usage, live_bodies, replay
from tests.crewai.scenarios import loop_crew

LIMIT = Decimal("0.00064")


def test_looping_agent_is_stopped_before_the_call_that_does_not_fit() -> None:
    llm = BudgetLLM(
        role="researcher",
        model="gpt-4o-mini",
        config={"roles": {"researcher": {"daily": "0.00064", "max_output_tokens": 256}}},
        ledger="memory://",
    )
    crew = loop_crew(llm)
    with replay("researcher_loop") as cas, pytest.raises(CrewBudgetExceeded) as info:
        crew.kickoff()

    # Exactly the four calls that fit went out, in order, and nothing after the block.
    assert cas.play_count == 4
    assert sorted(cas.play_counts) == [0, 1, 2, 3]
    bodies = live_bodies(cas)
    assert len(bodies) == 4
    assert all(b["max_completion_tokens"] == 256 for b in bodies)
    assert all([t["function"]["name"] for t in b["tools"]] == ["web_search"] for b in bodies)
    # The loop really loops: each request carries one more tool round than the last.
    assert [sum(m["role"] == "tool" for m in b["messages"]) for b in bodies] == [0, 1, 2, 3]

    # The ledger holds the cassette's usage, priced by hand:
    #   194*0.00000015 + 18*0.0000006 = 0.0000399
    #   458*0.00000015 + 21*0.0000006 = 0.0000813
    #   740*0.00000015 + 20*0.0000006 = 0.000123
    #   995*0.00000015 + 22*0.0000006 = 0.00016245   -> total 0.00040665
    expected = Decimal("0.00040665")
    assert expected == sum(
        (openai_cost(u, GPT_4O_MINI) for u in cassette_usage("researcher_loop")[:4] if u),
        Decimal(0),
    )
    (day,) = llm.guard.status("researcher")
    assert (day.spent, day.reserved, day.limit) == (expected, 0, LIMIT)

    # CrewAI's own stop signal, with the budget's facts, raised once: not retried.
    exc = info.value
    assert isinstance(exc, BudgetExceeded) and isinstance(exc, HookAborted)
    assert (exc.role, exc.scope, exc.window, exc.limit, exc.spent) == (
        "researcher", "role:researcher", "day", LIMIT, expected)
    assert exc.estimate > LIMIT - expected
    assert str(exc).startswith("budget exceeded for role 'researcher'")
    assert exc.reason == str(exc) and exc.source == "crew-budget"
    outcomes = [r.outcome for r in llm.guard.ledger.records()]
    assert outcomes == ["settled"] * 4 + ["blocked"]
