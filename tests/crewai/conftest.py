"""Fixtures for the CrewAI adapter tests: dummy keys, replay, prices.

Every test here drives the real CrewAI (native OpenAI / Anthropic classes,
real agents and crews); only HTTP is replayed from ``cassettes/crewai``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from decimal import Decimal

import pytest

# Prices from litellm's bundled map (model_prices_and_context_window_backup.json),
# USD per token. test_prices_are_the_maps pins them, so a map update that
# changes them fails loudly instead of silently moving every expectation.
GPT_4O_MINI = {"input": Decimal("0.00000015"), "output": Decimal("0.0000006"),
               "cached": Decimal("0.000000075")}
GPT_4O = {"input": Decimal("0.0000025"), "output": Decimal("0.00001"),
          "cached": Decimal("0.00000125")}
HAIKU_4_5 = {"input": Decimal("0.000001"), "output": Decimal("0.000005"),
             "cache_read": Decimal("0.0000001"), "cache_write": Decimal("0.00000125")}


def openai_cost(usage: dict[str, object], price: dict[str, Decimal]) -> Decimal:
    """OpenAI bills prompt_tokens (cached ones at the cached rate) + completion_tokens."""
    details = usage.get("prompt_tokens_details") or {}
    assert isinstance(details, dict)
    cached = int(details.get("cached_tokens") or 0)
    prompt = int(usage["prompt_tokens"])  # type: ignore[call-overload]
    completion = int(usage["completion_tokens"])  # type: ignore[call-overload]
    return ((prompt - cached) * price["input"] + cached * price["cached"]
            + completion * price["output"])


def anthropic_cost(usage: dict[str, object], price: dict[str, Decimal]) -> Decimal:
    """Anthropic bills input_tokens, cache reads and cache writes separately, + output."""
    def n(key: str) -> int:
        return int(usage.get(key) or 0)  # type: ignore[call-overload]
    return (n("input_tokens") * price["input"]
            + n("cache_read_input_tokens") * price["cache_read"]
            + n("cache_creation_input_tokens") * price["cache_write"]
            + n("output_tokens") * price["output"])


@pytest.fixture(autouse=True)
def _dummy_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """CrewAI's native classes refuse to build without a key; nothing is sent anyway."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    yield


@pytest.fixture(autouse=True)
def _no_attachments_left() -> Iterator[None]:
    """Each test starts with no crew attached: a plain run is really plain."""
    from crew_budget.crewai._gate import forget_all

    forget_all()
    yield
    forget_all()


@pytest.fixture(autouse=True)
def _quiet_crewai() -> Iterator[None]:
    # CrewAI logs a deliberate budget stop as a listener error; keep output readable.
    logger = logging.getLogger("crewai.flow.runtime")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)
