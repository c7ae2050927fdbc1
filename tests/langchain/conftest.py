"""Shared pieces of the LangChain tests: a guard on an in-memory ledger, prices, money."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from crew_budget import Guard
from tests.fixtures.http_replay import CASSETTES

LC = CASSETTES / "langchain"

# gpt-4o-mini in genai-prices' bundled snapshot (the project's price source;
# litellm's map has the same: input 1.5e-07, output 6e-07, cache read 7.5e-08),
# i.e. OpenAI's list price of $0.15 / $0.60 / $0.075 per million tokens.
IN = Decimal("0.00000015")
OUT = Decimal("0.0000006")
CACHED = Decimal("0.000000075")


def cost(usage: dict[str, Any]) -> Decimal:
    """Dollars of one recorded OpenAI ``usage``, by hand from the price list."""
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return ((usage["prompt_tokens"] - cached) * IN + cached * CACHED
            + usage["completion_tokens"] * OUT)


def spent(guard: Guard, scope: str, window: str = "day") -> Decimal:
    for row in guard.status():
        if row.scope == scope and row.window == window:
            return row.spent
    raise AssertionError(f"no {scope} {window} bucket in {guard.status()}")


def reserved(guard: Guard, scope: str, window: str = "day") -> Decimal:
    for row in guard.status():
        if row.scope == scope and row.window == window:
            return row.reserved
    raise AssertionError(f"no {scope} {window} bucket")


def outcomes(guard: Guard) -> list[str]:
    return [r.outcome for r in guard.ledger.records()]


BUDGETS: dict[str, Any] = {
    "roles": {
        "researcher": {"daily": "1.00", "max_output_tokens": 256},
        "writer": {"daily": "1.00", "max_output_tokens": 256},
        "broke": {"daily": "0.000001"},  # one micro-dollar: any call is over
    },
}


@pytest.fixture
def guard() -> Iterator[Guard]:
    g = Guard(BUDGETS, "memory://")
    yield g
    g.close()


@pytest.fixture
def cassette_dir() -> Path:
    return LC
