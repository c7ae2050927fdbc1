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

from crew_budget.config import BudgetConfig, CrewLimits, Limits, ModelPrice, RoleBudget, load_config
from crew_budget.errors import (
    BudgetExceeded,
    ConfigError,
    CrewBudgetError,
    LedgerError,
    LedgerUnavailable,
    PricingError,
    ReservationError,
    UnknownModelError,
    UsageError,
)
from crew_budget.guard import BudgetStatus, Guard, Settlement, Ticket
from crew_budget.ledger import Ledger, SpendRecord, open_ledger
from crew_budget.pricing import Price, PriceBook
from crew_budget.usage import Usage, cost_of, parse_usage

__version__ = "0.1.0"

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
    "LedgerUnavailable",
    "Limits",
    "ModelPrice",
    "Price",
    "PriceBook",
    "PricingError",
    "ReservationError",
    "RoleBudget",
    "Settlement",
    "SpendRecord",
    "Ticket",
    "UnknownModelError",
    "Usage",
    "UsageError",
    "__version__",
    "cost_of",
    "load_config",
    "open_ledger",
    "parse_usage",
]
