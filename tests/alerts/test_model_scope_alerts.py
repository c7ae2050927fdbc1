"""Alerts on ``models:`` budgets: thresholds, "exhausted" and shadow mode's
"would block" fire for ``model:M`` and ``model:M@role:R`` scopes as for any
other, ``scope_thresholds`` accepts them, and their texts name model and role.

Prices and clock as in test_manager.py: each call costs exactly $0.01
(alert-model) or $0.10 (big-model).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from crew_budget import BudgetExceeded, Guard
from crew_budget.alerts import Alert, AlertManager, AlertsConfig
from crew_budget.alerts.rules import describe_scope, scope_role
from tests.alerts.test_manager import CONFIG, Clock, keys, spend

MODELS: dict[str, Any] = {
    **CONFIG,
    "roles": {"researcher": {"daily": "10", "models": {"alert-model": {"daily": "0.10"}}},
              "writer": {"daily": "10"}},
    "models": {"big-model": {"daily": "1.00"}},
    "alerts": {**CONFIG["alerts"], "scope_thresholds": {"model:big-model": [90]}},
}


def test_model_budgets_raise_thresholds_and_exhausted_alerts() -> None:
    got: list[Alert] = []
    guard = Guard(MODELS, "memory://", clock=Clock())
    with AlertManager(guard, sinks=[got.append]) as manager:
        spend(guard, 5, model="alert-model")          # $0.05 of the role's $0.10
        spend(guard, 9, role="writer", model="big-model")  # $0.90 of $1.00: 90 %
        assert manager.flush()
        spend(guard, 5, model="alert-model")          # $0.10: 80 and 100 %
        with pytest.raises(BudgetExceeded) as info:
            spend(guard, 1, model="alert-model")
        assert info.value.scope == "model:alert-model@role:researcher"
        assert manager.flush()
    assert sorted(keys(got)) == [
        "exhausted:model:alert-model@role:researcher|day|2026-11-18",
        "threshold:crew:team|day|2026-11-18:50",  # $1.00 of the crew's $2.00
        "threshold:model:alert-model@role:researcher|day|2026-11-18:100",
        "threshold:model:alert-model@role:researcher|day|2026-11-18:50",
        "threshold:model:alert-model@role:researcher|day|2026-11-18:80",
        "threshold:model:big-model|day|2026-11-18:90",  # its own threshold list: 90 only
    ]
    by_key = {a.key: a for a in got}
    big = by_key["threshold:model:big-model|day|2026-11-18:90"]
    assert big.title == "model 'big-model' reached 90% of its day budget"
    assert (big.role, big.values["spent_usd"]) == (None, Decimal("0.90"))
    done = by_key["exhausted:model:alert-model@role:researcher|day|2026-11-18"]
    assert done.title == ("model 'alert-model' of role 'researcher' day budget exhausted: "
                          "calls are blocked")
    assert done.role == "researcher"
    assert done.values["spent_usd"] == Decimal("0.10")


def test_shadow_mode_would_block_alert_on_a_model_budget() -> None:
    got: list[Alert] = []
    guard = Guard({**MODELS, "mode": "shadow"}, "memory://", clock=Clock())
    with AlertManager(guard, sinks=[got.append]) as manager:
        spend(guard, 12, role="writer", model="big-model")  # $1.20 of $1.00: sent anyway
        assert manager.flush()
    shadow = [a for a in got if a.kind == "shadow_blocked"]
    assert [a.key for a in shadow] == ["shadow_blocked:model:big-model|day|2026-11-18"]
    assert shadow[0].title == ("model 'big-model' day budget would block calls (shadow mode: "
                               "they were sent)")
    assert guard.counters["shadow_blocked"] == 2


@pytest.mark.parametrize("scope", ["model:", "model:gpt-4o@role:", "models:gpt-4o", "run:x"])
def test_scope_thresholds_refuse_what_is_no_budget_scope(scope: str) -> None:
    with pytest.raises(ValueError, match="is not a budget scope; write \"role:NAME\", "
                       "\"crew:NAME\", \"model:MODEL\", \"model:MODEL@role:NAME\" or \"global\""):
        AlertsConfig.model_validate({"scope_thresholds": {scope: [50]}})


def test_scope_names() -> None:
    cfg = AlertsConfig.model_validate({"scope_thresholds": {"model:gpt-4o@role:writer": [75]}})
    assert cfg.thresholds_for("model:gpt-4o@role:writer") == [75]
    assert describe_scope("model:gpt-4o") == "model 'gpt-4o'"
    assert describe_scope("model:openai/gpt-4o@role:writer") == (
        "model 'openai/gpt-4o' of role 'writer'")
    assert [scope_role(s) for s in ("role:r", "model:m@role:w", "model:m", "crew:c")] == [
        "r", "w", None, None]
