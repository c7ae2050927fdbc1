"""One call through two crew-budget adapters is charged once (crew_budget.nesting).

The inner adapter is ``crew_budget.litellm.BudgetLogger``; the outer one is a
CrewAI ``BudgetLLM`` over CrewAI's litellm-routed ``LLM``, or LangChain's
``BudgetMiddleware`` / ``BudgetCallbackHandler`` over a chat model built on
litellm. Real CrewAI, LangChain and litellm; only HTTP is replayed from
``cassettes/nesting`` (hand-written usage). Every test also runs the inner
logger alone on the same traffic, so skipping cannot be unconditional.

Expected dollars, by hand from litellm's bundled price map for gpt-4o-mini
(input_cost_per_token 1.5e-07, output_cost_per_token 6e-07, i.e. $0.15 / $0.60
per 1M tokens) and the cassettes' recorded usage:

* crewai_call:    21 in, 3 out -> 21 x 0.15 + 3 x 0.60 = 4.95 -> $0.00000495
* crewai_stream:  21 in, 4 out -> 21 x 0.15 + 4 x 0.60 = 5.55 -> $0.00000555
* langchain_call: 30 in, 5 out -> 30 x 0.15 + 5 x 0.60 = 7.50 -> $0.0000075
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import litellm
import pytest
from crewai import LLM
from langchain.agents import create_agent
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, convert_to_openai_messages
from langchain_core.outputs import ChatGeneration, ChatResult
from litellm.integrations.custom_logger import CustomLogger

from crew_budget import Guard
from crew_budget.crewai import BudgetLLM
from crew_budget.langchain import BudgetCallbackHandler, BudgetMiddleware
from crew_budget.litellm import BudgetLogger
from crew_budget.nesting import begin_covering, covering, covering_ticket, end_covering
from tests.fixtures.http_replay import CASSETTES, live_bodies, recorded_usage, replay
from tests.fixtures.waiting import await_for, wait_for

NEST = CASSETTES / "nesting"

# gpt-4o-mini in litellm's bundled price map: $0.15 input / $0.60 output per 1M tokens.
IN = Decimal("0.00000015")
OUT = Decimal("0.0000006")

CALL_COST = Decimal("0.00000495")  # crewai_call: (21 x 0.15 + 3 x 0.60) / 1M
STREAM_COST = Decimal("0.00000555")  # crewai_stream: (21 x 0.15 + 4 x 0.60) / 1M
LC_COST = Decimal("0.0000075")  # langchain_call: (30 x 0.15 + 5 x 0.60) / 1M

BUDGETS: dict[str, Any] = {
    "roles": {"researcher": {"daily": "1.00", "max_output_tokens": 256}},
}
IT: list[Any] = [{"role": "user", "content": "Name the capital of Italy in one word."}]
MUSEUM = {"messages": [{"role": "user", "content": "Suggest one museum in Rome."}]}
KEY = {"api_key": "sk-test", "num_retries": 0, "max_retries": 0}


def cost(usage: dict[str, Any] | None) -> Decimal:
    """Dollars of one recorded OpenAI ``usage``, by hand from the price list."""
    assert usage is not None
    return Decimal(usage["prompt_tokens"]) * IN + Decimal(usage["completion_tokens"]) * OUT


def test_expected_dollars_are_the_cassettes_usage_priced_once() -> None:
    assert cost(recorded_usage(NEST / "crewai_call.yaml")[0]) == CALL_COST
    assert cost(recorded_usage(NEST / "crewai_stream.yaml")[0]) == STREAM_COST
    assert cost(recorded_usage(NEST / "langchain_call.yaml")[0]) == LC_COST


# -- fixtures ----------------------------------------------------------------------------


class Seen(CustomLogger):
    """Registered after the BudgetLogger: litellm runs one event's callbacks in list
    order, so once this one has seen an event, the BudgetLogger has handled it."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self._lock = threading.Lock()

    def _add(self, name: str) -> None:
        with self._lock:
            self.events.append(name)

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                          end_time: Any) -> None:
        self._add("success")

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        self._add("async_success")

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                          end_time: Any) -> None:
        self._add("failure")

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        self._add("async_failure")

    def saw(self, *names: str) -> bool:
        with self._lock:
            return all(n in self.events for n in names)


def _unregister(*loggers: CustomLogger) -> None:
    for cb in loggers:
        litellm.logging_callback_manager.remove_callback_from_all_lists(cb)
    for name in ("callbacks", "success_callback", "failure_callback", "_async_success_callback",
                 "_async_failure_callback", "input_callback", "_async_input_callback"):
        lst = getattr(litellm, name, None)
        if isinstance(lst, list):
            lst[:] = [cb for cb in lst if not any(cb is x for x in loggers)]


@pytest.fixture
def guard() -> Iterator[Guard]:
    g = Guard(BUDGETS, "memory://")
    yield g
    g.close()


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def logger(guard: Guard, seen: Seen) -> Iterator[BudgetLogger]:
    """The inner adapter, registered with the role the outer adapters use: a second
    charge would land in the same bucket and double ``spent``."""
    budget_logger = BudgetLogger(guard, role="researcher")
    litellm.callbacks.extend([budget_logger, seen])
    try:
        yield budget_logger
    finally:
        _unregister(budget_logger, seen)


def spent(guard: Guard) -> Decimal:
    row = next(r for r in guard.status() if r.scope == "role:researcher" and r.window == "day")
    assert row.reserved == 0, "a reservation was left open"
    return row.spent


def records(guard: Guard) -> list[tuple[str, str]]:
    return [(r.outcome, str(r.metadata.get("framework"))) for r in guard.ledger.records()]


# -- CrewAI BudgetLLM over a litellm-routed CrewAI LLM --------------------------------------


def crewai_llm(logger: BudgetLogger, seen: Seen, **kwargs: Any) -> LLM:
    # CrewAI's litellm LLM sets litellm.callbacks to its own ``callbacks`` whenever
    # one is built (also BudgetLLM's capped copy), so the logger is given there:
    # the way a CrewAI user registers a litellm logger.
    return LLM(model="gpt-4o-mini", is_litellm=True, api_key="sk-test",
               callbacks=[logger, seen], **kwargs)


def test_budget_llm_over_litellm_llm_charges_once(
    guard: Guard, logger: BudgetLogger, seen: Seen
) -> None:
    llm = BudgetLLM(llm=crewai_llm(logger, seen), role="researcher", guard=guard)
    with replay(NEST / "crewai_call.yaml") as cassette:
        assert llm.call(IT) == "Rome."
        wait_for(lambda: seen.saw("success"))  # litellm's sync success handler ran
    assert cassette.play_count == 1
    assert live_bodies(cassette)[0]["max_tokens"] == 256  # the outer adapter's cap
    assert records(guard) == [("settled", "crewai")]
    assert spent(guard) == CALL_COST
    assert logger.in_flight == 0


def test_budget_llm_stream_over_litellm_llm_charges_once(
    guard: Guard, logger: BudgetLogger, seen: Seen
) -> None:
    llm = BudgetLLM(llm=crewai_llm(logger, seen, stream=True), role="researcher", guard=guard)
    with replay(NEST / "crewai_stream.yaml") as cassette:
        assert llm.call(IT) == "Rome."
        wait_for(lambda: seen.saw("success"))
    assert cassette.play_count == 1
    assert live_bodies(cassette)[0]["stream"] is True
    assert records(guard) == [("settled", "crewai")]
    assert spent(guard) == STREAM_COST


async def test_budget_llm_acall_over_litellm_llm_charges_once(
    guard: Guard, logger: BudgetLogger, seen: Seen
) -> None:
    llm = BudgetLLM(llm=crewai_llm(logger, seen), role="researcher", guard=guard)
    with replay(NEST / "crewai_call.yaml") as cassette:
        assert await llm.acall(IT) == "Rome."
        await await_for(lambda: seen.saw("async_success"))
    assert cassette.play_count == 1
    assert records(guard) == [("settled", "crewai")]
    assert spent(guard) == CALL_COST
    assert logger.in_flight == 0


async def test_budget_llm_async_stream_over_litellm_llm_charges_once(
    guard: Guard, logger: BudgetLogger, seen: Seen
) -> None:
    llm = BudgetLLM(llm=crewai_llm(logger, seen, stream=True), role="researcher", guard=guard)
    with replay(NEST / "crewai_stream.yaml") as cassette:
        assert await llm.acall(IT) == "Rome."
        await await_for(lambda: seen.saw("async_success"))
    assert cassette.play_count == 1
    assert records(guard) == [("settled", "crewai")]
    assert spent(guard) == STREAM_COST
    assert logger.in_flight == 0


def test_budget_llm_provider_error_releases_once(
    guard: Guard, logger: BudgetLogger, seen: Seen
) -> None:
    llm = BudgetLLM(llm=crewai_llm(logger, seen, max_retries=0), role="researcher",
                    guard=guard)
    with replay(NEST / "server_error.yaml") as cassette, pytest.raises(Exception) as info:
        llm.call(IT)
    wait_for(lambda: seen.saw("failure"))
    assert getattr(info.value, "status_code", None) == 500
    assert cassette.play_count == 1
    assert records(guard) == [("released", "crewai")]
    assert spent(guard) == 0
    assert logger.in_flight == 0


# The same traffic without the outer adapter: the logger alone still charges.


def test_litellm_llm_alone_is_still_charged_by_the_logger(
    guard: Guard, logger: BudgetLogger, seen: Seen
) -> None:
    llm = crewai_llm(logger, seen, max_tokens=256)
    with replay(NEST / "crewai_call.yaml") as cassette:
        assert llm.call(IT) == "Rome."
        wait_for(lambda: seen.saw("success"))
    assert cassette.play_count == 1
    # Sync litellm.completion cannot be blocked: booked from its usage after the fact.
    assert records(guard) == [("settled", "litellm")]
    assert spent(guard) == CALL_COST


async def test_litellm_llm_alone_acall_is_reserved_and_charged_by_the_logger(
    guard: Guard, logger: BudgetLogger, seen: Seen
) -> None:
    llm = crewai_llm(logger, seen)
    with replay(NEST / "crewai_call.yaml") as cassette:
        assert await llm.acall(IT) == "Rome."
        await await_for(lambda: seen.saw("async_success"))
    assert cassette.play_count == 1
    assert live_bodies(cassette)[0]["max_tokens"] == 256  # injected by the logger's hook
    assert records(guard) == [("settled", "litellm")]
    assert spent(guard) == CALL_COST
    assert logger.in_flight == 0


# -- LangChain over a chat model built on litellm ------------------------------------------


class LiteLLMChat(BaseChatModel):
    """A minimal LangChain chat model that calls litellm (what langchain-litellm's
    ChatLiteLLM does; that package is not a dependency)."""

    model_name: str = "gpt-4o-mini"

    @property
    def _llm_type(self) -> str:
        return "litellm-test"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def _body(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model_name,
                                "messages": convert_to_openai_messages(messages), **KEY}
        if kwargs.get("max_tokens"):
            body["max_tokens"] = kwargs["max_tokens"]
        return body

    @staticmethod
    def _result(response: Any) -> ChatResult:
        u = response.usage
        message = AIMessage(
            content=response.choices[0].message.content or "",
            usage_metadata={"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens,
                            "total_tokens": u.total_tokens},
            response_metadata={"model_name": response.model},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        return self._result(litellm.completion(**self._body(messages, kwargs)))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: Any = None, **kwargs: Any) -> ChatResult:
        return self._result(await litellm.acompletion(**self._body(messages, kwargs)))


def lc_agent(guard: Guard) -> Any:
    return create_agent(LiteLLMChat(), [], middleware=[BudgetMiddleware(role="researcher",
                                                                        guard=guard)])


def test_middleware_over_litellm_chat_model_charges_once(
    guard: Guard, logger: BudgetLogger, seen: Seen
) -> None:
    with replay(NEST / "langchain_call.yaml") as cassette:
        result = lc_agent(guard).invoke(MUSEUM)
        wait_for(lambda: seen.saw("success"))
    assert result["messages"][-1].content == "The Vatican Museums."
    assert cassette.play_count == 1
    assert live_bodies(cassette)[0]["max_tokens"] == 256  # the middleware's cap
    assert records(guard) == [("settled", "langchain-agent")]
    assert spent(guard) == LC_COST


async def test_middleware_async_over_litellm_chat_model_charges_once(
    guard: Guard, logger: BudgetLogger, seen: Seen
) -> None:
    with replay(NEST / "langchain_call.yaml") as cassette:
        result = await lc_agent(guard).ainvoke(MUSEUM)
        await await_for(lambda: seen.saw("async_success"))
    assert result["messages"][-1].content == "The Vatican Museums."
    assert cassette.play_count == 1
    assert records(guard) == [("settled", "langchain-agent")]
    assert spent(guard) == LC_COST
    assert logger.in_flight == 0


def test_handler_invoke_over_litellm_chat_model_charges_once(
    guard: Guard, logger: BudgetLogger, seen: Seen
) -> None:
    # Sync invoke: LangChain runs the handler inline, so its mark reaches litellm.
    model = LiteLLMChat(callbacks=[BudgetCallbackHandler(role="researcher", guard=guard)])
    with replay(NEST / "langchain_call.yaml") as cassette:
        assert model.invoke(MUSEUM["messages"], max_tokens=64).content == "The Vatican Museums."
        wait_for(lambda: seen.saw("success"))
    assert cassette.play_count == 1
    assert records(guard) == [("settled", "langchain")]
    assert spent(guard) == LC_COST
    assert covering_ticket() is None  # the handler's mark ended with the run


def test_litellm_chat_model_alone_is_still_charged_by_the_logger(
    guard: Guard, logger: BudgetLogger, seen: Seen
) -> None:
    with replay(NEST / "langchain_call.yaml") as cassette:
        LiteLLMChat().invoke(MUSEUM["messages"], max_tokens=256)
        wait_for(lambda: seen.saw("success"))
    assert cassette.play_count == 1
    assert records(guard) == [("settled", "litellm")]
    assert spent(guard) == LC_COST


async def test_litellm_chat_model_alone_async_is_still_charged_by_the_logger(
    guard: Guard, logger: BudgetLogger, seen: Seen
) -> None:
    with replay(NEST / "langchain_call.yaml") as cassette:
        await LiteLLMChat().ainvoke(MUSEUM["messages"])
        await await_for(lambda: seen.saw("async_success"))
    assert cassette.play_count == 1
    assert live_bodies(cassette)[0]["max_tokens"] == 256  # the logger's own cap
    assert records(guard) == [("settled", "litellm")]
    assert spent(guard) == LC_COST


# -- the marker itself, straight through litellm ----------------------------------------


async def test_acompletion_inside_covering_is_left_to_the_outer_ticket(
    guard: Guard, logger: BudgetLogger, seen: Seen
) -> None:
    outer = guard.preflight("researcher", "gpt-4o-mini", IT, None, 256, {"framework": "outer"})
    with replay(NEST / "crewai_call.yaml") as cassette:
        with covering(outer):
            response = await litellm.acompletion(model="gpt-4o-mini", messages=IT,
                                                 max_tokens=256, **KEY)
        await await_for(lambda: seen.saw("async_success"))
    assert cassette.play_count == 1
    assert records(guard) == []  # only the outer reservation, still open
    assert logger.in_flight == 0
    guard.settle(outer, response.usage)
    assert records(guard) == [("settled", "outer")]
    assert spent(guard) == CALL_COST


def test_completion_inside_covering_is_not_booked(
    guard: Guard, logger: BudgetLogger, seen: Seen
) -> None:
    outer = guard.preflight("researcher", "gpt-4o-mini", IT, None, 256, {"framework": "outer"})
    with replay(NEST / "crewai_call.yaml") as cassette:
        with covering(outer):
            response = litellm.completion(model="gpt-4o-mini", messages=IT, max_tokens=256,
                                          **KEY)
        wait_for(lambda: seen.saw("success"))
    assert cassette.play_count == 1
    guard.settle(outer, response.usage)
    assert records(guard) == [("settled", "outer")]
    assert spent(guard) == CALL_COST


def test_ended_covers_are_inert_even_when_their_mark_leaked(guard: Guard) -> None:
    first = guard.preflight("researcher", "gpt-4o-mini", IT, None, 8, {})
    second = guard.preflight("researcher", "gpt-4o-mini", IT, None, 8, {})
    assert covering_ticket() is None
    with covering(first):
        assert covering_ticket() is first
        with covering(second):
            assert covering_ticket() is second
        assert covering_ticket() is first
    assert covering_ticket() is None
    # Callback style, ended out of order (two interleaved sync streams).
    a = begin_covering(first)
    b = begin_covering(second)
    end_covering(a)
    assert covering_ticket() is second  # a ended, b still open
    end_covering(b)
    assert covering_ticket() is None
    # A mark whose end ran in another context (LangChain's executor) stays set
    # here, but once ended it makes nothing free.
    c = begin_covering(first)
    c.open = False
    assert covering_ticket() is None
    end_covering(c)
    guard.release(first)
    guard.release(second)


def test_our_sync_completion_wrapper_inside_covering_does_not_reserve_again(
    guard: Guard, logger: BudgetLogger, seen: Seen
) -> None:
    """``crew_budget.litellm.completion`` under an outer adapter's ticket leaves
    the charge to that ticket: no second reservation, one record."""
    from crew_budget.litellm import completion as budgeted_completion

    outer = guard.preflight("researcher", "gpt-4o-mini", IT, None, 256, {"framework": "outer"})
    with replay(NEST / "crewai_call.yaml") as cassette:
        with covering(outer):
            response = budgeted_completion(model="gpt-4o-mini", messages=IT, max_tokens=256,
                                           **KEY)
        wait_for(lambda: seen.saw("success"))
    assert cassette.play_count == 1
    guard.settle(outer, response.usage)
    assert records(guard) == [("settled", "outer")]
    assert spent(guard) == CALL_COST
