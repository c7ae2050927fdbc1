"""Pre-flight prompt-token estimate (placeholder interface; see tokens.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from crew_budget.pricing import Price

__all__ = ["Estimator"]


class Estimator:
    """Counts the prompt tokens a provider will bill for a request."""

    def __init__(self, *, cache_size: int = 16384) -> None:
        self.cache_size = cache_size

    def count_prompt(
        self,
        model: str,
        price: Price,
        messages: Sequence[Any],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        system: Any = None,
        extra: Mapping[str, Any] | None = None,
    ) -> int:
        text = str(system or "") + "".join(str(m) for m in messages) + str(tools or "")
        return len(text) // 3 + 8 * len(messages) + 3

    def calibrate(self, model: str, estimated: int, actual: int) -> None:
        """Learn from a settled call how far off the estimate was."""
