"""``BudgetCallback``: one budget configuration enforced across a whole crew.

``attach(crew)`` puts every LLM the crew's agents call behind the
callback's guard: an agent whose ``llm`` is a plain CrewAI LLM gets a
``BudgetLLM`` wrapped around it (role = the agent's role); an agent that
already has a ``BudgetLLM`` keeps it, and that ``BudgetLLM`` is bound to the
callback's guard with its inline limits merged in (the stricter wins). Every
call is therefore reserved once, by one guard. A hierarchical crew's
``manager_llm`` (or ``manager_agent``) is wrapped the same way; its role is
the manager agent's (``"Crew Manager"`` unless you bring your own manager).
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

from crew_budget.config import BudgetConfig, find_config
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

    ``run`` covers the latest kickoff of an attached crew (or everything
    since ``attach`` if none ran yet); ``today`` the current day window in
    the configured time zone. ``limits`` is ``guard.status()`` (every scope
    and window with its limit, spent and remaining). ``str(summary)`` is a
    plain-text table.
    """

    crew: str | None
    run: tuple[SpendRow, ...]
    today: tuple[SpendRow, ...]
    limits: tuple[BudgetStatus, ...] = field(default_factory=tuple)

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
        for title, rows in (("this run", self.run), ("today", self.today)):
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
                lines.append(f"  {s.scope} {s.window} {s.period}: spent {s.spent:f} of {limit}"
                             f" (left {left})")
        return "\n".join(lines)


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
    """

    def __init__(
        self,
        config: BudgetConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        ledger: Ledger | str | None = None,
        *,
        guard: Guard | None = None,
    ) -> None:
        if guard is not None and (config is not None or ledger is not None):
            raise ConfigError("BudgetCallback takes guard= or config=/ledger=, not both; "
                              "build the Guard from your config instead", source="BudgetCallback")
        self.guard = guard if guard is not None else Guard(config, ledger)
        self._lock = threading.Lock()
        self._undo: list[tuple[Any, str, Any]] = []
        self._bound: list[BudgetLLM] = []
        self._crews: list[Any] = []
        self._run_started = self.guard.ledger.now()

    @classmethod
    def from_yaml(
        cls, path: str | os.PathLike[str] | None = None, ledger: Ledger | str | None = None
    ) -> BudgetCallback:
        """Load the role map and crew limit from a budget YAML file: ``path``,
        else ``$CREW_BUDGET_CONFIG``, else ``./budgets.yaml`` (``find_config``)."""
        found = find_config(path)
        if found is None:
            raise ConfigError("no budget file: pass BudgetCallback.from_yaml('budgets.yaml'), "
                              "set CREW_BUDGET_CONFIG, or put a budgets.yaml in the working "
                              "directory", source="BudgetCallback.from_yaml")
        return cls(found, ledger)

    # -- attaching -------------------------------------------------------------

    def attach(self, crew: Any) -> Any:
        """Guard every LLM call of ``crew``'s agents (and manager); returns ``crew``.

        Every agent's role is checked first: if any matches no budget (and
        there is no ``default_role`` / ``unknown_roles: allow``), this raises
        ``CrewUnknownRole`` listing them all, and nothing is attached.
        """
        check_crew_roles(self.guard.config, crew)
        with self._lock:
            for agent in list(getattr(crew, "agents", []) or []):
                self._guard_agent(agent)
            manager = getattr(crew, "manager_agent", None)
            if manager is not None:
                self._guard_agent(manager)
            if getattr(crew, "manager_llm", None) is not None:
                # Role None: the manager agent CrewAI builds at kickoff names it.
                self._swap(crew, "manager_llm", role=None)
            callbacks = getattr(crew, "before_kickoff_callbacks", None)
            if isinstance(callbacks, list) and self._on_kickoff not in callbacks:
                callbacks.append(self._on_kickoff)
            self._crews.append(crew)
        return crew

    def wrap(self, llm: BaseLLM | str, role: str | None = None) -> BudgetLLM:
        """A ``BudgetLLM`` around ``llm`` that uses this callback's guard."""
        if isinstance(llm, BudgetLLM):
            llm.bind(self.guard)
            self._bound.append(llm)
            return llm
        return BudgetLLM(llm=llm, role=role, guard=self.guard)

    def detach(self) -> None:
        """Undo ``attach``: original LLMs back, inline-limit BudgetLLMs unbound."""
        with self._lock:
            for obj, attr, original in reversed(self._undo):
                setattr(obj, attr, original)
            for llm in self._bound:
                llm.unbind()
            for crew in self._crews:
                callbacks = getattr(crew, "before_kickoff_callbacks", None)
                if isinstance(callbacks, list) and self._on_kickoff in callbacks:
                    callbacks.remove(self._on_kickoff)
            self._undo.clear()
            self._bound.clear()
            self._crews.clear()

    def _guard_agent(self, agent: Any) -> None:
        role = str(agent.role)
        self._swap(agent, "llm", role=role)
        if getattr(agent, "function_calling_llm", None) is not None:
            self._swap(agent, "function_calling_llm", role=role)

    def _swap(self, obj: Any, attr: str, role: str | None) -> None:
        current = getattr(obj, attr, None)
        if isinstance(current, BudgetLLM):
            current.bind(self.guard)
            self._bound.append(current)
            return
        if current is None or isinstance(current, str):
            from crewai.utilities.llm_utils import create_llm

            current_llm = create_llm(current)
        else:
            current_llm = current
        if not isinstance(current_llm, BaseLLM):
            raise TypeError(
                f"{type(obj).__name__}.{attr} is {type(current_llm).__name__}, not a CrewAI "
                "BaseLLM; crew-budget can only guard CrewAI LLMs"
            )
        setattr(obj, attr, BudgetLLM(llm=current_llm, role=role, guard=self.guard))
        self._undo.append((obj, attr, current))

    def _on_kickoff(self, inputs: Any) -> Any:
        self._run_started = self.guard.ledger.now()
        return inputs

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
        run = summarize([r for r in records if r.ts >= self._run_started])
        today = summarize([r for r in records if r.ts >= day_start])
        return BudgetSummary(crew_name, run, today, tuple(guard.status()))
