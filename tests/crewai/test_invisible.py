"""Issue 14: inside CrewAI the budget is invisible, and every LLM request is charged.

Each test runs one CrewAI behaviour twice over the same replayed HTTP: once
plain, once with a ``BudgetCallback`` attached (generous limits, a fresh
SQLite ledger). It asserts the two runs are indistinguishable (the result,
``token_usage``, state on the user's own LLM, and the exact request bodies
sent) and that every request sent (``cassette.play_count``) is one settled
ledger record, charged to the expected role at the cassette's own price.

Dollars: the cassette's ``usage`` (hand-written, see
``cassettes/crewai/write_invisible.py``) times gpt-4o-mini's price from
litellm's map, pinned in ``conftest.py`` ($0.15/M input, $0.60/M output):

    researcher's answer (84 in, 23 out)                  0.0000264
    writer on the Responses API (117 in, 12 out)         0.00002475
    manager delegating (722 in, 48 out)                  0.0001371
    researcher delegated (112 in, 23 out)                0.0000306
    manager answering (818 in, 23 out)                   0.0001365
    manager's converter, crew role (271 in, 41 out)      0.00006525
    guardrail agent, crew role (229 in, 9 out)           0.00003975
    planner, crew role (690 in, 52 out)                  0.0001347
    researcher after planning (109 in, 23 out)           0.00003015
    crew.test() evaluator, crew role (452 in, 6 out)     0.0000714
    agent.kickoff() outside a crew (52 in, 23 out)       0.0000216
    researcher with memory tools (448 in, 23 out)        0.000081
    memory extracting, crew role (560 in, 21 out)        0.0000966
    memory analysing, crew role (243 in, 62 out)         0.00007365
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import pytest
from crewai import LLM
from crewai.llms.base_llm import BaseLLM
from crewai.llms.providers.openai.completion import OpenAICompletion

from crew_budget.crewai import BudgetCallback, BudgetLLM, CrewBudgetExceeded, gate_llm_class
from crew_budget.crewai._llm import _sent_cap, _user_cap
from crew_budget.money import from_nano
from tests.crewai.conftest import GPT_4O_MINI, openai_cost
from tests.crewai.replay import cassette_usage, live_bodies, replay
from tests.crewai.scenarios import (
    Fact,
    guardrail_crew,
    hierarchical_pydantic_crew,
    memory_crew,
    pair_crew,
    planning_crew,
    single_crew,
    stream_crew,
)

FACT = ("Sodium-ion batteries use abundant sodium instead of lithium, which cuts cell material "
        "cost by roughly a third.")
HEADLINE = "Cheaper Cells Ahead: Sodium Steps In for Lithium"


def cost(usage: dict[str, Any] | None) -> Decimal:
    assert usage is not None
    if "prompt_tokens" in usage:
        return openai_cost(usage, GPT_4O_MINI)
    # Responses API: input_tokens (none cached here) and output_tokens.
    assert usage["input_tokens_details"]["cached_tokens"] == 0
    return (usage["input_tokens"] * GPT_4O_MINI["input"]
            + usage["output_tokens"] * GPT_4O_MINI["output"])


def test_cassette_dollars_match_the_docstring() -> None:
    costs = {name: [cost(u) for u in cassette_usage(f"invisible_{name}")]
             for name in ("stream", "responses", "hierarchical", "guardrail", "planning",
                          "test", "agent_kickoff", "memory")}
    assert costs == {
        "stream": [Decimal("0.0000264")],
        "responses": [Decimal("0.0000264"), Decimal("0.00002475")],
        "hierarchical": [Decimal("0.0001371"), Decimal("0.0000306"), Decimal("0.0001365"),
                         Decimal("0.00006525")],
        "guardrail": [Decimal("0.0000264"), Decimal("0.00003975")],
        "planning": [Decimal("0.0001347"), Decimal("0.00003015")],
        "test": [Decimal("0.0000264"), Decimal("0.0000714")],
        "agent_kickoff": [Decimal("0.0000216")],
        "memory": [Decimal("0.000081"), Decimal("0.0000966"), Decimal("0.00007365")],
    }


@dataclass
class Run:
    result: Any
    bodies: list[dict[str, Any]]
    requests: int


def play(cassette: str, run: Callable[[], Any]) -> Run:
    with replay(cassette) as cas:
        result = run()
    return Run(result, live_bodies(cas), cas.play_count)


# Every role these crews use, listed (roles that match no budget are refused).
ROLES = ("researcher", "writer", "Crew Manager", "crew")


def generous(tmp_path: Path, **kwargs: Any) -> BudgetCallback:
    roles = {name: {"daily": 5} for name in (*ROLES, kwargs.get("crew_role") or "crew")}
    config = {"crew": {"name": "inv", "daily": 5}, "roles": roles}
    return BudgetCallback(config, f"sqlite:///{tmp_path / 'ledger.db'}", **kwargs)


def charged(budget: BudgetCallback) -> list[tuple[str, Decimal]]:
    """(role, cost) of every ledger record, in order; each one must be settled."""
    records = budget.guard.ledger.records()
    assert [r.outcome for r in records] == ["settled"] * len(records)
    assert all(s.reserved == 0 for s in budget.status())
    return [(r.role, from_nano(r.cost_nano)) for r in records]


def assert_every_request_charged(run: Run, budget: BudgetCallback) -> None:
    """One ledger record per HTTP request the crew sent: nothing escaped the budget."""
    assert run.requests > 0
    assert len(budget.guard.ledger.records()) == run.requests


def assert_indistinguishable(plain: Run, budgeted: Run) -> None:
    # The same requests, byte for byte (no injected max_tokens, nothing dropped).
    assert budgeted.bodies == plain.bodies
    assert budgeted.requests == plain.requests
    for body in budgeted.bodies:
        assert not {"max_tokens", "max_completion_tokens", "max_output_tokens"} & set(body)
    for attr in ("raw", "pydantic", "json_dict", "token_usage"):
        assert getattr(budgeted.result, attr, None) == getattr(plain.result, attr, None)


def expected(cassette: str, roles: list[str]) -> list[tuple[str, Decimal]]:
    costs = [cost(u) for u in cassette_usage(cassette)]
    assert len(costs) == len(roles)
    return list(zip(roles, costs, strict=True))


# -- the behaviours ----------------------------------------------------------------


def _streamed(crew: Any) -> Any:
    out = crew.kickoff()
    chunks = [chunk.content for chunk in out]
    assert "".join(chunks) == FACT
    return out.result


def test_streaming_kickoff_keeps_token_usage(tmp_path: Path) -> None:
    plain = play("invisible_stream", lambda: _streamed(stream_crew(LLM(model="gpt-4o-mini"))))
    budget = generous(tmp_path)
    budgeted = play("invisible_stream",
                    lambda: _streamed(budget.attach(stream_crew(LLM(model="gpt-4o-mini")))))
    assert_indistinguishable(plain, budgeted)
    assert_every_request_charged(budgeted, budget)
    usage = budgeted.result.token_usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (84, 23, 107)
    assert budgeted.requests == 1
    assert charged(budget) == expected("invisible_stream", ["researcher"])


class CountingLLM(OpenAICompletion):
    """A custom LLM that keeps its own state: how often it was called."""

    calls: int = 0

    def call(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return super().call(*args, **kwargs)


def test_custom_llm_counts_its_own_calls(tmp_path: Path) -> None:
    plain_llm = CountingLLM(model="gpt-4o-mini")
    plain = play("pair_crew", lambda: pair_crew(plain_llm, plain_llm).kickoff())
    llm = CountingLLM(model="gpt-4o-mini")
    budget = generous(tmp_path)
    crew = budget.attach(pair_crew(llm, llm))
    assert crew.agents[0].llm is llm and type(llm) is CountingLLM
    budgeted = play("pair_crew", crew.kickoff)
    assert_indistinguishable(plain, budgeted)
    assert_every_request_charged(budgeted, budget)
    assert (plain_llm.calls, llm.calls) == (2, 2)
    assert llm.get_token_usage_summary().total_tokens == 107 + 129
    assert charged(budget) == expected("pair_crew", ["researcher", "writer"])


def test_responses_api_auto_chaining_stays_on_the_users_llm(tmp_path: Path) -> None:
    def build() -> Any:
        return LLM(model="gpt-4o-mini", api="responses", auto_chain=True)

    plain_llm = build()
    plain = play("invisible_responses", lambda: pair_crew(plain_llm, plain_llm).kickoff())
    llm = build()
    budget = generous(tmp_path)
    budgeted = play("invisible_responses", budget.attach(pair_crew(llm, llm)).kickoff)
    assert_indistinguishable(plain, budgeted)
    assert_every_request_charged(budgeted, budget)
    assert budgeted.result.raw == HEADLINE
    # The second request chained on the first response: state kept on the user's LLM.
    assert budgeted.bodies[1]["previous_response_id"] == "resp_inv_0001"
    assert llm.last_response_id == plain_llm.last_response_id == "resp_inv_0002"
    assert charged(budget) == expected("invisible_responses", ["researcher", "writer"])


def test_hierarchical_output_pydantic_charges_the_converter_to_the_crew(
        tmp_path: Path) -> None:
    def build() -> Any:
        return hierarchical_pydantic_crew(LLM(model="gpt-4o-mini"), LLM(model="gpt-4o-mini"))

    plain = play("invisible_hierarchical", lambda: build().kickoff())
    budget = generous(tmp_path)
    budgeted = play("invisible_hierarchical", budget.attach(build()).kickoff)
    assert_indistinguishable(plain, budgeted)
    assert_every_request_charged(budgeted, budget)
    assert budgeted.result.pydantic == Fact(fact=FACT, source="CATL 2025 cell data")
    assert budgeted.requests == 4
    assert charged(budget) == expected(
        "invisible_hierarchical", ["Crew Manager", "researcher", "Crew Manager", "crew"])


def test_text_guardrail_is_charged_to_the_crew(tmp_path: Path) -> None:
    plain = play("invisible_guardrail",
                 lambda: guardrail_crew(LLM(model="gpt-4o-mini")).kickoff())
    budget = generous(tmp_path)
    budgeted = play("invisible_guardrail",
                    budget.attach(guardrail_crew(LLM(model="gpt-4o-mini"))).kickoff)
    assert_indistinguishable(plain, budgeted)
    assert_every_request_charged(budgeted, budget)
    assert budgeted.result.raw == FACT and budgeted.requests == 2
    assert charged(budget) == expected("invisible_guardrail", ["researcher", "crew"])


def test_planning_llm_is_charged_to_the_crew_role_named_in_yaml(tmp_path: Path) -> None:
    def build() -> Any:
        return planning_crew(LLM(model="gpt-4o-mini"), LLM(model="gpt-4o-mini"))

    plain = play("invisible_planning", lambda: build().kickoff())
    config = {"crew_role": "overhead", "roles": {"overhead": {"daily": 1}, "researcher": {}}}
    budget = BudgetCallback(config, f"sqlite:///{tmp_path / 'ledger.db'}")
    budgeted = play("invisible_planning", budget.attach(build()).kickoff)
    assert_indistinguishable(plain, budgeted)
    assert_every_request_charged(budgeted, budget)
    assert budgeted.requests == 2
    assert charged(budget) == expected("invisible_planning", ["overhead", "researcher"])
    overhead = [s for s in budget.status() if s.scope == "role:overhead"]
    assert [s.spent for s in overhead] == [Decimal("0.0001347")]


def test_crew_test_evaluator_is_charged(tmp_path: Path) -> None:
    def run(crew: Any) -> Any:
        crew.test(n_iterations=1, eval_llm=LLM(model="gpt-4o-mini"))
        return None

    plain = play("invisible_test", lambda: run(single_crew(LLM(model="gpt-4o-mini"))))
    budget = generous(tmp_path, crew_role="evaluation")
    budgeted = play("invisible_test",
                    lambda: run(budget.attach(single_crew(LLM(model="gpt-4o-mini")))))
    assert_indistinguishable(plain, budgeted)
    assert_every_request_charged(budgeted, budget)
    assert budgeted.requests == 2
    # crew.test() runs a copy of the crew: the copy's agent still pays as itself.
    assert charged(budget) == expected("invisible_test", ["researcher", "evaluation"])


def test_crew_memory_llm_is_charged(tmp_path: Path) -> None:
    # Embeddings come from a local callable (no embedding API offline); the
    # memory's own LLM calls (extract, analyse) are what this test drives.
    def build(path: Path) -> Any:
        return memory_crew(LLM(model="gpt-4o-mini"), LLM(model="gpt-4o-mini"), str(path))

    plain = play("invisible_memory", lambda: build(tmp_path / "plain").kickoff())
    budget = generous(tmp_path)
    budgeted = play("invisible_memory", budget.attach(build(tmp_path / "budgeted")).kickoff)
    assert_indistinguishable(plain, budgeted)
    assert_every_request_charged(budgeted, budget)
    assert budgeted.requests == 3
    assert charged(budget) == expected("invisible_memory", ["researcher", "crew", "crew"])


def test_agent_kickoff_outside_a_crew(tmp_path: Path) -> None:
    question = "State one fact about sodium-ion batteries."
    plain = play("invisible_agent_kickoff",
                 lambda: single_crew(LLM(model="gpt-4o-mini")).agents[0].kickoff(question))
    budget = generous(tmp_path)
    agent = single_crew(LLM(model="gpt-4o-mini")).agents[0]
    assert budget.attach(agent) is agent
    budgeted = play("invisible_agent_kickoff", lambda: agent.kickoff(question))
    assert budgeted.bodies == plain.bodies
    assert_every_request_charged(budgeted, budget)
    assert budgeted.result.raw == plain.result.raw == FACT
    assert budgeted.result.usage_metrics == plain.result.usage_metrics
    assert charged(budget) == expected("invisible_agent_kickoff", ["researcher"])


# -- attach itself ----------------------------------------------------------------


def test_attach_twice_charges_once_and_keeps_inputs_none(tmp_path: Path) -> None:
    budget = generous(tmp_path)
    crew = pair_crew(LLM(model="gpt-4o-mini"), LLM(model="gpt-4o-mini"))
    # A literal "{year}" in a task: CrewAI interpolates only when inputs is not None,
    # and "{year}" with inputs={} would fail. attach must not turn None into {}.
    crew.tasks[0].description += " Quote it as printed, {year} included."
    llms = [a.llm for a in crew.agents]
    assert budget.attach(crew) is crew and budget.attach(crew) is crew
    assert crew.before_kickoff_callbacks == [] and [a.llm for a in crew.agents] == llms
    run = play("pair_crew", crew.kickoff)
    assert run.result.raw == HEADLINE and run.requests == 2
    assert "{year} included" in run.bodies[0]["messages"][1]["content"]
    assert charged(budget) == expected("pair_crew", ["researcher", "writer"])


def test_attach_tolerates_test_doubles_and_odd_llms(tmp_path: Path) -> None:
    class EchoLLM(BaseLLM):
        """A custom BaseLLM that never touches the network."""

        def call(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
            self._track_token_usage_internal({"prompt_tokens": 10, "completion_tokens": 2})
            return FACT

    crew = pair_crew(LLM(model="gpt-4o-mini"), EchoLLM(model="gpt-4o-mini"))
    double = Mock(spec=LLM)
    crew.agents[0].llm = double
    budget = generous(tmp_path)
    assert budget.attach(crew) is crew
    assert double.method_calls == []  # attach read nothing from the double
    # The custom LLM's calls are budgeted too: 10 in + 2 out at gpt-4o-mini's price.
    assert crew.agents[1].llm.call("hi", from_agent=crew.agents[1]) == FACT
    assert charged(budget) == [("writer", Decimal("0.0000027"))]


def test_crew_role_calls_are_stopped_before_http(tmp_path: Path) -> None:
    # The guardrail's call is made for the crew; its role's $0.00001 cannot hold it.
    config = {"roles": {"crew": {"daily": "0.00001"}, "researcher": {}}}
    budget = BudgetCallback(config, f"sqlite:///{tmp_path / 'ledger.db'}")
    crew = budget.attach(guardrail_crew(LLM(model="gpt-4o-mini")))
    with replay("invisible_guardrail") as cas, pytest.raises(CrewBudgetExceeded) as info:
        crew.kickoff()
    assert cas.play_count == 1
    assert (info.value.role, info.value.scope, info.value.limit) == (
        "crew", "role:crew", Decimal("0.00001"))
    records = budget.guard.ledger.records()
    assert [(r.role, r.outcome) for r in records] == [("researcher", "settled"),
                                                      ("crew", "blocked")]


def test_no_cap_reserves_the_models_maximum_and_a_role_cap_is_sent(tmp_path: Path) -> None:
    budget = BudgetCallback({"roles": {"researcher": {}, "writer": {"max_output_tokens": 200}}},
                            f"sqlite:///{tmp_path / 'ledger.db'}")
    reserved: list[tuple[str, int, int | None]] = []
    budget.guard.add_listener(lambda e: reserved.append(
        (e.role, e.ticket.output_tokens_reserved, e.ticket.max_tokens))
        if e.outcome == "allowed" and e.ticket else None)
    writer_llm = LLM(model="gpt-4o-mini")
    crew = budget.attach(pair_crew(LLM(model="gpt-4o-mini"), writer_llm))
    run = play("pair_crew", crew.kickoff)
    # gpt-4o-mini's maximum output in the price book is 16,384 tokens.
    assert reserved == [("researcher", 16384, None), ("writer", 200, 200)]
    assert "max_completion_tokens" not in run.bodies[0]
    assert run.bodies[1]["max_completion_tokens"] == 200
    assert writer_llm.max_completion_tokens is None  # the cap was the call's, not kept


def test_budget_llm_runs_on_the_llm_it_wraps(tmp_path: Path) -> None:
    # An explicit BudgetLLM (inline limit) over an auto-chaining Responses LLM:
    # the chain and the token counters stay on the wrapped LLM (no copy).
    inner = LLM(model="gpt-4o-mini", api="responses", auto_chain=True)
    wrapped = BudgetLLM(llm=inner, role="researcher", daily_usd=1,
                        ledger=f"sqlite:///{tmp_path / 'own.db'}")
    # Both agents share it; its role is fixed, so the writer's call pays as "researcher".
    run = play("invisible_responses", pair_crew(wrapped, wrapped).kickoff)
    assert run.result.raw == HEADLINE and run.requests == 2
    assert run.bodies[1]["previous_response_id"] == "resp_inv_0001"
    assert not {"max_output_tokens", "max_tokens"} & set(run.bodies[0])
    assert inner.last_response_id == "resp_inv_0002"
    assert inner.get_token_usage_summary().total_tokens == 107 + 129
    records = wrapped.guard.ledger.records()
    assert [(r.role, r.outcome, from_nano(r.cost_nano)) for r in records] == [
        ("researcher", "settled", c) for _, c in expected(
            "invisible_responses", ["researcher", "researcher"])]


def test_concurrent_caps_on_one_llm_send_the_smallest_then_restore() -> None:
    llm = LLM(model="gpt-4o-mini")
    assert llm.max_completion_tokens is None
    with _sent_cap(llm, 300):
        assert llm.max_completion_tokens == 300
        with _sent_cap(llm, 200):
            assert llm.max_completion_tokens == 200
            assert _user_cap(llm) is None  # our own cap is never read as the user's
        assert llm.max_completion_tokens == 300
    assert llm.max_completion_tokens is None


def test_llm_class_defined_after_attach(tmp_path: Path) -> None:
    agent = single_crew(LLM(model="gpt-4o-mini")).agents[0]
    budget = generous(tmp_path)
    budget.attach(agent)

    class LateLLM(BaseLLM):
        def call(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
            self._track_token_usage_internal({"prompt_tokens": 20, "completion_tokens": 5})
            return FACT

    late = LateLLM(model="gpt-4o-mini")
    assert late.call("hi", from_agent=agent) == FACT
    assert charged(budget) == []  # not gated yet: attach saw no such class
    gate_llm_class(LateLLM)
    assert late.call("hi", from_agent=agent) == FACT
    # 20 x $0.15/M + 5 x $0.60/M
    assert charged(budget) == [("researcher", Decimal("0.000006"))]


# gpt-5-nano in litellm's map: $0.05/M input, $0.40/M output, 128,000 output tokens at most.
GPT_5_NANO = {"input": Decimal("0.00000005"), "output": Decimal("0.0000004"),
              "cached": Decimal("0.000000005")}


def test_reasoning_model_is_not_truncated_and_the_trade_off(tmp_path: Path) -> None:
    usage = cassette_usage("invisible_reasoning")[0]
    assert usage is not None
    assert (usage["completion_tokens"], usage["completion_tokens_details"]["reasoning_tokens"]) \
        == (2011, 1984)
    actual = openai_cost(usage, GPT_5_NANO)  # 83 x 0.05 + 2,011 x 0.40 = $0.00080855
    assert actual == Decimal("0.00080855")

    plain = play("invisible_reasoning",
                 lambda: single_crew(LLM(model="gpt-5-nano")).kickoff())
    budget = generous(tmp_path)
    price = budget.guard.price("gpt-5-nano")
    assert (price.input, price.output, price.max_output_tokens) == (
        GPT_5_NANO["input"], GPT_5_NANO["output"], 128000)
    tickets: list[Any] = []
    budget.guard.add_listener(lambda e: tickets.append(e.ticket) if e.ticket else None)
    budgeted = play("invisible_reasoning",
                    budget.attach(single_crew(LLM(model="gpt-5-nano"))).kickoff)
    # Nothing injected, so nothing truncated: the request is the plain one.
    assert_indistinguishable(plain, budgeted)
    assert_every_request_charged(budgeted, budget)
    # The price of that: the reservation covers the model's whole output...
    assert (tickets[0].output_tokens_reserved, tickets[0].max_tokens) == (128000, None)
    assert tickets[0].estimate > Decimal("0.0512")  # 128,000 x $0.40/M, plus the prompt
    # ...until the call settles at what it cost.
    assert charged(budget) == [("researcher", actual)]

    # So a limit below one maximal answer refuses the call before any HTTP...
    tight = BudgetCallback({"crew": {"name": "inv", "daily": "0.05"},
                            "roles": {"researcher": {}}},
                           f"sqlite:///{tmp_path / 'tight.db'}")
    with replay("invisible_reasoning") as cas, pytest.raises(CrewBudgetExceeded) as info:
        tight.attach(single_crew(LLM(model="gpt-5-nano"))).kickoff()
    assert cas.play_count == 0 and info.value.scope == "crew:inv"
    # ...unless the role sets max_output_tokens: then that cap is reserved and sent.
    capped = BudgetCallback({"crew": {"name": "inv", "daily": "0.05"},
                             "roles": {"researcher": {"max_output_tokens": 4096}}},
                            f"sqlite:///{tmp_path / 'capped.db'}")
    run = play("invisible_reasoning",
               capped.attach(single_crew(LLM(model="gpt-5-nano"))).kickoff)
    assert run.bodies[0]["max_completion_tokens"] == 4096
    assert charged(capped) == [("researcher", actual)]


async def test_native_async_kickoff_charges_crew_calls(tmp_path: Path) -> None:
    # akickoff runs the crew as asyncio tasks: the guardrail's call still
    # belongs to the running crew (crew role) and goes through acall's gate.
    budget = generous(tmp_path)
    crew = budget.attach(guardrail_crew(LLM(model="gpt-4o-mini")))
    with replay("invisible_guardrail") as cas:
        result = await crew.akickoff()
    assert result.raw == FACT and cas.play_count == 2
    assert charged(budget) == expected("invisible_guardrail", ["researcher", "crew"])
