"""Did a failed LLM call reach the provider? One classification for every adapter.

A reservation must end as released (the provider did no billable work) or
charged (it may have): releasing a call the provider billed under-counts,
which the ledger must never do. Adapters see exceptions from several
stacks (httpx, the openai and anthropic SDKs, litellm, CrewAI), so the rule
looks at the whole ``__cause__``/``__context__`` chain by class name and
``status_code``, never importing those libraries.
"""

from __future__ import annotations

from typing import Literal

from crew_budget.errors import BudgetExceeded

__all__ = ["FailureKind", "classify_failure"]

FailureKind = Literal["not_sent", "maybe_billed", "unknown"]

# Never reached the provider: nothing to bill.
_NOT_SENT = frozenset(
    {
        "ConnectTimeout",
        "ConnectError",
        "PoolTimeout",  # httpx: no connection
        "HookAborted",  # CrewAI: a hook stopped the call
    }
)
# Sent, then timed out or broke off while the answer was being read: the
# provider may have generated, and billed, tokens.
_MAYBE_BILLED = frozenset(
    {
        "ReadTimeout",
        "WriteTimeout",
        "APITimeoutError",
        "TimeoutError",
        "Timeout",
        "ReadError",
        "RemoteProtocolError",
        "IncompleteRead",
        "ChunkedEncodingError",
    }
)


def classify_failure(exc: BaseException) -> FailureKind:
    """``not_sent``, ``maybe_billed`` or ``unknown`` for a call that raised ``exc``.

    - ``not_sent``: our own block, a hook's, no connection, or an HTTP error
      status (providers do not bill refused or failed requests).
    - ``maybe_billed``: a timeout or a stream broken off after sending.
    - ``unknown``: anything else. An adapter that sees every response's usage
      as it arrives (CrewAI) may release these; one that does not must charge
      them (over-count, never under-count).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BudgetExceeded):
            return "not_sent"
        names = {c.__name__ for c in type(current).__mro__}
        if names & _NOT_SENT:
            return "not_sent"
        if names & _MAYBE_BILLED:
            return "maybe_billed"
        status = getattr(current, "status_code", None)
        if isinstance(status, int) and status >= 400:
            return "not_sent"
        if "APIConnectionError" in names or isinstance(current, ConnectionRefusedError):
            return "not_sent"
        current = current.__cause__ or current.__context__
    return "unknown"
