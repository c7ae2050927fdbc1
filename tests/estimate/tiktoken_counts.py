"""Independent token counts for the estimate tests: tiktoken's own encodings,
read from the copy litellm ships (offline), so an expected count in a test is
tiktoken's count of the text the test writes out, never the estimator's."""

from __future__ import annotations

import importlib.util
import os
from decimal import Decimal

import tiktoken

from crew_budget.pricing import Price

_LITELLM = importlib.util.find_spec("litellm")
assert _LITELLM is not None and _LITELLM.origin is not None
os.environ.setdefault(
    "TIKTOKEN_CACHE_DIR",
    os.path.join(os.path.dirname(_LITELLM.origin), "litellm_core_utils", "tokenizers"),
)
O200K = tiktoken.get_encoding("o200k_base")
CL100K = tiktoken.get_encoding("cl100k_base")


def o200k(text: str) -> int:
    return len(O200K.encode(text))


def cl100k(text: str) -> int:
    return len(CL100K.encode(text))


def price(model: str, provider: str) -> Price:
    """A placeholder price: these tests compare token counts, not dollars."""
    return Price(model, provider, Decimal("1e-6"), Decimal("2e-6"))
