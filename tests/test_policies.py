"""On-exceed policies in the core (issue 12 part 5): downgrade, shadow, stop, end_task.

Prices are configured here (``big``/``small``/``tiny``, USD per million
tokens) so every dollar is exact: a settle of 1,000 prompt and 100
completion tokens at ``small`` ($1/M in, $2/M out) costs 1,000 x 1,000 +
100 x 2,000 = 1,200,000 nano-USD. Reservations are compared with
``Guard.estimate`` at the model the call was sent to, never with numbers
of our own estimator written into the test.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from crew_budget import BudgetExceeded, Guard, load_config
from crew_budget.config import Downgrade
from crew_budget.guard import GuardEvent
from crew_budget.money import to_nano

PRICES = {
    "big": {"input_per_million": 100, "output_per_million": 400, "tokenizer": "o200k_base"},
    "small": {"input_per_million": 1, "output_per_million": 2, "tokenizer": "o200k_base"},
    "tiny": {"input_per_million": "0.1", "output_per_million": "0.2",
             "tokenizer": "o200k_base"},
}
MESSAGES = [{"role": "user", "content": "Summarise the state of solid-state batteries. " * 110}]
USAGE = {"prompt_tokens": 1000, "completion_tokens": 100}
SMALL_COST = 1000 * 1000 + 100 * 2000  # nano-USD at small's prices
BIG_COST = 1000 * 100_000 + 100 * 400_000




def guard(ledger: str, **cfg: Any) -> tuple[Guard, list[GuardEvent]]:
    g = Guard({"prices": PRICES, **cfg}, ledger, start_alerts=False)
    events: list[GuardEvent] = []
    g.add_listener(events.append)
    return g, events


def spent(g: Guard, scope: str) -> Decimal:
    return next(s.spent for s in g.status() if s.scope == scope and s.window == "day")


# -- downgrade -------------------------------------------------------------------------

def test_downgrade_sends_the_call_to_the_first_listed_model_that_fits(ledger_url: str) -> None:
    g, events = guard(ledger_url, roles={"writer": {
        "daily": "0.05", "on_exceed": {"downgrade": ["small", "tiny"]}}})
    big = g.estimate("writer", "big", MESSAGES, max_tokens=200)
    assert big.amount > Decimal("0.05")  # does not fit at its own model
    ticket = g.preflight("writer", "big", MESSAGES, max_tokens=200)
    assert (ticket.model, ticket.downgraded_from) == ("small", "big")
    assert ticket.estimate == g.estimate("writer", "small", MESSAGES, max_tokens=200).amount
    assert ticket.metadata["downgraded_from"] == "big"
    g.settle(ticket, USAGE)
    assert to_nano(spent(g, "role:writer")) == SMALL_COST
    recs = sorted(g.ledger.records(), key=lambda r: r.ts)
    assert [(r.outcome, r.model, r.cost_nano) for r in recs] == [
        ("blocked", "big", 0), ("settled", "small", SMALL_COST)]
    assert recs[1].metadata["downgraded_from"] == "big"
    assert [e.outcome for e in events] == ["allowed", "settled"]
    assert events[0].model == "small"
    g.close()


def test_downgrade_skips_a_listed_model_that_does_not_fit_either() -> None:
    g, events = guard("memory://", roles={"writer": {
        "daily": "0.0005", "on_exceed": {"downgrade": ["small", "tiny"]}}})
    assert g.estimate("writer", "small", MESSAGES, max_tokens=200).amount > Decimal("0.0005")
    ticket = g.preflight("writer", "big", MESSAGES, max_tokens=200)
    assert (ticket.model, ticket.downgraded_from) == ("tiny", "big")
    g.settle(ticket, USAGE)
    assert to_nano(spent(g, "role:writer")) == 1000 * 100 + 100 * 200
    outcomes = [(r.outcome, r.model) for r in sorted(g.ledger.records(), key=lambda r: r.ts)]
    assert outcomes == [("blocked", "big"), ("blocked", "small"), ("settled", "tiny")]
    assert [(e.outcome, e.model) for e in events] == [("allowed", "tiny"), ("settled", "tiny")]


def test_downgrade_stops_when_no_listed_model_fits(ledger_url: str) -> None:
    g, events = guard(ledger_url, roles={"writer": {
        "daily": "0.00001", "on_exceed": {"downgrade": ["small"]}}})
    with pytest.raises(BudgetExceeded) as info:
        g.preflight("writer", "big", MESSAGES, max_tokens=200)
    assert info.value.model == "big"  # the refusal names the model asked for
    assert info.value.scope == "role:writer"
    assert [e.outcome for e in events] == ["blocked"]
    assert spent(g, "role:writer") == 0
    assert all(s.reserved == 0 for s in g.status())
    g.close()


def test_a_role_without_a_policy_takes_the_top_level_one() -> None:
    g, _ = guard("memory://", on_exceed={"downgrade": ["small"]},
                 roles={"writer": {"daily": "0.05"}, "boss": {"daily": "0.05",
                                                               "on_exceed": "stop"}})
    assert g.preflight("writer", "big", MESSAGES, max_tokens=200).model == "small"
    with pytest.raises(BudgetExceeded):
        g.preflight("boss", "big", MESSAGES, max_tokens=200)


def test_default_role_policy_applies_to_unlisted_roles() -> None:
    g, _ = guard("memory://", roles={"writer": {}},
                 default_role={"daily": "0.05", "on_exceed": {"downgrade": ["small"]}})
    ticket = g.preflight("intern", "big", MESSAGES, max_tokens=200)
    assert (ticket.role, ticket.model) == ("default_role", "small")


def test_limit_role_from_code_keeps_the_policy() -> None:
    g, _ = guard("memory://", roles={"writer": {"daily": 1, "on_exceed": {
        "downgrade": ["small"]}}})
    g.limit_role("writer", daily_usd="0.05")
    assert g.config.roles["writer"].on_exceed == Downgrade(downgrade=("small",))
    assert g.preflight("writer", "big", MESSAGES, max_tokens=200).model == "small"


# -- shadow ---------------------------------------------------------------------------

def test_shadow_mode_lets_every_call_through_and_flags_the_would_be_blocks(
        ledger_url: str) -> None:
    # $0.45 a day; each call reserves about $0.15 at big's prices (1,108
    # prompt tokens by our count plus 100 output) and settles at $0.14: the
    # 4th and 5th reservations would not have fit ($0.42 spent + $0.15).
    assert BIG_COST == 140_000_000
    g, events = guard(ledger_url, mode="shadow", roles={"researcher": {"daily": "0.45"}})
    for _ in range(5):
        ticket = g.preflight("researcher", "big", MESSAGES, max_tokens=100)
        g.settle(ticket, USAGE)
    assert to_nano(spent(g, "role:researcher")) == 5 * BIG_COST  # $0.70, over the $0.45
    recs = g.ledger.records()
    assert [r.outcome for r in recs] == ["settled"] * 5  # nothing was blocked
    flagged = [r for r in recs if r.metadata.get("shadow_blocked")]
    assert [r.metadata.get("shadow_blocked") is not None for r in recs] == [
        False, False, False, True, True]
    assert {r.metadata["shadow_blocked"] for r in flagged} == {"role:researcher|day"}
    shadow = [e for e in events if e.outcome == "shadow_blocked"]
    assert len(shadow) == 2
    assert shadow[0].error is not None and shadow[0].error.limit == Decimal("0.45")
    assert to_nano(shadow[0].error.spent) == 3 * BIG_COST
    assert [e.outcome for e in events].count("allowed") == 5
    assert g.counters["shadow_blocked"] == 2
    g.close()


def test_shadow_for_one_role_leaves_the_others_enforced() -> None:
    g, events = guard("memory://", roles={"new": {"daily": "0.1", "on_exceed": "shadow"},
                                          "old": {"daily": "0.1"}})
    g.settle(g.preflight("new", "big", MESSAGES, max_tokens=100), USAGE)
    with pytest.raises(BudgetExceeded):
        g.preflight("old", "big", MESSAGES, max_tokens=100)
    assert [e.outcome for e in events] == ["shadow_blocked", "allowed", "settled", "blocked"]


def test_shadow_mode_beats_every_role_policy() -> None:
    cfg = load_config({"mode": "shadow", "on_exceed": "end_task", "roles": {
        "a": {"on_exceed": {"downgrade": ["small"]}}, "b": {}}})
    assert (cfg.policy_for("a"), cfg.policy_for("b")) == ("shadow", "shadow")


def test_shadow_still_counts_a_crew_budget_the_call_breaks() -> None:
    g, events = guard("memory://", mode="shadow", crew={"name": "c", "daily": "0.1"},
                      roles={"r": {"daily": 10}})
    g.settle(g.preflight("r", "big", MESSAGES, max_tokens=100), USAGE)
    (rec,) = g.ledger.records()
    assert rec.metadata["shadow_blocked"] == "crew:c|day"
    assert to_nano(spent(g, "crew:c")) == BIG_COST
    assert [(e.outcome, e.error and e.error.scope) for e in events][:2] == [
        ("shadow_blocked", "crew:c"), ("allowed", None)]


# -- stop and end_task in the core ------------------------------------------------------

def test_end_task_and_stop_raise_in_the_core() -> None:
    # end_task is the CrewAI adapter's to turn into a final answer; the core stops.
    for policy in ("stop", "end_task"):
        g, events = guard("memory://", roles={"r": {"daily": "0.001", "on_exceed": policy}})
        with pytest.raises(BudgetExceeded):
            g.preflight("r", "big", MESSAGES, max_tokens=100)
        assert [e.outcome for e in events] == ["blocked"]
        assert g.config.policy_for("r") == policy


# -- shadow alerts ----------------------------------------------------------------------

def test_shadow_blocks_raise_one_alert_per_budget_window_and_nothing_is_blocked() -> None:
    from crew_budget.alerts import Alert, AlertManager
    from crew_budget.alerts.events import fmt_usd

    t0 = 1_795_000_000.0  # 2026-11-18 08:53 UTC
    got: list[Alert] = []
    g = Guard({"prices": PRICES, "mode": "shadow", "roles": {"researcher": {"daily": "0.45"}},
               "alerts": {"sinks": [], "anomalies": {"enabled": False}}}, "memory://",
              clock=lambda: t0, start_alerts=False)
    with AlertManager(g, sinks=[got.append]) as manager:
        for _ in range(5):  # calls 4 and 5 would have been blocked (see above)
            g.settle(g.preflight("researcher", "big", MESSAGES, max_tokens=100), USAGE)
        assert manager.flush()
    shadow = [a for a in got if a.kind == "shadow_blocked"]
    assert [a.key for a in shadow] == ["shadow_blocked:role:researcher|day|2026-11-18"]
    assert [a.kind for a in got].count("exhausted") == 0
    (alert,) = shadow
    assert alert.severity == "warning"
    assert alert.values["spent_usd"] == Decimal("0.42")
    assert alert.title == ("role 'researcher' day budget would block calls (shadow mode: "
                           "they were sent)")
    estimate = fmt_usd(g.estimate("researcher", "big", MESSAGES, max_tokens=100).amount)
    assert alert.message == (
        "role 'researcher' day budget $0.45 (2026-11-18) would have blocked a big call by "
        f"role 'researcher' estimated at {estimate} ($0.42 spent, $0.00 reserved). Shadow mode "
        "sent it and charged it; enforced, further calls would be blocked until the window "
        "resets at 2026-11-19 00:00 UTC.")
    g.close()


# -- configuration ---------------------------------------------------------------------

POLICY_YAML = """\
mode: shadow
on_exceed: stop
roles:
  writer: {daily: 2, on_exceed: {downgrade: [gpt-4o-mini, openai/gpt-4.1-nano]}}
  researcher: {daily: 5, on_exceed: end_task}
  scout: {daily: 1, on_exceed: shadow}
default_role: {daily: 1, on_exceed: {downgrade: [gpt-4o-mini]}}
"""


def test_the_policy_keys_load_and_the_shipped_schema_accepts_them(tmp_path: Any) -> None:
    import json
    from pathlib import Path

    import jsonschema
    import yaml

    schema = json.loads((Path(__file__).resolve().parents[1] / "src" / "crew_budget"
                         / "budgets.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(POLICY_YAML), schema)
    (tmp_path / "b.yaml").write_text(POLICY_YAML)
    cfg = load_config(tmp_path / "b.yaml")
    assert cfg.mode == "shadow" and cfg.on_exceed == "stop"
    assert cfg.roles["writer"].on_exceed == Downgrade(
        downgrade=("gpt-4o-mini", "openai/gpt-4.1-nano"))
    assert cfg.roles["researcher"].on_exceed == "end_task"
    enforced = cfg.model_copy(update={"mode": "enforce"})
    assert [enforced.policy_for(r) for r in ("writer", "researcher", "scout", "default_role",
                                             "unlisted")] == [
        Downgrade(downgrade=("gpt-4o-mini", "openai/gpt-4.1-nano")), "end_task", "shadow",
        Downgrade(downgrade=("gpt-4o-mini",)), "stop"]
    for role in ("writer", "researcher", "scout", "default_role"):
        assert cfg.policy_for(role) == "shadow"
