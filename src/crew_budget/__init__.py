"""crew-budget: hard per-agent-role dollar budgets for LLM calls.

Every call is priced before it is sent, reserved atomically against every
budget it touches, and settled from the provider's actual usage::

    from crew_budget import Guard

    guard = Guard.from_config("budgets.yaml")
    ticket = guard.preflight(role="researcher", model="gpt-4o-mini", messages=msgs)
    response = client.chat.completions.create(..., max_tokens=ticket.max_tokens or ...)
    guard.settle(ticket, response.usage)

The core imports no agent framework; adapters live in ``crew_budget.crewai``,
``crew_budget.langchain`` and ``crew_budget.litellm``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crew_budget.config import (
        BudgetConfig,
        CrewLimits,
        Limits,
        ModelPrice,
        RoleBudget,
        load_config,
    )
    from crew_budget.errors import (
        BudgetExceeded,
        ConfigError,
        CrewBudgetError,
        LedgerError,
        LedgerReset,
        LedgerUnavailable,
        PricingError,
        ReservationError,
        RolePaused,
        UnknownModelError,
        UnknownRoleError,
        UsageError,
    )
    from crew_budget.guard import BudgetStatus, Guard, Settlement, Ticket
    from crew_budget.ledger import Ledger, SpendRecord, open_ledger
    from crew_budget.pricing import Price, PriceBook
    from crew_budget.runs import Run, current_run, run
    from crew_budget.usage import Usage, cost_of, parse_usage

# Public name -> defining module. Imported on first attribute access
# (PEP 562) so `import crew_budget` stays cheap: pydantic and the price map
# are paid for only by code that uses them.
_LAZY: dict[str, str] = {
    "BudgetConfig": "config",
    "CrewLimits": "config",
    "Limits": "config",
    "ModelPrice": "config",
    "RoleBudget": "config",
    "load_config": "config",
    "BudgetExceeded": "errors",
    "ConfigError": "errors",
    "CrewBudgetError": "errors",
    "LedgerError": "errors",
    "LedgerReset": "errors",
    "LedgerUnavailable": "errors",
    "PricingError": "errors",
    "ReservationError": "errors",
    "RolePaused": "errors",
    "UnknownModelError": "errors",
    "UnknownRoleError": "errors",
    "UsageError": "errors",
    "BudgetStatus": "guard",
    "Guard": "guard",
    "Settlement": "guard",
    "Ticket": "guard",
    "Ledger": "ledger",
    "SpendRecord": "ledger",
    "open_ledger": "ledger",
    "Price": "pricing",
    "PriceBook": "pricing",
    "Run": "runs",
    "current_run": "runs",
    "run": "runs",
    "Usage": "usage",
    "cost_of": "usage",
    "parse_usage": "usage",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'crew_budget' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"crew_budget.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.1.0"

# What wires the pieces together lives here, at the top: every Guard built
# from a config with an `alerts:` section starts its AlertManager (imported
# only then). See crew_budget.wiring for why the guard does not do it itself.
from crew_budget import wiring as _wiring  # noqa: E402 - after the lazy table on purpose

_wiring.add_guard_hook("crew_budget.alerts.wiring:start_alerts")
_wiring.add_guard_hook("crew_budget.otel:instrument_from_env")  # CREW_BUDGET_OTEL=1

__all__ = [
    "BudgetConfig",
    "BudgetExceeded",
    "BudgetStatus",
    "ConfigError",
    "CrewBudgetError",
    "CrewLimits",
    "Guard",
    "Ledger",
    "LedgerError",
    "LedgerReset",
    "LedgerUnavailable",
    "Limits",
    "ModelPrice",
    "Price",
    "PriceBook",
    "PricingError",
    "ReservationError",
    "RoleBudget",
    "RolePaused",
    "Run",
    "Settlement",
    "SpendRecord",
    "Ticket",
    "UnknownModelError",
    "UnknownRoleError",
    "Usage",
    "UsageError",
    "__version__",
    "cost_of",
    "current_run",
    "load_config",
    "open_ledger",
    "parse_usage",
    "run",
]
