"""One rule for "did a failed call reach the provider?" (crew_budget.failures).

The exceptions are the real ones the provider stacks raise (httpx, the
openai SDK, litellm), built by hand: a wrong answer either releases a call
the provider billed (under-count) or charges one it never saw.
"""

from __future__ import annotations

import httpx
import litellm
import openai
import pytest

from crew_budget import BudgetExceeded
from crew_budget.failures import classify_failure

REQ = httpx.Request("POST", "https://api.openai.com/v1/chat/completions")


def _status(code: int) -> openai.APIStatusError:
    return openai.APIStatusError("boom", response=httpx.Response(code, request=REQ), body=None)


def _chained(outer: Exception, inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as e:
            raise outer from e
    except Exception as caught:
        return caught


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("refused"), "not_sent"),
        (httpx.ConnectTimeout("no route"), "not_sent"),
        (openai.APIConnectionError(request=REQ), "not_sent"),
        (ConnectionRefusedError(), "not_sent"),
        (_status(500), "not_sent"),
        (_status(429), "not_sent"),
        (httpx.ReadTimeout("slow"), "maybe_billed"),
        (openai.APITimeoutError(request=REQ), "maybe_billed"),  # subclasses APIConnectionError
        (httpx.RemoteProtocolError("closed mid-stream"), "maybe_billed"),
        (litellm.Timeout("t", model="gpt-4o-mini", llm_provider="openai"), "maybe_billed"),
        (litellm.RateLimitError("r", model="gpt-4o-mini", llm_provider="openai"), "not_sent"),
        (_chained(RuntimeError("wrapped"), httpx.ReadTimeout("slow")), "maybe_billed"),
        (_chained(RuntimeError("wrapped"), httpx.ConnectError("refused")), "not_sent"),
        (ValueError("could not parse the answer"), "unknown"),
    ],
)
def test_classification(exc: BaseException, kind: str) -> None:
    assert classify_failure(exc) == kind


def test_our_own_block_never_reached_a_provider() -> None:
    from decimal import Decimal

    exc = BudgetExceeded(role="r", scope="role:r", window="day", period="p", limit=Decimal(1),
                         spent=Decimal(1), reserved=Decimal(0), estimate=Decimal("0.1"))
    assert classify_failure(exc) == "not_sent"
