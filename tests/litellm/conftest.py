"""Shared pieces of the LiteLLM tests: a registered BudgetLogger, prices, polling."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import litellm
import pytest

from crew_budget import Guard
from crew_budget.litellm import BudgetLogger
from tests.fixtures.http_replay import CASSETTES

LL = CASSETTES / "litellm"

# gpt-4o-mini in litellm's bundled price map: $0.15 input / $0.60 output per 1M
# tokens (input_cost_per_token 1.5e-07, output_cost_per_token 6e-07).
IN = Decimal("0.00000015")
OUT = Decimal("0.0000006")


def cost(usage: dict[str, Any]) -> Decimal:
    """Dollars of one recorded OpenAI ``usage``, by hand from the price list."""
    return usage["prompt_tokens"] * IN + usage["completion_tokens"] * OUT


BUDGETS: dict[str, Any] = {
    "roles": {
        "researcher": {"daily": "1.00", "max_output_tokens": 256},
        "writer": {"daily": "1.00", "max_output_tokens": 256},
        "broke": {"daily": "0.000001"},  # one micro-dollar: any call is over
    },
}


def spent(guard: Guard, scope: str, window: str = "day") -> Decimal:
    for row in guard.status():
        if row.scope == scope and row.window == window:
            return row.spent
    raise AssertionError(f"no {scope} {window} bucket")


def outcomes(guard: Guard) -> list[str]:
    return [r.outcome for r in guard.ledger.records()]


def unregister(logger: BudgetLogger) -> None:
    # function_setup copies litellm.callbacks into litellm's per-event lists.
    litellm.logging_callback_manager.remove_callback_from_all_lists(logger)
    for name in ("callbacks", "success_callback", "failure_callback", "_async_success_callback",
                 "_async_failure_callback", "input_callback", "_async_input_callback"):
        lst = getattr(litellm, name, None)
        if isinstance(lst, list):
            lst[:] = [cb for cb in lst if cb is not logger]


@pytest.fixture
def guard() -> Iterator[Guard]:
    g = Guard(BUDGETS, "memory://")
    yield g
    g.close()


@pytest.fixture
def logger(guard: Guard) -> Iterator[BudgetLogger]:
    budget_logger = BudgetLogger(guard)
    litellm.callbacks.append(budget_logger)
    try:
        yield budget_logger
    finally:
        unregister(budget_logger)
