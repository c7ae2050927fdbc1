"""On-exceed policies through LiteLLM (issue 12 part 5), HTTP replayed by VCR.py.

``downgrade``: the SDK wrappers (``crew_budget.litellm.completion`` and
``acompletion``) and the logger's own async hook send a call that does not fit
at its model to the first listed model it fits at; the request body that went
over the wire names that model. ``shadow``: nothing is blocked, would-be
blocks are flagged. The proxy test starts a real LiteLLM proxy (as
``test_proxy.py`` does) serving gpt-4o and gpt-4o-mini from a loopback
upstream, and checks the model the upstream received. Dollars: the recorded
usage x gpt-4o-mini's list price.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import litellm
import openai
import pytest
import yaml

from crew_budget import Guard
from crew_budget.litellm import BudgetLogger, CrewBudgetExceededError, acompletion, completion
from tests.fixtures.http_replay import ReplayUpstream, live_bodies, recorded_usage, replay
from tests.fixtures.litellm_proxy import start_proxy
from tests.fixtures.waiting import await_for, wait_for
from tests.litellm.conftest import LL, cost, outcomes, spent, unregister

FR = [{"role": "user", "content": "Name the capital of France in one word."}]
PT = [{"role": "user", "content": "Name the capital of Portugal in one word."}]
KEY = {"api_key": "sk-test", "num_retries": 0, "max_retries": 0}
ROLE = {"metadata": {"crew_budget_role": "researcher"}}
# gpt-4o reserves 16 prompt tokens x $2.50/M + 256 x $10/M, about $0.0026: over
# $0.001. gpt-4o-mini reserves about $0.00016: it fits, several times.
DOWNGRADE = {"roles": {"researcher": {"daily": "0.001", "max_output_tokens": 256,
                                      "on_exceed": {"downgrade": ["gpt-4o-mini"]}}}}


@pytest.fixture
def policy_logger(request: pytest.FixtureRequest) -> Iterator[BudgetLogger]:
    guard = Guard(request.param, "memory://")
    budget_logger = BudgetLogger(guard)
    litellm.callbacks.append(budget_logger)
    try:
        yield budget_logger
    finally:
        unregister(budget_logger)
        guard.close()


def _check_downgraded(guard: Guard, cassette: Any, n: int) -> None:
    assert cassette.play_count == n
    assert [b["model"] for b in live_bodies(cassette)] == ["gpt-4o-mini"] * n
    usages = recorded_usage(LL / "completion.yaml")[:n]
    assert spent(guard, "role:researcher") == sum((cost(u) for u in usages), Decimal(0))
    records = sorted(guard.ledger.records(), key=lambda r: r.ts)
    assert [(r.outcome, r.model) for r in records] == (
        [("blocked", "gpt-4o"), ("settled", "gpt-4o-mini")] * n)
    assert all(r.metadata["downgraded_from"] == "gpt-4o" for r in records
               if r.outcome == "settled")


@pytest.mark.parametrize("policy_logger", [DOWNGRADE], indirect=True)
def test_sync_wrapper_sends_the_downgraded_model(policy_logger: BudgetLogger) -> None:
    with replay(LL / "completion.yaml") as cassette:
        first = completion(model="gpt-4o", messages=FR, **KEY, **ROLE)
        second = completion(model="gpt-4o", messages=PT, **KEY, **ROLE)
    assert (first.choices[0].message.content, second.choices[0].message.content) == (
        "Paris.", "Lisbon.")
    _check_downgraded(policy_logger.guard, cassette, 2)
    assert spent(policy_logger.guard, "role:researcher") == Decimal("0.0000078")


@pytest.mark.parametrize("policy_logger", [DOWNGRADE], indirect=True)
async def test_async_wrapper_and_plain_acompletion_send_the_downgraded_model(
        policy_logger: BudgetLogger) -> None:
    with replay(LL / "completion.yaml") as cassette:
        await acompletion(model="gpt-4o", messages=FR, **KEY, **ROLE)
        await litellm.acompletion(model="gpt-4o", messages=PT, **KEY, **ROLE)
        await await_for(lambda: policy_logger.in_flight == 0)
    _check_downgraded(policy_logger.guard, cassette, 2)


@pytest.mark.parametrize("policy_logger", [{"roles": {"researcher": {
    "daily": "0.0000001", "on_exceed": {"downgrade": ["gpt-4o-mini"]}}}}], indirect=True)
def test_downgrade_that_fits_nowhere_sends_nothing(policy_logger: BudgetLogger) -> None:
    with replay(LL / "completion.yaml") as cassette, \
            pytest.raises(CrewBudgetExceededError) as info:
        completion(model="gpt-4o", messages=FR, **KEY, **ROLE)
    assert cassette.play_count == 0
    assert (info.value.model, info.value.role) == ("gpt-4o", "researcher")
    assert outcomes(policy_logger.guard) == ["blocked", "blocked"]


@pytest.mark.parametrize("policy_logger", [{"mode": "shadow", "roles": {"researcher": {
    "daily": "0.000001", "max_output_tokens": 256}}}], indirect=True)
def test_shadow_mode_sends_both_calls_and_flags_them(policy_logger: BudgetLogger) -> None:
    events: list[str] = []
    policy_logger.guard.add_listener(lambda e: events.append(e.outcome))
    with replay(LL / "completion.yaml") as cassette:
        completion(model="gpt-4o-mini", messages=FR, **KEY, **ROLE)
        completion(model="gpt-4o-mini", messages=PT, **KEY, **ROLE)
    assert cassette.play_count == 2
    guard = policy_logger.guard
    assert spent(guard, "role:researcher") == Decimal("0.0000078")  # 3.6 + 4.2 micro-dollars
    records = guard.ledger.records()
    assert [(r.outcome, r.metadata["shadow_blocked"]) for r in records] == [
        ("settled", "role:researcher|day")] * 2
    assert events.count("shadow_blocked") == 2


# -- the LiteLLM proxy: a real proxy process, a loopback upstream ------------------------

PROXY_SYSTEM = "You are the research agent of a travel crew."


@pytest.mark.slow
def test_proxy_sends_a_downgraded_request_to_the_cheaper_route(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The proxy serves gpt-4o and gpt-4o-mini; the researcher asks for gpt-4o,
    which does not fit its $0.001 day, and the upstream receives gpt-4o-mini."""
    work = tmp_path_factory.mktemp("litellm-proxy-policies")
    ledger_url = f"sqlite:///{work / 'ledger.db'}"
    budgets = work / "budgets.yaml"
    budgets.write_text(yaml.safe_dump(DOWNGRADE))
    root = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((root / "examples" / "litellm_proxy" / "config.yaml").read_text())
    route = config["model_list"][0]
    config["model_list"].append({"model_name": "gpt-4o", "litellm_params": {
        **route["litellm_params"], "model": "openai/gpt-4o"}})
    config["general_settings"]["custom_auth"] = "proxy_auth.user_api_key_auth"
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(Path(__file__).with_name("proxy_auth.py"), work / "proxy_auth.py")
    with ReplayUpstream(LL / "proxy_upstream.yaml") as upstream:
        proxy = start_proxy(work / "config.yaml", {
            "CREW_BUDGET_CONFIG": str(budgets), "CREW_BUDGET_LEDGER": ledger_url,
            "LITELLM_MASTER_KEY": "sk-master-test", "CREW_BUDGET_HEADER_ROLES": "researcher",
            "OPENAI_API_KEY": "sk-upstream-test", "OPENAI_API_BASE": upstream.base_url,
        }, work)
        guard = Guard(budgets, ledger_url)
        try:
            client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-agent-open",
                                   max_retries=0, timeout=60)
            reply = client.chat.completions.create(
                model="gpt-4o", messages=[
                    {"role": "system", "content": PROXY_SYSTEM},
                    {"role": "user", "content": "List two sights in Porto."}],
                extra_headers={"x-crew-budget-role": "researcher"})
            assert reply.choices[0].message.content == (
                "The Ribeira district and the Livraria Lello.")
            assert upstream.count == 1
            assert upstream.requests[0]["model"] == "gpt-4o-mini"
            usage = upstream.usage_served(0)
            assert usage is not None
            # The proxy settles after it has answered (litellm's success callback).
            wait_for(lambda: any(r.outcome == "settled" for r in guard.ledger.records()),
                     timeout=20)
            settled = [r for r in guard.ledger.records() if r.outcome == "settled"]
            assert [(r.model, r.metadata["downgraded_from"]) for r in settled] == [
                ("gpt-4o-mini", "gpt-4o")]
            assert spent(guard, "role:researcher") == cost(usage) == Decimal("0.00001095")
        finally:
            proxy.stop()
            guard.close()
