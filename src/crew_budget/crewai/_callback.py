"""``BudgetCallback``: one budget configuration enforced across a whole crew.

``attach(crew)`` budgets every LLM call the crew makes without touching the
crew: no LLM is replaced or copied, no callback is added (``_gate`` explains
where the calls are caught). An agent's calls are charged to its role (a
hierarchical crew's manager to ``"Crew Manager"`` unless you bring your own
manager); calls made for the crew as a whole (the manager's converter,
planning, guardrails, memory, the ``crew.test()`` evaluator) to
``crew_role`` (``"crew"`` by default), which has its own limits when the
YAML lists that role, and otherwise counts against the crew's and global
limits. An agent that already has a ``BudgetLLM`` keeps it; that
``BudgetLLM`` is bound to the callback's guard with its inline limits merged
in (the stricter wins). Every call is reserved once, by one guard.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from crewai.llms.base_llm import BaseLLM

from crew_budget.config import DEFAULT_CREW_ROLE, BudgetConfig, find_config
from crew_budget.crewai._gate import gate_everything, register_agent, register_crew, unregister
from crew_budget.crewai._llm import BudgetLLM
from crew_budget.crewai._roles import check_crew_roles
from crew_budget.errors import ConfigError
from crew_budget.guard import BudgetStatus, Guard
from crew_budget.ledger import Ledger, SpendRecord
from crew_budget.money import from_nano
from crew_budget.windows import get_tz, span

__all__ = ["BudgetCallback", "BudgetSummary", "SpendRow"]

_CHARGED = ("settled", "expired", "unguarded")



@dataclass(frozen=True, slots=True)
class SpendRow:
    """Spend of one role on one model over a period."""

    role: str
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost: Decimal
    blocked: int = 0


@dataclass(frozen=True, slots=True)
class BudgetSummary:
    """What ``BudgetCallback.summary()`` returns: spend this run and today.

    ``run`` covers the latest kickoff of an attached crew: the calls charged
    to its run (``run_id``, the ``crew_budget.run`` each kickoff is), so a
    kickoff running beside it on another thread is not mixed in; before the
    first kickoff, everything since ``attach``. ``today`` the current day window in
    the configured time zone. ``limits`` is ``guard.status()`` (every scope
    and window with its limit, spent and remaining). ``str(summary)`` is a
    plain-text table.
    """

    crew: str | None
    run: tuple[SpendRow, ...]
    today: tuple[SpendRow, ...]
    limits: tuple[BudgetStatus, ...] = field(default_factory=tuple)
    run_id: str | None = None

    def total(self, period: str = "run") -> Decimal:
        rows = self.run if period == "run" else self.today
        return sum((r.cost for r in rows), Decimal(0))

    def by_role(self, period: str = "run") -> dict[str, Decimal]:
        rows = self.run if period == "run" else self.today
        out: dict[str, Decimal] = defaultdict(Decimal)
        for r in rows:
            out[r.role] += r.cost
        return dict(out)

    def __str__(self) -> str:
        lines: list[str] = []
        this_run = "this run" + (f" {self.run_id}" if self.run_id else "")
        for title, rows in ((this_run, self.run), ("today", self.today)):
            lines.append(f"Spend {title}" + (f" (crew {self.crew})" if self.crew else "") + ":")
            header = ("role", "model", "calls", "blocked", "in tok", "out tok", "USD")
            table = [header] + [
                (r.role, r.model, str(r.calls), str(r.blocked), str(r.input_tokens),
                 str(r.output_tokens), f"{r.cost:f}")
                for r in rows
            ]
            total = sum((r.cost for r in rows), Decimal(0))
            table.append(("total", "", "", "", "", "", f"{total:f}"))
            widths = [max(len(row[i]) for row in table) for i in range(len(header))]
            for row in table:
                lines.append("  " + "  ".join(
                    cell.ljust(w) if i < 2 else cell.rjust(w)
                    for i, (cell, w) in enumerate(zip(row, widths, strict=True))
                ))
        if self.limits:
            lines.append("Limits:")
            for s in self.limits:
                limit = "-" if s.limit is None else f"{s.limit:f}"
                left = "-" if s.remaining is None else f"{s.remaining:f}"
                window = s.window if s.unit == "usd" else f"{s.window} {s.unit}"
                lines.append(f"  {s.scope} {window} {s.period}: spent {s.spent:f} of {limit}"
                             f" (left {left})")
        return "\n".join(lines)


def _with_per_run(config: BudgetConfig, usd: object) -> BudgetConfig:
    """``config`` with a per-run cap of ``usd`` on the crew (or global) scope.

    A cap set in code goes where the YAML's ``per_run`` would, so it is
    reserved atomically with every other bucket of the call (invariant 2)
    and its refusals name the same scope; the stricter of the two wins.
    """
    from crew_budget.config import Limits, check_code_limits

    try:
        amount: Decimal = check_code_limits("crew", daily=usd)["daily"]
    except ConfigError as exc:
        raise ConfigError(exc.detail.replace("daily_usd", "per_run_usd"),
                          source="BudgetCallback") from None
    limits: Limits
    if config.crew is not None:
        field_name, limits = "crew", config.crew
    else:
        field_name, limits = "global_limits", config.global_limits or Limits()
    current = limits.per_run
    merged = limits.model_copy(
        update={"per_run": amount if current is None else min(current, amount)})
    return config.model_copy(update={field_name: merged})


def summarize(records: Sequence[SpendRecord]) -> tuple[SpendRow, ...]:
    """Group spend records by role and model (exact sums of nano-USD)."""
    acc: dict[tuple[str, str], list[int]] = {}
    for rec in records:
        slot = acc.setdefault((rec.role, rec.model), [0, 0, 0, 0, 0])
        if rec.outcome in _CHARGED:
            slot[0] += 1
            slot[1] += rec.input_tokens + rec.cached_input_tokens + rec.cache_write_tokens
            slot[2] += rec.output_tokens
            slot[3] += rec.cost_nano
        elif rec.outcome == "blocked":
            slot[4] += 1
    return tuple(
        SpendRow(role, model, c, i, o, from_nano(n), b)
        for (role, model), (c, i, o, n, b) in sorted(acc.items())
    )


class BudgetCallback:
    """The crew-level budget: role limits and the flat crew limit from YAML.

    ::

        budget = BudgetCallback.from_yaml("budgets.yaml")
        budget.attach(crew)
        crew.kickoff()
        print(budget.summary())

    ``guard`` is the ``Guard`` it enforces with; with no ledger in the YAML
    it uses the embedded default (or ``CREW_BUDGET_LEDGER``).

    Each ``kickoff()`` of an attached crew is one run (``crew_budget.run``)
    unless it is already inside one (a ``with crew_budget.run(...)`` block,
    a CrewAI Flow run); concurrent kickoffs are separate runs.
    ``per_run_usd=2`` caps each run at $2: it is the YAML's ``crew:
    {per_run: 2}`` (``global`` when the YAML names no crew), and the
    stricter of the two wins.
    """

    def __init__(
        self,
        config: BudgetConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        ledger: Ledger | str | None = None,
        *,
        guard: Guard | None = None,
        crew_role: str | None = None,
        per_run_usd: object = None,
    ) -> None:
        if guard is not None and (config is not None or ledger is not None):
            raise ConfigError("BudgetCallback takes guard= or config=/ledger=, not both; "
                              "build the Guard from your config instead", source="BudgetCallback")
        if crew_role is not None and (not isinstance(crew_role, str) or not crew_role.strip()):
            raise ConfigError(f"crew_role must be a role name such as 'crew', got {crew_role!r}",
                              source="BudgetCallback")
        self.guard = guard if guard is not None else Guard(config, ledger)
        #: The role charged for calls made for the crew rather than for one
        #: agent: the argument, else the YAML's ``crew_role``, else "crew".
        self.crew_role: str = crew_role or self.guard.config.crew_role or DEFAULT_CREW_ROLE
        if self.guard.config.crew_role != self.crew_role:
            # The config is what the guard resolves roles by: it must know
            # which name stands for the crew (see BudgetConfig.resolve_role).
            self.guard.config = self.guard.config.model_copy(
                update={"crew_role": self.crew_role})
        if per_run_usd is not None:
            self.guard.config = _with_per_run(self.guard.config, per_run_usd)
        self._lock = threading.Lock()
        self._bound: list[BudgetLLM] = []
        self._crews: list[Any] = []
        self._run_started = self.guard.ledger.now()
        self._run_id: str | None = None

    @classmethod
    def from_yaml(
        cls, path: str | os.PathLike[str] | None = None, ledger: Ledger | str | None = None,
        *, crew_role: str | None = None,
    ) -> BudgetCallback:
        """Load the role map and crew limit from a budget YAML file: ``path``,
        else ``$CREW_BUDGET_CONFIG``, else ``./budgets.yaml`` (``find_config``)."""
        found = find_config(path)
        if found is None:
            raise ConfigError("no budget file: pass BudgetCallback.from_yaml('budgets.yaml'), "
                              "set CREW_BUDGET_CONFIG, or put a budgets.yaml in the working "
                              "directory", source="BudgetCallback.from_yaml")
        return cls(found, ledger, crew_role=crew_role)

    # -- attaching -------------------------------------------------------------

    def attach(self, crew: Any) -> Any:
        """Budget every LLM call ``crew`` makes from now on; returns ``crew`` unchanged.

        Nothing on the crew is replaced: agents keep their LLM objects, the
        crew keeps its callbacks. Calls are caught where CrewAI makes them
        (see ``_gate``): an agent's calls are charged to its role, calls made
        for the crew (manager converter, planner, guardrails, memory, the
        ``crew.test()`` evaluator) to ``crew_role``. Attaching again is a
        no-op; each call is reserved once. An ``Agent`` may be attached on
        its own, for ``agent.kickoff()`` outside a crew.

        Every agent's role is checked first: if any matches no budget (and
        there is no ``default_role`` / ``unknown_roles: allow``), this raises
        ``CrewUnknownRole`` listing them all, and nothing is attached.
        """
        check_crew_roles(self.guard.config, crew)
        with self._lock:
            gate_everything()
            if hasattr(crew, "agents"):
                register_crew(crew, self)
                agents = list(getattr(crew, "agents", None) or [])
                manager = getattr(crew, "manager_agent", None)
                if manager is not None:
                    agents.append(manager)
                for agent in agents:
                    self._attach_agent(agent)
                for attr in ("manager_llm", "planning_llm", "function_calling_llm"):
                    llm = getattr(crew, attr, None)
                    if isinstance(llm, BudgetLLM):
                        self._bind(llm)
            else:
                self._attach_agent(crew)
            if not any(c is crew for c in self._crews):
                self._crews.append(crew)
        return crew

    def _attach_agent(self, agent: Any) -> None:
        register_agent(agent, self)
        for attr in ("llm", "function_calling_llm"):
            llm = getattr(agent, attr, None)
            if isinstance(llm, BudgetLLM):
                # The user's own BudgetLLM keeps reserving its calls (once),
                # through this callback's guard with its inline limits merged.
                self._bind(llm)

    def _bind(self, llm: BudgetLLM) -> None:
        llm.bind(self.guard, self.crew_role)
        if not any(b is llm for b in self._bound):
            self._bound.append(llm)

    def wrap(self, llm: BaseLLM | str, role: str | None = None) -> BudgetLLM:
        """A ``BudgetLLM`` around ``llm`` that uses this callback's guard."""
        if isinstance(llm, BudgetLLM):
            self._bind(llm)
            return llm
        wrapped = BudgetLLM(llm=llm, role=role, guard=self.guard)
        wrapped.bind(self.guard, self.crew_role)
        return wrapped

    def detach(self) -> None:
        """Stop budgeting the attached crews; inline-limit BudgetLLMs unbound."""
        with self._lock:
            unregister(self)
            for llm in self._bound:
                llm.unbind()
            self._bound.clear()
            self._crews.clear()

    def _run_began(self) -> None:
        """An attached crew's kickoff started (CrewAI's EXECUTION_START hook), in
        the run it is charged to (its own, a Flow's or the caller's)."""
        from crew_budget.runs import current_run

        active = current_run()
        self._run_started = self.guard.ledger.now()
        self._run_id = None if active is None else active.run_id

    # -- reading -----------------------------------------------------------------

    def status(self, role: str | None = None) -> list[BudgetStatus]:
        """Shortcut for ``guard.status(role)``."""
        return self.guard.status(role)

    def summary(self) -> BudgetSummary:
        """Spend by role and model for the latest run and for today."""
        guard = self.guard
        crew_name = guard.config.crew.name if guard.config.crew else None
        now = guard.ledger.now()
        day_start = span("day", now, get_tz(guard.config.timezone)).starts_at
        since = min(day_start, self._run_started)
        records = [
            r for r in guard.ledger.records(since=since)
            if crew_name is None or r.crew == crew_name
        ]
        run_id = self._run_id
        if run_id is None:
            run = summarize([r for r in records if r.ts >= self._run_started])
        else:  # the kickoff's own run: by id, not by time (kickoffs may overlap)
            run = summarize([r for r in records if r.ts >= self._run_started
                             and (r.metadata.get("run") == run_id
                                  or run_id in (r.metadata.get("runs") or ()))])
        today = summarize([r for r in records if r.ts >= day_start])
        return BudgetSummary(crew_name, run, today, tuple(guard.status()), run_id)
