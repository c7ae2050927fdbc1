"""BudgetLLM around CrewAI's native OpenAI and Anthropic classes.

Each test replays one hand-written cassette (see cassettes/README.md) and
checks three things: what went over the wire (the body VCR saw), how many
requests were sent, and the exact dollars the ledger holds. Expected dollars
are the cassette's ``usage`` times litellm's prices, written out by hand.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest
from crewai import LLM
from crewai.hooks.dispatch import HookAborted
from crewai.llms.base_llm import BaseLLM, call_stop_override
from crewai.llms.providers.anthropic.completion import AnthropicCompletion
from crewai.llms.providers.openai.completion import OpenAICompletion

from crew_budget import BudgetExceeded, ConfigError, Guard
from crew_budget.crewai import BudgetLLM, CrewBudgetExceeded
from crew_budget.guard import GuardEvent
from crew_budget.pricing import PriceBook
from tests.crewai.conftest import GPT_4O, GPT_4O_MINI, HAIKU_4_5, anthropic_cost, openai_cost
from tests.crewai.replay import cassette_usage, live_bodies, replay
from tests.crewai.scenarios import (
    ANALYST,
    ANTHROPIC_MODEL,
    MESSAGES,
    OPENAI_MODEL,
    REACT_MESSAGES,
    SEARCH_MESSAGES,
    SEARCH_TOOL,
    STOP,
    Advantage,
    analyst_llm,
    cached_messages,
)


def spent(llm: BudgetLLM, role: str = "analyst") -> Decimal:
    (day,) = [s for s in llm.guard.status(role) if s.scope == f"role:{role}"]
    assert day.reserved == 0, "a reservation was left open"
    return day.spent


def outcomes(llm: BudgetLLM) -> list[str]:
    return [r.outcome for r in llm.guard.ledger.records()]


def test_prices_are_the_maps() -> None:
    book = PriceBook()
    for model, price in (("gpt-4o-mini", GPT_4O_MINI), ("gpt-4o", GPT_4O)):
        p = book.get(model)
        assert (p.input, p.output, p.cached_input) == (
            price["input"], price["output"], price["cached"])
    h = book.get("claude-haiku-4-5")
    assert (h.input, h.output, h.cached_input, h.cache_write) == (
        HAIKU_4_5["input"], HAIKU_4_5["output"], HAIKU_4_5["cache_read"],
        HAIKU_4_5["cache_write"])


def test_wraps_the_native_classes_not_litellm() -> None:
    assert isinstance(analyst_llm(OPENAI_MODEL).inner, OpenAICompletion)
    assert isinstance(analyst_llm(ANTHROPIC_MODEL).inner, AnthropicCompletion)
    wrapped = BudgetLLM(llm=LLM(model="gpt-4o-mini"), role="analyst", config=ANALYST,
                        ledger="memory://")
    assert wrapped.model == "gpt-4o-mini" and wrapped.provider == "openai"
    assert wrapped.supports_function_calling() and wrapped.supports_stop_words()
    assert wrapped.get_context_window_size() == wrapped.inner.get_context_window_size() > 0


# -- OpenAI ------------------------------------------------------------------


def test_openai_call_injects_cap_and_settles_usage() -> None:
    llm = analyst_llm(OPENAI_MODEL)
    with replay("openai_call") as cas:
        answer = llm.call(MESSAGES)
    assert answer.startswith("Sodium-ion cells need no lithium")
    assert cas.play_count == 1
    (body,) = live_bodies(cas)
    # No cap in the request -> the role's max_output_tokens (300) is sent.
    assert body["max_completion_tokens"] == 300 and "max_tokens" not in body
    # usage 31 prompt + 17 completion at $0.15/M and $0.60/M:
    # 31 * 0.00000015 + 17 * 0.0000006 = 0.00000465 + 0.0000102
    assert spent(llm) == Decimal("0.00001485")
    assert spent(llm) == openai_cost(cassette_usage("openai_call")[0], GPT_4O_MINI)
    assert outcomes(llm) == ["settled"]


async def test_openai_acall() -> None:
    llm = analyst_llm(OPENAI_MODEL)
    with replay("openai_call") as cas:
        answer = await llm.acall(MESSAGES)
    assert answer.startswith("Sodium-ion cells need no lithium")
    assert cas.play_count == 1
    assert live_bodies(cas)[0]["max_completion_tokens"] == 300
    assert spent(llm) == Decimal("0.00001485")  # same usage as the sync call


def test_openai_stream_settles_from_final_usage_chunk() -> None:
    llm = analyst_llm(OPENAI_MODEL, stream=True)
    with replay("openai_stream") as cas:
        answer = llm.call(MESSAGES)
    assert answer == ("Sodium-ion cells tolerate deep discharge and cold weather better than "
                      "most lithium-ion cells.")
    (body,) = live_bodies(cas)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_completion_tokens"] == 300
    # final chunk usage: 31 prompt, 16 completion -> 0.00000465 + 0.0000096
    assert spent(llm) == Decimal("0.00001425")


def test_openai_stream_without_usage_is_charged_its_reservation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    llm = analyst_llm(OPENAI_MODEL, stream=True)
    with caplog.at_level(logging.ERROR, logger="crew_budget"), replay("openai_stream_no_usage"):
        answer = llm.call(MESSAGES)
    assert answer.endswith("most lithium-ion cells.")
    assert cassette_usage("openai_stream_no_usage") == [None]
    (record,) = llm.guard.ledger.records()
    # Never $0: the whole reservation (prompt estimate + 300 output tokens) is charged.
    assert record.outcome == "settled" and record.cost_nano == record.estimate_nano
    assert spent(llm) >= 300 * GPT_4O_MINI["output"]
    assert "no usage" in caplog.text


def test_openai_tools_are_forwarded() -> None:
    llm = analyst_llm(OPENAI_MODEL)
    with replay("openai_tools") as cas:
        result = llm.call(SEARCH_MESSAGES, tools=[SEARCH_TOOL])
    (call,) = result
    assert call.function.name == "web_search"
    assert "sodium-ion battery energy density" in call.function.arguments
    (body,) = live_bodies(cas)
    assert [t["function"]["name"] for t in body["tools"]] == ["web_search"]
    assert body["tool_choice"] == "auto"
    # 121 prompt + 19 completion: 0.00001815 + 0.0000114
    assert spent(llm) == Decimal("0.00002955")


def test_openai_structured_output_is_forwarded() -> None:
    llm = analyst_llm(OPENAI_MODEL)
    with replay("openai_structured") as cas:
        result = llm.call(MESSAGES, response_model=Advantage)
    assert isinstance(result, Advantage) and result.confidence == 0.8
    (body,) = live_bodies(cas)
    assert body["response_format"]["json_schema"]["name"] == "Advantage"
    assert body["max_completion_tokens"] == 300
    # 84 prompt (incl. the schema) + 24 completion: 0.0000126 + 0.0000144
    assert spent(llm) == Decimal("0.000027")


def test_openai_stop_words_are_forwarded() -> None:
    # Configured on the LLM ...
    llm = analyst_llm(OPENAI_MODEL, stop=STOP)
    with replay("openai_stop"):
        answer = llm.call(REACT_MESSAGES)
    assert answer.endswith('Action Input: {"query": "sodium-ion energy density"}')
    assert "Observation" not in answer
    # ... and set per call, the way CrewAI's executor does (call_stop_override).
    plain = analyst_llm(OPENAI_MODEL)
    with replay("openai_stop"), call_stop_override(plain, list(STOP)):
        assert plain.call(REACT_MESSAGES) == answer
    # 38 prompt + 46 completion, charged once per call: 0.0000057 + 0.0000276
    assert spent(llm) == spent(plain) == Decimal("0.0000333")


def test_request_cap_is_kept_and_reserved() -> None:
    llm = BudgetLLM(role="analyst", model=OPENAI_MODEL, max_tokens=50, config=ANALYST,
                    ledger="memory://")
    events: list[GuardEvent] = []
    llm.guard.add_listener(events.append)
    with replay("openai_call") as cas:
        llm.call(MESSAGES)
    (body,) = live_bodies(cas)
    assert body["max_tokens"] == 50 and "max_completion_tokens" not in body
    ticket = events[0].ticket
    assert ticket is not None and ticket.max_tokens is None
    assert ticket.output_tokens_reserved == 50


def test_wrapped_llm_is_not_mutated() -> None:
    inner = LLM(model=OPENAI_MODEL)
    llm = BudgetLLM(llm=inner, role="analyst", config=ANALYST, ledger="memory://")
    with replay("openai_call") as cas:
        llm.call(MESSAGES)
    assert live_bodies(cas)[0]["max_completion_tokens"] == 300
    assert inner.max_tokens is None and inner.max_completion_tokens is None
    # The cap copy shares CrewAI's token counters with the wrapped LLM.
    assert inner.get_token_usage_summary().prompt_tokens == 31
    assert llm.get_token_usage_summary().completion_tokens == 17


def test_blocked_call_sends_nothing() -> None:
    llm = BudgetLLM(role="analyst", model=OPENAI_MODEL, daily_usd="0.00001", config=ANALYST,
                    ledger="memory://")
    with replay("openai_call") as cas, pytest.raises(CrewBudgetExceeded) as info:
        llm.call(MESSAGES)
    assert cas.play_count == 0
    exc = info.value
    assert isinstance(exc, BudgetExceeded) and isinstance(exc, HookAborted)
    assert (exc.role, exc.scope, exc.window) == ("analyst", "role:analyst", "day")
    assert exc.limit == Decimal("0.00001") and exc.spent == 0
    assert exc.estimate > exc.limit
    assert outcomes(llm) == ["blocked"]


def test_stop_signal_survives_pickling() -> None:
    # Celery and multiprocessing move exceptions between processes.
    llm = BudgetLLM(role="analyst", model=OPENAI_MODEL, daily_usd="0.00001", config=ANALYST,
                    ledger="memory://")
    with pytest.raises(CrewBudgetExceeded) as info:
        llm.call(MESSAGES)
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is CrewBudgetExceeded and isinstance(copy, HookAborted)
    assert (copy.role, copy.scope, copy.limit, copy.spent, copy.estimate, str(copy)) == (
        info.value.role, info.value.scope, info.value.limit, info.value.spent,
        info.value.estimate, str(info.value))
    assert copy.reason == str(copy) and copy.source == "crew-budget"


def test_provider_error_releases_the_reservation() -> None:
    llm = analyst_llm(OPENAI_MODEL)
    with replay("openai_error") as cas, pytest.raises(Exception, match="string too long"):
        llm.call(MESSAGES)
    assert cas.play_count == 1
    assert spent(llm) == 0
    assert outcomes(llm) == ["released"]


class FailingLLM(BaseLLM):
    """A custom CrewAI LLM (a supported extension point) that fails on purpose."""

    error: Any = None

    def call(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        raise self.error


@pytest.mark.parametrize(
    ("error", "charged"),
    [
        (ValueError("OPENAI_API_KEY is required"), False),  # never left the process
        (httpx.ConnectError("connection refused"), False),  # never reached the provider
        (httpx.ReadTimeout("timed out"), True),  # sent; the provider may have generated
        (httpx.RemoteProtocolError("peer closed connection mid-stream"), True),
    ],
)
def test_failed_call_is_released_or_charged(error: Exception, charged: bool) -> None:
    llm = BudgetLLM(llm=FailingLLM(model="gpt-4o-mini", error=error), role="analyst",
                    config=ANALYST, ledger="memory://")
    with pytest.raises(type(error)):
        llm.call(MESSAGES)
    (record,) = llm.guard.ledger.records()
    if charged:
        assert record.outcome == "settled" and record.cost_nano == record.estimate_nano > 0
    else:
        assert record.outcome == "released" and record.cost_nano == 0
    assert spent(llm) == Decimal(record.cost_nano) / 10**9


def test_context_window_check_is_counted_locally() -> None:
    llm = analyst_llm(OPENAI_MODEL)
    with replay("openai_call") as cas:
        tokens = llm.get_input_tokens_count(MESSAGES)
    # CrewAI's OpenAI class would ask the input_tokens endpoint over HTTP.
    assert cas.play_count == 0 and tokens > 10


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: BudgetLLM(daily_usd=1, model=OPENAI_MODEL), "no role"),
        (lambda: BudgetLLM(role="a", llm=LLM(model=OPENAI_MODEL), model=OPENAI_MODEL),
         "not both"),
        (lambda: BudgetLLM(role="a", llm=analyst_llm(OPENAI_MODEL)), "another BudgetLLM"),
        (lambda: BudgetLLM(role="a", model=OPENAI_MODEL, guard=Guard(None, "memory://"),
                           ledger="memory://"), "not both"),
        (lambda: BudgetLLM(role="a"), "needs model="),
        (lambda: BudgetLLM(model=OPENAI_MODEL, ledger="memory://").call(MESSAGES), "no role"),
    ],
)
def test_misuse_is_explained(build: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_guard_defaults_to_embedded_ledger(tmp_path: Any) -> None:
    llm = BudgetLLM(role="analyst", model=OPENAI_MODEL)
    assert llm.guard.ledger.url.startswith("sqlite:///")
    assert str(tmp_path) in llm.guard.ledger.url  # XDG_STATE_HOME points into tmp
    shared = Guard({"roles": {"analyst": {"daily": 2}}}, "memory://")
    tightened = BudgetLLM(role="analyst", model=OPENAI_MODEL, daily_usd=1, guard=shared)
    assert tightened.guard is shared
    assert shared.config.roles["analyst"].daily == 1


# -- Anthropic -------------------------------------------------------------------


def test_anthropic_call_sends_role_cap_not_crewai_default() -> None:
    llm = analyst_llm(ANTHROPIC_MODEL)
    # CrewAI fills in the model's maximum (64k for Haiku 4.5) when no cap is given.
    assert llm.inner.max_tokens == 64000
    with replay("anthropic_call") as cas:
        answer = llm.call(MESSAGES)
    assert answer.startswith("Sodium-ion cells need no lithium")
    (body,) = live_bodies(cas)
    assert body["max_tokens"] == 300
    # 27 input + 18 output at $1/M and $5/M: 0.000027 + 0.00009
    assert spent(llm) == Decimal("0.000117")
    assert spent(llm) == anthropic_cost(cassette_usage("anthropic_call")[0], HAIKU_4_5)


async def test_anthropic_acall() -> None:
    llm = analyst_llm(ANTHROPIC_MODEL)
    with replay("anthropic_call") as cas:
        answer = await llm.acall(MESSAGES)
    assert answer.startswith("Sodium-ion cells need no lithium")
    assert cas.play_count == 1 and live_bodies(cas)[0]["max_tokens"] == 300
    assert spent(llm) == Decimal("0.000117")


def test_anthropic_stream_with_cache_read() -> None:
    llm = analyst_llm(ANTHROPIC_MODEL, stream=True)
    with replay("anthropic_stream") as cas:
        answer = llm.call(cached_messages())
    assert answer == "Sodium-ion packs suit stationary storage and small city cars."
    (body,) = live_bodies(cas)
    assert body["stream"] is True and body["max_tokens"] == 300
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
    # message_start/message_delta usage: 14 input, 2871 cache read, 19 output:
    # 14 * 0.000001 + 2871 * 0.0000001 + 19 * 0.000005 = 0.000014 + 0.0002871 + 0.000095
    assert spent(llm) == Decimal("0.0003961")
    assert spent(llm) == anthropic_cost(cassette_usage("anthropic_stream")[0], HAIKU_4_5)
    (record,) = llm.guard.ledger.records()
    assert (record.input_tokens, record.cached_input_tokens, record.output_tokens) == (14, 2871, 19)


def test_anthropic_tools_are_forwarded() -> None:
    llm = analyst_llm(ANTHROPIC_MODEL)
    with replay("anthropic_tools") as cas:
        result = llm.call(SEARCH_MESSAGES, tools=[SEARCH_TOOL])
    (block,) = result
    assert block.name == "web_search" and block.input == {
        "query": "sodium-ion battery energy density 2025"}
    (body,) = live_bodies(cas)
    assert [t["name"] for t in body["tools"]] == ["web_search"]
    assert body["tools"][0]["input_schema"]["required"] == ["query"]
    # 402 input (incl. Anthropic's tool-use system prompt) + 57 output: 0.000402 + 0.000285
    assert spent(llm) == Decimal("0.000687")


def test_anthropic_stop_sequences_are_sent() -> None:
    llm = analyst_llm(ANTHROPIC_MODEL, stop=STOP)
    with replay("anthropic_stop") as cas:
        answer = llm.call(REACT_MESSAGES)
    assert answer.endswith('Action Input: {"query": "sodium-ion energy density"}')
    assert live_bodies(cas)[0]["stop_sequences"] == STOP
    plain = analyst_llm(ANTHROPIC_MODEL)
    with replay("anthropic_stop") as cas2, call_stop_override(plain, list(STOP)):
        plain.call(REACT_MESSAGES)
    assert live_bodies(cas2)[0]["stop_sequences"] == STOP
    # 36 input + 33 output: 0.000036 + 0.000165
    assert spent(llm) == spent(plain) == Decimal("0.000201")


# -- per-call usage under concurrency ---------------------------------------------


class CountingLLM(BaseLLM):
    """A custom CrewAI LLM reporting usage the way every CrewAI provider does.

    Call n reports 100*n prompt and n completion tokens through
    ``_track_token_usage_internal``, after a delay that makes calls overlap.
    """

    def call(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        n = int(messages[-1]["content"])
        time.sleep(0.005 * (n % 4))
        self._track_token_usage_internal(
            {"prompt_tokens": 100 * n, "completion_tokens": n, "total_tokens": 101 * n})
        return str(n)

    async def acall(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        n = int(messages[-1]["content"])
        await asyncio.sleep(0.005 * (n % 4))
        self._track_token_usage_internal(
            {"prompt_tokens": 100 * n, "completion_tokens": n, "total_tokens": 101 * n})
        return str(n)


def _usage_pairs(llm: BudgetLLM) -> list[tuple[int, int]]:
    records = llm.guard.ledger.records()
    assert all(r.outcome == "settled" for r in records)
    return sorted((r.input_tokens, r.output_tokens) for r in records)


def _expected_total(ns: range) -> Decimal:
    # 100n prompt tokens at $0.15/M and n completion tokens at $0.60/M per call.
    return sum((100 * n * GPT_4O_MINI["input"] + n * GPT_4O_MINI["output"] for n in ns),
               Decimal(0))


def test_each_thread_settles_its_own_calls_usage() -> None:
    llm = BudgetLLM(llm=CountingLLM(model="gpt-4o-mini"), role="analyst", config=ANALYST,
                    ledger="memory://")
    ns = range(1, 17)
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda n: llm.call([{"role": "user", "content": str(n)}]), ns))
    assert answers == [str(n) for n in ns]
    # Every record carries exactly its own call's usage, never a neighbour's.
    assert _usage_pairs(llm) == [(100 * n, n) for n in ns]
    assert spent(llm) == _expected_total(ns)


async def test_each_task_settles_its_own_calls_usage() -> None:
    llm = BudgetLLM(llm=CountingLLM(model="gpt-4o-mini"), role="analyst", config=ANALYST,
                    ledger="memory://")
    ns = range(1, 17)
    answers = await asyncio.gather(
        *(llm.acall([{"role": "user", "content": str(n)}]) for n in ns))
    assert answers == [str(n) for n in ns]
    assert _usage_pairs(llm) == [(100 * n, n) for n in ns]
    assert spent(llm) == _expected_total(ns)
