"""Settles above the reservation are seen; no path lets output exceed the reserved cap.

Issue 9, item 4: a $0.0111 reservation settled at $0.5011 with no log, and a
request with ``n=20`` reserved one completion and settled twenty. Now an
overrun is charged as billed (the invoice is what counts) but logged with its
factor, counted, emitted as an ``overrun`` GuardEvent and exported as a
metric; and ``n``/``best_of`` reserve that many completions of output.

Prices: "m" is $1 per million input tokens and $10 per million output tokens
(configured here); "out" is output only, $10 per million; the LangChain tests
use gpt-4o-mini from litellm's bundled map ($0.15 / $0.60 per million).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from crew_budget import BudgetExceeded, Guard
from crew_budget.estimate import billed_completions
from crew_budget.guard import GuardEvent
from crew_budget.metrics import BudgetMetrics
from crew_budget.money import to_nano

PRICES = {"m": {"input_per_million": 1, "output_per_million": 10},
          "out": {"input_per_million": 0, "output_per_million": 10}}
MSG = [{"role": "user", "content": "hello there"}]
BACKENDS = ["memory", "sqlite", "redis"]


@pytest.fixture(params=BACKENDS)
def guard(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Guard]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = str(request.getfixturevalue("redis_url"))
    g = Guard({"roles": {"r": {"daily": 10, "max_output_tokens": 300}}, "prices": PRICES}, url)
    yield g
    g.close()


# -- overrun ----------------------------------------------------------------------------


def test_overrun_is_charged_as_billed_logged_counted_and_emitted(
    guard: Guard, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[GuardEvent] = []
    guard.add_listener(events.append)
    metrics = BudgetMetrics(guard)
    ticket = guard.preflight("r", "m", MSG, max_tokens=1000)
    reserved = to_nano(ticket.estimate)
    assert reserved == 10_000_000 + ticket.prompt_tokens * 1000  # $0.01 + the prompt at $1/M
    # The numbers: 1,100 prompt + 50,000 output tokens = $0.0011 + $0.50.
    with caplog.at_level(logging.WARNING, logger="crew_budget"):
        s = guard.settle(ticket, {"prompt_tokens": 1100, "completion_tokens": 50_000})
    assert (s.state, s.applied, s.cost) == ("settled", True, Decimal("0.5011"))
    (st,) = guard.status("r")
    assert (st.spent, st.reserved) == (Decimal("0.5011"), Decimal(0))
    assert guard.counters == {"overruns": 1, "usage_errors": 0, "dropped_settles": 0}
    assert [e.outcome for e in events] == ["allowed", "settled", "overrun"]
    over = events[-1]
    assert (over.cost, over.estimate, over.role, over.model) == (
        Decimal("0.5011"), ticket.estimate, "r", "m")
    assert over.ticket is ticket
    factor = Decimal("0.5011") / ticket.estimate
    (line,) = [r.getMessage() for r in caplog.records if "OVERRUN" in r.getMessage()]
    assert f"settled at $0.5011, {factor:.2f}x its reservation of ${ticket.estimate}" in line
    assert 49 < factor < 51
    # The counter the metrics module exports.
    families = {f.name: f for f in metrics.collect()}
    assert [(x.labels, x.value) for x in families["crew_budget_overruns"].samples
            if x.name.endswith("_total")] == [({"role": "r", "model": "m"}, 1.0)]
    # A repeated settle changes nothing and is not a second overrun.
    assert guard.settle(ticket, {"prompt_tokens": 1100, "completion_tokens": 50_000}).applied \
        is False
    assert guard.counters["overruns"] == 1
    assert [e.outcome for e in events][-1] == "settled"
    metrics.close()


def test_a_settle_within_the_reservation_is_no_overrun(guard: Guard) -> None:
    events: list[GuardEvent] = []
    guard.add_listener(events.append)
    ticket = guard.preflight("r", "out", MSG, max_tokens=300)
    assert ticket.estimate == Decimal("0.003")
    s = guard.settle(ticket, {"prompt_tokens": 50, "completion_tokens": 300})  # exactly the cap
    assert s.cost == Decimal("0.003")
    assert guard.counters == {"overruns": 0, "usage_errors": 0, "dropped_settles": 0}
    assert [e.outcome for e in events] == ["allowed", "settled"]


def test_metrics_read_overruns_from_the_ledgers_records(guard: Guard) -> None:
    """``source="ledger"`` (the ``crew-budget metrics`` server) sees other
    processes' overruns: a settled record costing more than its estimate."""
    reader = BudgetMetrics(guard, source="ledger", since=guard.ledger.now() - 5)
    ticket = guard.preflight("r", "out", MSG, max_tokens=10)
    guard.settle(ticket, {"prompt_tokens": 5, "completion_tokens": 11})  # 11 > 10 tokens
    families = {f.name: f for f in reader.collect()}
    assert [(x.labels, x.value) for x in families["crew_budget_overruns"].samples
            if x.name.endswith("_total")] == [({"role": "r", "model": "out"}, 1.0)]
    assert [x.value for x in families["crew_budget_usage_errors"].samples
            if x.name.endswith("_total")] == [0.0]


# -- n / best_of reserve every completion -------------------------------------------------


def test_n3_reserves_three_times_the_output_cap(guard: Guard) -> None:
    one = guard.preflight("r", "out", MSG, max_tokens=300)
    three = guard.preflight("r", "out", MSG, max_tokens=300, extra={"n": 3})
    assert one.estimate == Decimal("0.003")  # 300 x $10/M
    assert three.estimate == Decimal("0.009")  # 3 x 300 x $10/M, exactly
    assert (three.output_tokens_reserved, three.max_tokens) == (900, None)
    # No cap in the request: the role's 300 is injected per completion, 900 reserved.
    injected = guard.preflight("r", "out", MSG, extra={"n": 3})
    assert (injected.max_tokens, injected.output_tokens_reserved) == (300, 900)
    assert injected.estimate == Decimal("0.009")
    (st,) = guard.status("r")
    assert st.reserved == Decimal("0.021")
    # Three completions of 300 tokens, prompt billed once: no overrun.
    s = guard.settle(three, {"prompt_tokens": 9, "completion_tokens": 900})
    assert s.cost == Decimal("0.009")
    assert guard.counters["overruns"] == 0


def test_prompt_is_reserved_once_for_n_completions(guard: Guard) -> None:
    one = guard.preflight("r", "m", MSG, max_tokens=100)
    five = guard.preflight("r", "m", MSG, max_tokens=100, extra={"n": 5})
    prompt = Decimal(one.prompt_tokens) / 10**6
    assert one.prompt_tokens == five.prompt_tokens > 0
    assert one.estimate == prompt + Decimal("0.001")
    assert five.estimate == prompt + Decimal("0.005")  # 5 x 100 x $10/M, prompt once


@pytest.mark.parametrize(("extra", "completions"), [
    ({"n": 3}, 3),
    ({"n": 2, "best_of": 5}, 5),  # billed for best_of candidates, n of them returned
    ({"best_of": 4}, 4),
    ({"candidate_count": 2}, 2),  # Gemini
    ({"n": 1}, 1),
    ({"n": 3.0}, 3),
    ({"n": True}, 1),
    ({"n": 0}, 1),
    ({"n": "3"}, 1),  # the provider refuses it
    ({"n": float("inf")}, 1),
    ({}, 1),
    (None, 1),
])
def test_billed_completions(extra: dict[str, Any] | None, completions: int) -> None:
    assert billed_completions(extra) == completions


def test_n_20_cannot_cross_the_budget_by_twenty_completions() -> None:
    """The issue's proxy case, in the guard: ``n=20`` against $0.25 reserves
    twenty completions, so it is blocked instead of settling at $0.51."""
    guard = Guard({"roles": {"r": {"daily": "0.25"}}, "prices": PRICES}, "memory://")
    with pytest.raises(BudgetExceeded) as info:
        guard.preflight("r", "out", MSG, max_tokens=2500, extra={"n": 20})
    assert info.value.estimate == Decimal("0.5")  # 20 x 2,500 x $10/M
    assert guard.preflight("r", "out", MSG, max_tokens=2500).estimate == Decimal("0.025")


# -- adapters pass n through --------------------------------------------------------------


def _blocked_estimate(run: Any) -> Decimal:
    with pytest.raises(BudgetExceeded) as info:
        run()
    return info.value.estimate


def test_langchain_handler_reserves_n_completions() -> None:
    from langchain_openai import ChatOpenAI

    from crew_budget.langchain import BudgetCallbackHandler
    from tests.fixtures.http_replay import replay
    from tests.langchain.conftest import BUDGETS, LC, OUT

    guard = Guard(BUDGETS, "memory://")
    handler = BudgetCallbackHandler(role="broke", guard=guard)  # $0.000001: every call blocked

    def model(**kw: Any) -> ChatOpenAI:
        return ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", max_retries=0, max_tokens=64,
                          callbacks=[handler], **kw)

    with replay(LC / "chat.yaml") as cassette:
        one = _blocked_estimate(lambda: model().invoke("Name the capital of France."))
        three = _blocked_estimate(lambda: model(n=3).invoke("Name the capital of France."))
    assert cassette.play_count == 0
    assert three - one == 2 * 64 * OUT == Decimal("0.0000768")
    guard.close()


def test_langchain_middleware_reserves_n_completions() -> None:
    from langchain.agents import create_agent
    from langchain_openai import ChatOpenAI

    from crew_budget.langchain import BudgetMiddleware
    from tests.fixtures.http_replay import replay
    from tests.langchain.conftest import BUDGETS, LC, OUT

    guard = Guard(BUDGETS, "memory://")
    mw = BudgetMiddleware(role="broke", guard=guard, exit_behavior="error")
    ask = {"messages": [{"role": "user", "content": "What is the weather in Lisbon?"}]}

    def run(**kw: Any) -> Any:
        model = ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", max_retries=0, **kw)
        return create_agent(model, [], middleware=[mw]).invoke(ask)

    with replay(LC / "agent_tools.yaml") as cassette:
        one = _blocked_estimate(run)
        three = _blocked_estimate(lambda: run(n=3))
    assert cassette.play_count == 0
    # No cap: the default 4,096 output tokens are injected per completion.
    assert three - one == 2 * 4096 * OUT == Decimal("0.0049152")
    guard.close()


# -- a request's own cap must be one ------------------------------------------------------


@pytest.mark.parametrize("cap", [-50, 0, 1.5, True, "100", 10**10, float("nan"), float("inf")],
                         ids=["negative", "zero", "fraction", "bool", "string", "huge", "nan",
                              "inf"])
def test_a_max_tokens_that_is_no_cap_is_refused_before_reserving(cap: Any) -> None:
    from crew_budget.errors import AmountError

    guard = Guard({"roles": {"r": {"daily": 10}}, "prices": PRICES}, "memory://")
    with pytest.raises(AmountError) as info:
        guard.preflight("r", "m", [{"role": "user", "content": "x" * 4000}], max_tokens=cap)
    assert f"max_tokens={cap!r} is not a whole number of tokens from 1 to 1,000,000,000" \
        in str(info.value)
    assert "it was not sent" in str(info.value)
    (st,) = guard.status("r")
    assert (st.spent, st.reserved) == (Decimal(0), Decimal(0))
    assert guard.ledger.records() == []
    # A whole float is a cap (JSON decoders produce them).
    assert guard.preflight("r", "out", MSG, max_tokens=100.0).estimate == Decimal("0.001")
