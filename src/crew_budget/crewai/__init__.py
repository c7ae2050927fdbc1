"""CrewAI adapter: per-role dollar budgets on every LLM call of a crew.

::

    from crewai import Agent, Crew, Task, LLM
    from crew_budget.crewai import BudgetLLM, BudgetCallback

    researcher = Agent(role="researcher", goal="...", backstory="...",
                       llm=BudgetLLM(role="researcher", daily_usd=5, model="gpt-4o-mini"))
    writer = Agent(role="writer", goal="...", backstory="...", llm=LLM(model="gpt-4o-mini"))
    budget = BudgetCallback.from_yaml("budgets.yaml")   # role map + flat crew limit
    crew = budget.attach(Crew(agents=[researcher, writer], tasks=[...]))
    crew.kickoff()                                      # may raise CrewBudgetExceeded
    print(budget.summary())

How the pieces fit CrewAI 1.x (checked against 1.15):

- **Wrapping.** ``LLM("gpt-4o-mini")`` returns a native SDK class, not
  litellm, so litellm callbacks miss most CrewAI traffic. ``BudgetLLM`` is a
  ``BaseLLM`` that delegates to any inner ``BaseLLM`` (composition) and runs
  ``Guard.preflight`` / ``settle`` / ``release`` around each ``call`` and
  ``acall``, streaming or not. Usage is read per call from the provider's
  ``_track_token_usage_internal`` (see ``_llm.py`` for why that source).
- **Plain-LLM agents.** ``BudgetCallback.attach(crew)`` wraps each agent's
  LLM (and the hierarchical manager's) in a ``BudgetLLM`` bound to the
  callback's guard. We chose this over CrewAI's before/after-LLM-call hooks
  and events: a before hook can abort with ``HookAborted`` before any HTTP,
  but it cannot change the request's ``max_tokens`` without mutating a
  shared LLM, after hooks are skipped for native tool-call responses and
  for failed calls (so a reservation could not be settled or released at
  the right moment), and ``LLMCallCompletedEvent`` is delivered later on a
  thread pool. Wrapping gives a true pre-call block, the exact usage of that
  same call, and a settle/release on every exit path.
- **Charge once.** An agent that already has a ``BudgetLLM`` keeps it; the
  callback binds it to its own guard and merges its inline limits into the
  role (stricter wins). One guard, one reservation per call.
- **Stopping.** A call that does not fit raises ``CrewBudgetExceeded``,
  which is both ``crew_budget.BudgetExceeded`` and CrewAI's
  ``HookAborted``: CrewAI's agents pass ``HookAborted`` through instead of
  retrying (``max_retry_limit``), so ``crew.kickoff()`` raises it after one
  attempt with role, scope, window, limit and spent on it. No HTTP request
  is sent for the blocked call.

Not covered by ``attach``: LLM calls CrewAI makes outside the crew's agents
(a task's string guardrail built before ``attach``, crew memory's own LLM,
``planning_llm``). Wrap those LLMs with ``budget.wrap(llm, role=...)``.
"""

from __future__ import annotations

from crew_budget.crewai._callback import BudgetCallback, BudgetSummary, SpendRow
from crew_budget.crewai._llm import BudgetLLM, CrewBudgetExceeded, usage_from_crewai
from crew_budget.crewai._roles import CrewUnknownRole

__all__ = [
    "BudgetCallback",
    "BudgetLLM",
    "BudgetSummary",
    "CrewBudgetExceeded",
    "CrewUnknownRole",
    "SpendRow",
    "usage_from_crewai",
]
