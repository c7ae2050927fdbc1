"""``crew_budget.serve.data``: what the dashboard shows, computed from a real ledger.

Prices (litellm's map): gpt-4o-mini $0.15/M input, $0.60/M output.

- role ``a`` ($1.00/day) makes one call whose usage says 4,000,000 prompt
  tokens: $0.60 exactly, far above its small reservation, so it is an
  overrun of $0.60 - estimate, and ``a`` crosses its 50 % threshold (60 %).
- role ``b`` ($0.50/day) asks for 1,000,000 output tokens: the reservation
  ($0.60 + prompt) cannot fit, the call is blocked, nothing is spent.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from crew_budget import BudgetExceeded, Guard
from crew_budget.money import to_nano
from crew_budget.serve.data import snapshot

MSG = [{"role": "user", "content": "Summarise the quarterly report."}]


@pytest.fixture
def guard() -> Guard:
    return Guard({"roles": {"a": {"daily": "1.00", "max_output_tokens": 100},
                            "b": {"daily": "0.50"}}}, "memory://", start_alerts=False)


def test_snapshot_counts_spend_blocks_overruns_and_thresholds(guard: Guard) -> None:
    ticket = guard.preflight(role="a", model="gpt-4o-mini", messages=MSG)
    settled = guard.settle(ticket, {"prompt_tokens": 4_000_000, "completion_tokens": 0})
    assert settled.cost == Decimal("0.6")
    with pytest.raises(BudgetExceeded):
        guard.preflight(role="b", model="gpt-4o-mini", messages=MSG, max_tokens=1_000_000)

    snap = snapshot(guard).to_dict()
    gauges = {g["scope"]: g for g in snap["gauges"]}
    assert (gauges["role:a"]["spent_usd"], gauges["role:a"]["left_usd"],
            gauges["role:a"]["used_pct"]) == ("0.6", "0.4", "60.0")
    assert (gauges["role:b"]["spent_usd"], gauges["role:b"]["left_usd"]) == ("0", "0.5")

    spend = snap["spend"]
    assert spend["total_nano"] == 600_000_000 and spend["total_usd"] == "0.6"
    assert [(r["role"], r["spent_nano"], r["calls"], r["blocked"]) for r in spend["by_role"]] == [
        ("a", 600_000_000, 1, 0), ("b", 0, 0, 1)]
    assert spend["by_model"] == [{"model": "gpt-4o-mini", "spent_usd": "0.6",
                                  "spent_nano": 600_000_000, "calls": 1, "blocked": 1}]
    assert spend["by_hour"] == {"a": [0] * 23 + [600_000_000]}
    assert len(spend["hours"]) == 24 and spend["hours"][1] - spend["hours"][0] == 3600

    [blocked] = snap["blocked"]
    assert (blocked["role"], blocked["scope"]) == ("b", "role:b")
    assert to_nano(blocked["estimate_usd"]) > to_nano("0.6")  # 1M output tokens + prompt

    over = snap["overruns"]
    assert over["count"] == 1
    assert Decimal(over["over_usd"]) == Decimal("0.6") - ticket.estimate
    assert over["calls"][0]["kind"] == "over estimate"
    assert over["calls"][0]["cost_usd"] == "0.6"

    assert [(a["severity"], a["kind"], a["title"]) for a in snap["alerts"]] == [
        ("critical", "blocked", "role 'b' refused 1 call"),
        ("info", "threshold", "role 'a' reached 50% of its day budget"),
    ]


def test_the_alert_feed_uses_the_configs_own_thresholds() -> None:
    guard = Guard({"roles": {"a": {"daily": "1.00"}}, "alerts": {"thresholds": [25, 55]}},
                  "memory://", start_alerts=False)
    ticket = guard.preflight(role="a", model="gpt-4o-mini", messages=MSG, max_tokens=10)
    guard.settle(ticket, {"prompt_tokens": 4_000_000, "completion_tokens": 0})  # $0.60
    feed = snapshot(guard).to_dict()["alerts"]
    assert [a["title"] for a in feed] == ["role 'a' reached 25% of its day budget",
                                          "role 'a' reached 55% of its day budget"]
    guard.close()


def test_snapshot_of_an_empty_ledger_is_all_zero(guard: Guard) -> None:
    snap = snapshot(guard).to_dict()
    assert snap["spend"]["total_usd"] == "0" and snap["spend"]["by_role"] == []
    assert snap["blocked"] == [] and snap["alerts"] == []
    assert snap["overruns"] == {"count": 0, "over_usd": "0", "calls": []}
    assert [g["scope"] for g in snap["gauges"]] == ["role:a", "role:b"]


def test_the_incremental_record_window_matches_a_full_read_even_for_a_late_record(
    guard: Guard,
) -> None:
    from dataclasses import replace

    from crew_budget.serve.data import RecordWindow

    def call(role: str) -> None:
        t = guard.preflight(role=role, model="gpt-4o-mini", messages=MSG, max_tokens=10)
        guard.settle(t, {"prompt_tokens": 1000, "completion_tokens": 10})  # $0.000156

    def calls(snap: dict[str, object]) -> int:
        return sum(r["calls"] for r in snap["spend"]["by_role"])  # type: ignore[index]

    def same(a: dict[str, object], b: dict[str, object]) -> bool:
        drop = ("now", "now_iso")
        return {k: v for k, v in a.items() if k not in drop} == {
            k: v for k, v in b.items() if k not in drop}

    window = RecordWindow(overlap=60)
    call("a")
    assert calls(snapshot(guard, window).to_dict()) == 1
    call("a")
    call("b")
    assert calls(snapshot(guard, window).to_dict()) == 3  # read incrementally
    # Another process commits a record stamped 30 s ago, after our last read.
    [first] = [r for r in guard.ledger.records() if r.role == "b"]
    guard.ledger.append_record(replace(first, ts=guard.ledger.now() - 30,
                                       reservation_id="late"))
    incremental = snapshot(guard, window).to_dict()
    assert calls(incremental) == 4
    assert incremental["spend"]["total_nano"] == 4 * 156_000  # type: ignore[index]
    assert same(incremental, snapshot(guard).to_dict())
    assert calls(snapshot(guard, window).to_dict()) == 4  # nothing counted twice


def test_snapshot_shows_runs_tasks_and_live_limits(guard: Guard) -> None:
    # Two calls in one run (tasks "draft" and "review"), one outside any run;
    # each settles 100,000 prompt tokens = $0.015 exactly. Then an operator
    # sets a's daily limit to $0.20 and pauses b: the page re-reads both from
    # the ledger, and a's gauge shows the live limit, not the YAML's $1.00.
    import crew_budget

    def call(task: str) -> None:
        t = guard.preflight(role="a", model="gpt-4o-mini", messages=MSG, metadata={"task": task})
        guard.settle(t, {"prompt_tokens": 100_000, "completion_tokens": 0})

    with crew_budget.run("nightly") as run:
        call("draft")
        call("review")
    call("draft")
    guard.set_limits("a", daily_usd="0.20", who="ops@host", reason="cost review")
    guard.pause("b", who="ops@host", reason="runaway loop")

    snap = snapshot(guard).to_dict()
    assert snap["runs"]["by_run"] == [{"run": run.run_id, "spent_nano": 30_000_000,
                                       "spent_usd": "0.03", "calls": 2, "blocked": 0}]
    assert [(r["task"], r["spent_nano"], r["calls"]) for r in snap["runs"]["by_task"]] == [
        ("draft", 30_000_000, 2), ("review", 15_000_000, 1)]
    assert [(o["role"], o["kind"], o["limit_usd"], o["who"], o["reason"])
            for o in snap["live_limits"]] == [
        ("a", "daily", "0.2", "ops@host", "cost review"),
        ("b", "paused", None, "ops@host", "runaway loop")]
    gauges = {g["scope"]: g for g in snap["gauges"]}
    assert (gauges["role:a"]["limit_usd"], gauges["role:a"]["spent_usd"]) == ("0.2", "0.045")
