"""Per-model budgets: ``models:`` across roles and ``roles.<r>.models`` for one role.

Core tests use configured prices (``m`` and ``openai/m2``: $1/M input, $2/M
output): each call reserves $0.000031 and costs $0.000021 (see test_runs).
The LiteLLM test drives ``crew_budget.litellm.completion`` over replayed HTTP.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from crew_budget import BudgetExceeded, Guard
from crew_budget.config import load_config, model_matches
from crew_budget.runs import run

MSG = [{"role": "user", "content": "hello there"}]
PRICE = {"input_per_million": 1, "output_per_million": 2}
ESTIMATE, COST = Decimal("0.000031"), Decimal("0.000021")
USAGE = {"prompt_tokens": 11, "completion_tokens": 5}
ONE_CALL = "0.00005"  # admits one call: 0.000021 + 0.000031 > 0.00005
TWO_CALLS = "0.00007"


def make_guard(**config: Any) -> Guard:
    config.setdefault("roles", {"r": {}, "w": {}})
    prices = {"m": PRICE, "openai/m": PRICE, "other": PRICE}
    return Guard({**config, "prices": prices}, "memory://")


def call(guard: Guard, role: str = "r", model: str = "m") -> Decimal:
    ticket = guard.preflight(role, model, MSG, max_tokens=10)
    assert ticket.estimate == ESTIMATE
    return guard.settle(ticket, USAGE).cost


def spent(guard: Guard) -> dict[tuple[str, str], Decimal]:
    return {(s.scope, s.window): s.spent for s in guard.status()}


@pytest.mark.parametrize(("key", "model", "matches"), [
    ("gpt-4o", "gpt-4o", True),
    ("gpt-4o", "openai/gpt-4o", True),
    ("openai/gpt-4o", "openai/gpt-4o", True),
    ("openai/gpt-4o", "gpt-4o", False),
    ("gpt-4o", "gpt-4o-mini", False),
    ("gpt-4o", "GPT-4o", False),
    ("claude", "openrouter/anthropic/claude", False),
    ("anthropic/claude", "openrouter/anthropic/claude", True),
])
def test_model_matching_rule(key: str, model: str, matches: bool) -> None:
    assert model_matches(key, model) is matches


def test_a_model_budget_spans_roles_and_other_models_are_untouched() -> None:
    guard = make_guard(models={"m": {"daily": ONE_CALL}})
    assert call(guard, "r") == COST
    with pytest.raises(BudgetExceeded) as info:
        call(guard, "w")
    assert (info.value.role, info.value.scope, info.value.window, info.value.spent,
            info.value.limit) == ("w", "model:m", "day", COST, Decimal(ONE_CALL))
    assert [call(guard, "w", "other") for _ in range(3)] == [COST] * 3
    # The provider-prefixed name is the same model for the budget.
    with pytest.raises(BudgetExceeded):
        call(guard, "r", "openai/m")
    assert spent(guard) == {("model:m", "day"): COST}
    assert [(x.role, x.model, x.outcome, x.scope) for x in guard.ledger.records()] == [
        ("r", "m", "settled", None), ("w", "m", "blocked", "model:m"),
        ("w", "other", "settled", None), ("w", "other", "settled", None),
        ("w", "other", "settled", None), ("r", "openai/m", "blocked", "model:m")]


def test_a_role_model_budget_binds_only_that_role() -> None:
    guard = make_guard(roles={"r": {"daily": 1, "models": {"m": {"hourly": TWO_CALLS}}},
                              "w": {}})
    assert [call(guard, "r") for _ in range(2)] == [COST] * 2
    with pytest.raises(BudgetExceeded) as info:
        call(guard, "r")
    assert (info.value.scope, info.value.window, info.value.spent) == (
        "model:m@role:r", "hour", 2 * COST)
    assert call(guard, "r", "other") == COST  # the role's other models are not limited
    assert [call(guard, "w") for _ in range(3)] == [COST] * 3  # nor other roles
    assert spent(guard) == {("role:r", "day"): 3 * COST, ("model:m@role:r", "hour"): 2 * COST}


def test_all_or_nothing_across_model_role_and_run_buckets() -> None:
    guard = make_guard(models={"m": {"daily": 1, "per_run": TWO_CALLS}},
                       roles={"r": {"daily": 1, "models": {"m": {"daily": 1}}}})
    with run("job") as r:
        assert [call(guard) for _ in range(2)] == [COST] * 2
        with pytest.raises(BudgetExceeded) as info:
            call(guard)
    assert (info.value.scope, info.value.window, info.value.period) == (
        "model:m", "run", r.run_id)
    # The refused call charged none of the four buckets it touched.
    assert spent(guard) == {("role:r", "day"): 2 * COST, ("model:m", "day"): 2 * COST,
                            ("model:m@role:r", "day"): 2 * COST}
    assert {(s.scope, s.spent, s.reserved) for s in r.status(guard)} == {
        ("run", 2 * COST, 0), ("model:m", 2 * COST, 0)}


def test_yaml_keys_load() -> None:
    cfg = load_config({"models": {"gpt-4o": {"daily": 10, "per_run": "2"}},
                       "crew": {"name": "c", "per_run": 2},
                       "roles": {"r": {"per_run": "0.5", "models": {"gpt-4o": {"hourly": 1}}}}})
    assert cfg.models["gpt-4o"].daily == 10 and cfg.models["gpt-4o"].per_run == 2
    assert cfg.crew is not None and cfg.crew.per_run == 2
    assert cfg.roles["r"].per_run == Decimal("0.5")
    assert cfg.roles["r"].models["gpt-4o"].hourly == 1
    assert cfg.has_limits() and load_config({"models": {"m": {"daily": 1}}}).has_limits()


def test_litellm_completion_in_a_run_with_a_model_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    import litellm

    from crew_budget.litellm import BudgetLogger, CrewBudgetExceededError, completion
    from tests.fixtures.http_replay import recorded_usage, replay
    from tests.litellm.conftest import LL, cost, unregister

    fr = [{"role": "user", "content": "Name the capital of France in one word."}]
    pt = [{"role": "user", "content": "Name the capital of Portugal in one word."}]
    probe = Guard({"roles": {"researcher": {}}}, "memory://")
    per_call = probe.estimate("researcher", "gpt-4o-mini", fr, max_tokens=64).amount
    guard = Guard({"roles": {"researcher": {"daily": 1}},
                   "models": {"gpt-4o-mini": {"per_run": str(per_call)}}}, "memory://")
    logger = BudgetLogger(guard)
    litellm.callbacks.append(logger)
    kw: dict[str, Any] = {"api_key": "sk-test", "num_retries": 0, "max_retries": 0,
                          "max_tokens": 64, "metadata": {"crew_budget_role": "researcher"}}
    try:
        with replay(LL / "completion.yaml") as cassette:
            with run("litellm-job") as first:
                assert completion(model="gpt-4o-mini", messages=fr, **kw).choices[
                    0].message.content == "Paris."
                with pytest.raises(CrewBudgetExceededError) as info:
                    completion(model="gpt-4o-mini", messages=pt, **kw)
                assert cassette.play_count == 1
            with run("litellm-job") as second:
                completion(model="gpt-4o-mini", messages=pt, **kw)
            assert cassette.play_count == 2
    finally:
        unregister(logger)
    usages = recorded_usage(LL / "completion.yaml")
    assert "model:gpt-4o-mini per-run budget" in str(info.value)
    rows = {(s.scope, s.window): s.spent for s in first.status(guard)}
    assert rows == {("run", "run"): cost(usages[0]), ("model:gpt-4o-mini", "run"): cost(usages[0])}
    assert {s.scope: s.spent for s in second.status(guard)} == {
        "run": cost(usages[1]), "model:gpt-4o-mini": cost(usages[1])}

