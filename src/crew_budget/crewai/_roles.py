"""Unknown roles in CrewAI: refused up front at ``attach``, and natively at call time.

A CrewAI agent's role is free text (``Agent(role="Senior Researcher")``)
while budgets are keyed by the names in the YAML. Before this check, an
agent whose role matched no budget ran with no role limit at all. Now:

- ``BudgetCallback.attach(crew)`` resolves every agent's role (and the
  manager's) against the guard's configuration first, and raises one
  ``CrewUnknownRole`` listing every role that matches nothing, with the
  closest configured role for each, before anything is swapped or sent.
- A ``BudgetLLM`` called with a role that matches nothing raises
  ``CrewUnknownRole``: both ``crew_budget.UnknownRoleError`` and CrewAI's
  ``HookAborted``, so CrewAI neither swallows nor retries it; the task
  stops after one attempt with no HTTP request sent.
"""

from __future__ import annotations

from typing import Any

from crewai.hooks.dispatch import HookAborted

from crew_budget.errors import UnknownRoleError

__all__ = ["CrewUnknownRole", "check_crew_roles", "crew_roles"]


class CrewUnknownRole(UnknownRoleError, HookAborted):
    """An ``UnknownRoleError`` that CrewAI treats as a deliberate stop.

    ``unmatched`` lists every role that matched no budget (one at call
    time; all of a crew's at ``attach``).
    """

    def __init__(
        self,
        role: object,
        *,
        configured: tuple[str, ...] = (),
        suggestion: str | None = None,
        unmatched: tuple[str, ...] = (),
        message: str | None = None,
    ) -> None:
        super().__init__(role, configured=configured, suggestion=suggestion)
        self.unmatched = unmatched or ((role,) if isinstance(role, str) else ())
        if message is not None:
            self.args = (message,)
        # UnknownRoleError's MRO reaches LookupError before HookAborted, so
        # set what HookAborted.__init__ would have set.
        self.reason = str(self)
        self.source = "crew-budget"

    @classmethod
    def from_error(cls, exc: UnknownRoleError) -> CrewUnknownRole:
        if isinstance(exc, cls):
            return exc
        return cls(exc.role, configured=exc.configured, suggestion=exc.suggestion)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.role, self.configured, self.suggestion,
                           self.unmatched, str(self)))


def _rebuild(cls: type[CrewUnknownRole], role: object, configured: tuple[str, ...],
             suggestion: str | None, unmatched: tuple[str, ...], message: str) -> CrewUnknownRole:
    return cls(role, configured=configured, suggestion=suggestion, unmatched=unmatched,
               message=message)


def crew_roles(crew: Any) -> list[tuple[str, Any]]:
    """``(role, llm)`` for every LLM of ``crew`` that ``attach`` puts behind the guard.

    The agents' ``llm`` and ``function_calling_llm``, the ``manager_agent``'s,
    and for a ``manager_llm`` the role CrewAI gives the manager it builds at
    kickoff (``"Crew Manager"`` in English prompts).
    """
    out: list[tuple[str, Any]] = []
    agents = list(getattr(crew, "agents", []) or [])
    manager = getattr(crew, "manager_agent", None)
    if manager is not None:
        agents.append(manager)
    for agent in agents:
        for attr in ("llm", "function_calling_llm"):
            llm = getattr(agent, attr, None)
            if attr == "llm" or llm is not None:
                out.append((_role_of(llm, agent.role), llm))
    if manager is None and getattr(crew, "manager_llm", None) is not None:
        from crewai.utilities.i18n import get_i18n

        i18n = get_i18n(prompt_file=getattr(crew, "prompt_file", None))
        llm = crew.manager_llm
        out.append((_role_of(llm, i18n.retrieve("hierarchical_manager_agent", "role")), llm))
    return out


def _role_of(llm: Any, agent_role: Any) -> str:
    from crew_budget.crewai._llm import BudgetLLM

    if isinstance(llm, BudgetLLM) and llm.role:
        return str(llm.role)
    return "" if agent_role is None else str(agent_role)


def check_crew_roles(config: Any, crew: Any) -> None:
    """Raise ``CrewUnknownRole`` listing every role of ``crew`` that matches no budget.

    ``config`` is a ``BudgetConfig``. A ``BudgetLLM`` with inline limits
    (``daily_usd=...``) adds its role when bound, so it counts as configured.
    """
    from crew_budget.crewai._llm import BudgetLLM

    unmatched: list[str] = []
    for role, llm in crew_roles(crew):
        if isinstance(llm, BudgetLLM) and llm.limits and llm.role:
            continue
        try:
            config.resolve_role(role)
        except UnknownRoleError:
            if role not in unmatched:
                unmatched.append(role)
    if not unmatched:
        return
    configured = tuple(config.roles)
    hints = []
    for role in unmatched:
        close = config.closest_role(role) if role.strip() else None
        hints.append(f"{role!r}" + (f" (closest: {close!r})" if close else ""))
    first = unmatched[0]
    example = config.closest_role(first) if first.strip() else None
    fix_alias = (f"add it as an alias, e.g. `{example}: {{aliases: [{first!r}]}}`"
                 if example else f"add {first!r} under roles:")
    message = (
        f"this crew has agent roles that match no budget under roles: {', '.join(hints)}; "
        f"configured roles: {', '.join(configured) or 'none'}. Nothing was attached and no "
        f"call was sent. Roles match exactly, or ignoring case and extra whitespace. Fix: "
        f"rename the agent's role, {fix_alias}, set default_role: to budget every role not "
        f"listed, or set unknown_roles: allow to charge them to the crew and global budgets "
        f"only."
    )
    raise CrewUnknownRole(first, configured=configured,
                          suggestion=example, unmatched=tuple(unmatched), message=message)
