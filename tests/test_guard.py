"""Guard: estimate, reserve, settle; and the policies around them.

Dollar figures come from litellm's bundled price map (gpt-4o-mini: $0.15/M
input, $0.075/M cached input, $0.60/M output) or from price overrides set in
the test, and are worked out by hand in the comments.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest

from crew_budget import (
    BudgetExceeded,
    Guard,
    LedgerUnavailable,
    UnknownModelError,
)
from crew_budget.ledger import Bucket, BucketState, Denial, Reservation, ReserveRequest
from crew_budget.ledger.memory import MemoryLedger
from crew_budget.usage import Usage

MSG = [{"role": "user", "content": "hello"}]
OUT_ONLY = {"m": {"input_per_million": 0, "output_per_million": 10}}  # $0.00001 per output token


def test_max_tokens_is_injected_from_the_role_cap_when_the_request_has_none() -> None:
    guard = Guard(
        {"roles": {"r": {"daily": 1, "max_output_tokens": 300}}, "prices": OUT_ONLY}, "memory://"
    )
    ticket = guard.preflight("r", "m", MSG)
    assert ticket.max_tokens == 300
    assert ticket.output_tokens_reserved == 300
    assert ticket.estimate == Decimal("0.003")  # 300 x $10/M
    explicit = guard.preflight("r", "m", MSG, max_tokens=50)
    assert explicit.max_tokens is None
    assert explicit.estimate == Decimal("0.0005")
    (st,) = guard.status()
    assert st.reserved == Decimal("0.0035")


def test_injected_cap_never_exceeds_the_models_own_output_limit() -> None:
    guard = Guard({"default_max_output_tokens": 10**6, "roles": {"r": {}}}, "memory://")
    ticket = guard.preflight("r", "gpt-4o-mini", MSG)
    assert ticket.max_tokens == 16384  # litellm's max_output_tokens for gpt-4o-mini


def test_settle_charges_usage_at_the_providers_prices() -> None:
    guard = Guard({"roles": {"r": {"daily": 1}}}, "memory://")
    ticket = guard.preflight("r", "gpt-4o-mini", MSG, max_tokens=100)
    # OpenAI usage: 1000 prompt tokens of which 400 cached, 100 completion.
    s = guard.settle(
        ticket,
        {
            "prompt_tokens": 1000,
            "completion_tokens": 100,
            "prompt_tokens_details": {"cached_tokens": 400},
        },
    )
    # 600 x 0.15/M + 400 x 0.075/M + 100 x 0.60/M = 0.00009 + 0.00003 + 0.00006
    assert s.cost == Decimal("0.00018")
    assert (s.state, s.applied) == ("settled", True)
    assert guard.settle(ticket, {"prompt_tokens": 1, "completion_tokens": 1}).applied is False
    (st,) = guard.status()
    assert (st.spent, st.reserved) == (Decimal("0.00018"), Decimal(0))


def test_release_costs_nothing_and_frees_the_reservation() -> None:
    guard = Guard({"roles": {"r": {"daily": "0.001"}}, "prices": OUT_ONLY}, "memory://")
    ticket = guard.preflight("r", "m", MSG, max_tokens=100)  # $0.001: the whole budget
    with pytest.raises(BudgetExceeded):
        guard.preflight("r", "m", MSG, max_tokens=1)
    assert guard.release(ticket).cost == 0
    guard.preflight("r", "m", MSG, max_tokens=100)


def test_budget_exceeded_carries_the_facts_and_says_them_in_one_line() -> None:
    guard = Guard({"roles": {"researcher": {"daily": "0.01"}}, "prices": OUT_ONLY}, "memory://")
    t = guard.preflight("researcher", "m", MSG, max_tokens=800)
    guard.settle(t, {"prompt_tokens": 5, "completion_tokens": 700})  # $0.007 spent
    guard.preflight("researcher", "m", MSG, max_tokens=200)  # $0.002 reserved
    with pytest.raises(BudgetExceeded) as info:
        guard.preflight("researcher", "m", MSG, max_tokens=200)  # $0.002 more: 0.011
    e = info.value
    assert (e.role, e.scope, e.window, e.model) == ("researcher", "role:researcher", "day", "m")
    assert (e.limit, e.spent, e.reserved, e.estimate) == (
        Decimal("0.01"),
        Decimal("0.007"),
        Decimal("0.002"),
        Decimal("0.002"),
    )
    text = str(e)
    assert "\n" not in text
    for fact in (
        "'researcher'",
        "role:researcher day budget",
        "$0.01",
        "$0.007 spent",
        "$0.002 reserved",
        "$0.001 left",
        "estimated at $0.002",
        "not sent",
    ):
        assert fact in text
    clone = pickle.loads(pickle.dumps(e))
    assert type(clone) is BudgetExceeded
    assert (clone.role, clone.spent, str(clone)) == (e.role, e.spent, text)


def test_crew_limit_is_shared_by_every_role_and_blocks_all_or_nothing() -> None:
    guard = Guard(
        {
            "crew": {"name": "c", "daily": "0.003"},
            "roles": {"a": {"daily": 1}, "b": {"daily": 1}},
            "prices": OUT_ONLY,
        },
        "memory://",
    )
    guard.settle(
        guard.preflight("a", "m", MSG, max_tokens=200),
        {"prompt_tokens": 1, "completion_tokens": 200},
    )
    guard.settle(
        guard.preflight("b", "m", MSG, max_tokens=100),
        {"prompt_tokens": 1, "completion_tokens": 100},
    )
    with pytest.raises(BudgetExceeded) as info:
        guard.preflight("b", "m", MSG, max_tokens=1)
    assert info.value.scope == "crew:c"
    by_scope = {s.scope: s for s in guard.status()}
    assert by_scope["role:b"].spent == Decimal("0.001")
    assert by_scope["role:b"].reserved == 0  # the denied call charged nothing
    assert by_scope["crew:c"].spent == Decimal("0.003")


def test_unknown_model_is_an_error_not_free_and_overrides_fix_it() -> None:
    guard = Guard({"roles": {"r": {"daily": 1}}}, "memory://")
    with pytest.raises(UnknownModelError) as info:
        guard.preflight("r", "acme-private-llm-7b", MSG, max_tokens=10)
    assert "prices:" in str(info.value)
    assert guard.status()[0].reserved == 0
    with pytest.raises(UnknownModelError, match="Did you mean: gpt-4o-mini"):
        guard.preflight("r", "gpt-4o-minii", MSG)
    fixed = Guard(
        {
            "roles": {"r": {"daily": 1}},
            "prices": {
                "acme-private-llm-7b": {
                    "input_per_million": "0.80",
                    "output_per_million": 4,
                    "provider": "anthropic",
                }
            },
        },
        "memory://",
    )
    t = fixed.preflight("r", "acme-private-llm-7b", MSG, max_tokens=10)
    cost = fixed.settle(t, {"input_tokens": 1000, "output_tokens": 100}).cost
    assert cost == Decimal("0.0012")  # 1000 x 0.80/M + 100 x 4/M


def test_unreadable_usage_is_charged_at_the_reservation_not_zero(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = Guard({"roles": {"r": {"daily": 1}}, "prices": OUT_ONLY}, "memory://")
    t = guard.preflight("r", "m", MSG, max_tokens=500)
    with caplog.at_level(logging.ERROR, "crew_budget"):
        s = guard.settle(t, {"id": "chatcmpl-1", "choices": []})
    assert s.cost == Decimal("0.005") == t.estimate
    assert "no token counts" in caplog.text


def test_budgets_come_from_config_never_from_request_metadata() -> None:
    """Invariant 8: metadata can describe a call, not raise its limit."""
    guard = Guard({"roles": {"r": {"daily": "0.001"}}, "prices": OUT_ONLY}, "memory://")
    sneaky = {"daily_usd": 1000, "crew_budget_limit": 1000, "roles": {"r": {"daily": 1000}}}
    guard.preflight("r", "m", MSG, max_tokens=100, metadata=sneaky)
    with pytest.raises(BudgetExceeded) as info:
        guard.preflight("r", "m", MSG, max_tokens=100, metadata=sneaky)
    assert info.value.limit == Decimal("0.001")


def test_limit_role_tightens_but_never_loosens() -> None:
    guard = Guard({"roles": {"r": {"daily": "0.002"}}, "prices": OUT_ONLY}, "memory://")
    guard.limit_role("r", daily_usd=100)  # looser: ignored
    guard.preflight("r", "m", MSG, max_tokens=200)
    with pytest.raises(BudgetExceeded):
        guard.preflight("r", "m", MSG, max_tokens=1)
    guard.limit_role("other", daily_usd="0.001")
    with pytest.raises(BudgetExceeded):
        guard.preflight("other", "m", MSG, max_tokens=101)


class FlakyLedger(MemoryLedger):
    """A memory ledger whose connection can be cut, to test the guard's policy.

    (The real outage, against a real redis-server, is in
    tests/ledger/test_redis_specific.py.)
    """

    down = False

    def _check(self) -> None:
        if self.down:
            raise LedgerUnavailable(self.url, "connection refused")

    def reserve(self, request: ReserveRequest) -> Reservation | Denial:
        self._check()
        return super().reserve(request)

    def settle(self, reservation_id: str, cost_nano: int, usage: Usage) -> Any:
        self._check()
        return super().settle(reservation_id, cost_nano, usage)

    def release(self, reservation_id: str) -> Any:
        self._check()
        return super().release(reservation_id)

    def status(self, buckets: Sequence[Bucket]) -> list[BucketState]:
        self._check()
        return super().status(buckets)


def test_fail_closed_by_default() -> None:
    ledger = FlakyLedger("memory://flaky")
    guard = Guard({"roles": {"r": {"daily": 1}}, "prices": OUT_ONLY}, ledger)
    ledger.down = True
    with pytest.raises(LedgerUnavailable) as info:
        guard.preflight("r", "m", MSG, max_tokens=10)
    assert "memory://flaky is unreachable" in str(info.value)
    assert "fail_open: true" in str(info.value)


def test_fail_open_is_explicit_and_logs_every_unguarded_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = FlakyLedger()
    guard = Guard({"roles": {"r": {"daily": 1}}, "prices": OUT_ONLY, "fail_open": True}, ledger)
    ledger.down = True
    with caplog.at_level(logging.WARNING, "crew_budget"):
        t = guard.preflight("r", "m", MSG, max_tokens=10)
    assert t.guarded is False
    assert "UNGUARDED" in caplog.text
    ledger.down = False
    s = guard.settle(t, {"prompt_tokens": 1, "completion_tokens": 10})
    assert s.state == "unguarded"
    (rec,) = ledger.records()
    assert (rec.outcome, rec.cost_nano) == ("unguarded", 100_000)


def test_settle_during_outage_is_retried_once_the_ledger_is_back() -> None:
    ledger = FlakyLedger()
    guard = Guard({"roles": {"r": {"daily": 1}}, "prices": OUT_ONLY}, ledger)
    t = guard.preflight("r", "m", MSG, max_tokens=100)
    ledger.down = True
    assert guard.settle(t, {"prompt_tokens": 1, "completion_tokens": 40}).state == "pending"
    ledger.down = False
    guard.preflight("r", "m", MSG, max_tokens=1)  # any later operation flushes
    assert ledger.reservation_state(t.reservation_id) == "settled"
    by_scope = {s.scope: s for s in guard.status()}
    assert by_scope["role:r"].spent == Decimal("0.0004")  # 40 x $10/M, charged once


def test_guard_follows_the_ledger_clock_when_its_own_is_skewed() -> None:
    day = 86400.0
    ledger = MemoryLedger(clock=lambda: 1_764_000_000.0)  # 2025-11-24T16:00Z
    guard = Guard(
        {"roles": {"r": {"daily": 1}}, "prices": OUT_ONLY},
        ledger,
        clock=lambda: 1_764_000_000.0 + 2 * day,
    )
    t = guard.preflight("r", "m", MSG, max_tokens=100)
    guard.settle(t, {"prompt_tokens": 1, "completion_tokens": 100})
    (st,) = guard.status()
    assert st.period == "2025-11-24"
    assert st.spent == Decimal("0.001")
