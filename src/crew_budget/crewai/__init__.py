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

- **Invisible.** ``BudgetCallback.attach(crew)`` changes nothing on the
  crew: agents keep their own LLM objects (no wrapper, no copy), no
  kickoff callback is added, and a request goes out exactly as CrewAI
  built it. A call with no output cap reserves the model's maximum output
  instead of injecting one; a role that sets ``max_output_tokens`` gets
  that cap sent. ``_gate.py`` explains where calls are caught (CrewAI's
  execution hooks tell which crew is running; a gate on every ``BaseLLM``
  class's ``call``/``acall`` reserves, stops and settles each call).
- **Every call.** Agents' calls are charged to their role; calls CrewAI
  makes for the crew (the manager's converter, planning, guardrails,
  memory, the ``crew.test()`` evaluator) to ``crew_role`` (``"crew"``
  unless ``BudgetCallback(..., crew_role=...)`` or the YAML's
  ``crew_role:`` names another).
- **Explicit wrappers.** ``BudgetLLM`` still wraps any ``BaseLLM`` by
  composition for code that wants inline limits on one LLM; it runs the
  call on the LLM it wraps (never a copy). Under an attached callback it is
  bound to the callback's guard (stricter limits win) and its call is
  reserved once. Usage is read per call from the provider's
  ``_track_token_usage_internal`` (see ``_llm.py`` for why that source).
- **Stopping.** A call that does not fit raises ``CrewBudgetExceeded``,
  which is both ``crew_budget.BudgetExceeded`` and CrewAI's
  ``HookAborted``: CrewAI's agents pass ``HookAborted`` through instead of
  retrying (``max_retry_limit``), so ``crew.kickoff()`` raises it after one
  attempt with role, scope, window, limit and spent on it. No HTTP request
  is sent for the blocked call.
"""

from __future__ import annotations

from crew_budget.crewai._callback import BudgetCallback, BudgetSummary, SpendRow
from crew_budget.crewai._gate import gate_llm_class
from crew_budget.crewai._llm import BudgetLLM, CrewBudgetExceeded, usage_from_crewai
from crew_budget.crewai._roles import CrewUnknownRole

__all__ = [
    "BudgetCallback",
    "BudgetLLM",
    "BudgetSummary",
    "CrewBudgetExceeded",
    "CrewUnknownRole",
    "SpendRow",
    "gate_llm_class",
    "usage_from_crewai",
]
