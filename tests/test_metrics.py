"""Prometheus metrics: budget gauges, call counters, the estimate-error histogram.

Prices are output-only ($10 per million output tokens): every call reserves
max_tokens=1000, i.e. $0.01, and settles 500 completion tokens, i.e. $0.005,
so each settled call's actual/estimate ratio is 0.005 / 0.01 = 0.5 exactly
(an error of -50 %).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from crew_budget import BudgetExceeded, Guard, LedgerUnavailable
from crew_budget.ledger.memory import MemoryLedger
from crew_budget.metrics import register_metrics

CONFIG: dict[str, Any] = {
    "roles": {"researcher": {"daily": "0.03", "hourly": "0.03"}},
    "crew": {"name": "team", "daily": "5"},
    "prices": {"m": {"input_per_million": 0, "output_per_million": 10}},
    "lease_seconds": 60,
}
MSG = [{"role": "user", "content": "go"}]
T0 = datetime(2026, 11, 18, 8, 53, 20, tzinfo=timezone.utc).timestamp()


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def call(guard: Guard, completion: int = 500) -> None:
    ticket = guard.preflight("researcher", "m", MSG, max_tokens=1000)
    guard.settle(ticket, {"prompt_tokens": 2, "completion_tokens": completion})


def test_gauges_counters_and_histogram_from_this_process_calls() -> None:
    guard = Guard(CONFIG, MemoryLedger(clock=lambda: T0))
    registry = CollectorRegistry()
    register_metrics(guard, registry)
    for _ in range(5):
        call(guard)                                  # 5 x $0.005 = $0.025 of $0.03
    with pytest.raises(BudgetExceeded):
        call(guard)                                  # $0.025 + $0.01 > $0.03
    got = samples(registry)
    role_day = (("scope", "role:researcher"), ("window", "day"))
    assert got[("crew_budget_limit_usd", role_day)] == 0.03
    assert got[("crew_budget_spent_usd", role_day)] == 0.025
    assert got[("crew_budget_reserved_usd", role_day)] == 0.0
    assert got[("crew_budget_remaining_usd", role_day)] == 0.005
    crew_day = (("scope", "crew:team"), ("window", "day"))
    assert got[("crew_budget_limit_usd", crew_day)] == 5.0
    role_hour = (("scope", "role:researcher"), ("window", "hour"))
    assert got[("crew_budget_spent_usd", role_hour)] == 0.025
    assert got[("crew_budget_ledger_up", ())] == 1.0
    allowed = (("outcome", "allowed"), ("role", "researcher"))
    blocked = (("outcome", "blocked"), ("role", "researcher"))
    assert got[("crew_budget_calls_total", allowed)] == 5
    assert got[("crew_budget_calls_total", blocked)] == 1
    assert got[("crew_budget_cost_usd_total", (("model", "m"), ("role", "researcher")))] == 0.025
    # Every ratio is exactly 0.5: all five land in the le=0.5 bucket.
    assert got[("crew_budget_actual_to_estimate_ratio_bucket", (("le", "0.25"),))] == 0
    assert got[("crew_budget_actual_to_estimate_ratio_bucket", (("le", "0.5"),))] == 5
    assert got[("crew_budget_actual_to_estimate_ratio_bucket", (("le", "+Inf"),))] == 5
    assert got[("crew_budget_actual_to_estimate_ratio_count", ())] == 5
    assert got[("crew_budget_actual_to_estimate_ratio_sum", ())] == 2.5


def test_expired_leases_are_counted_once() -> None:
    now = [T0]
    guard = Guard(CONFIG, MemoryLedger(clock=lambda: now[0]), clock=lambda: now[0])
    registry = CollectorRegistry()
    register_metrics(guard, registry)
    ticket = guard.preflight("researcher", "m", MSG, max_tokens=1000)
    now[0] += 61                                      # the 60 s lease runs out
    assert guard.settle(ticket, {"prompt_tokens": 2, "completion_tokens": 500}).state == "expired"
    guard.settle(ticket, {"prompt_tokens": 2, "completion_tokens": 500})  # a repeat
    got = samples(registry)
    assert got[("crew_budget_calls_total", (("outcome", "expired"), ("role", "researcher")))] == 1
    # Charged at the reservation ($0.01); no estimate error is recorded for it.
    assert got[("crew_budget_cost_usd_total", (("model", "m"), ("role", "researcher")))] == 0.01
    assert got[("crew_budget_actual_to_estimate_ratio_count", ())] == 0


def test_ledger_source_counts_calls_made_by_other_guards(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    watcher = Guard(CONFIG, url)                      # e.g. `crew-budget metrics`
    registry = CollectorRegistry()
    register_metrics(watcher, registry, source="ledger")
    worker = Guard(CONFIG, url)                       # the application
    for _ in range(3):
        call(worker)
    got = samples(registry)
    allowed = (("outcome", "allowed"), ("role", "researcher"))
    assert got[("crew_budget_calls_total", allowed)] == 3
    assert got[("crew_budget_actual_to_estimate_ratio_count", ())] == 3
    call(worker)
    call(worker)                                      # $0.025 spent
    with pytest.raises(BudgetExceeded):
        call(worker)                                  # $0.025 + $0.01 > $0.03
    got = samples(registry)                           # new records only, no double count
    assert got[("crew_budget_calls_total", allowed)] == 5
    assert got[("crew_budget_calls_total", (("outcome", "blocked"), ("role", "researcher")))] == 1
    assert got[("crew_budget_actual_to_estimate_ratio_sum", ())] == 2.5
    day = next(s for s in worker.status() if s.window == "day" and s.scope == "role:researcher")
    assert day.period  # the period is not a label: one series per scope and window
    assert got[("crew_budget_spent_usd", (("scope", "role:researcher"),
                                          ("window", "day")))] == 0.025


class DownLedger(MemoryLedger):
    """A ledger whose server went away after start-up."""

    def status(self, buckets: Any) -> Any:
        raise LedgerUnavailable(self.url, "connection refused")

    def records(self, since: Any = None, until: Any = None) -> Any:
        raise LedgerUnavailable(self.url, "connection refused")


def test_an_unreachable_ledger_reports_down_instead_of_failing_the_scrape() -> None:
    guard = Guard(CONFIG, DownLedger("memory://down"))
    registry = CollectorRegistry()
    register_metrics(guard, registry, source="ledger", since=T0)
    got = samples(registry)
    assert got[("crew_budget_ledger_up", ())] == 0.0
    assert not any(name == "crew_budget_spent_usd" for name, _ in got)


def test_registering_twice_in_one_registry_is_refused() -> None:
    guard = Guard(CONFIG, "memory://")
    registry = CollectorRegistry()
    register_metrics(guard, registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        register_metrics(guard, registry)


def test_windows_are_one_series_across_periods_and_counters_start_at_zero() -> None:
    """The hour turns: the same {scope, window} series drops back to 0 (no new
    series per period), and every configured role has call counters at 0
    before its first call, default_role included."""
    now = [T0]
    cfg = {**CONFIG, "default_role": {"daily": 1}}
    guard = Guard(cfg, MemoryLedger(clock=lambda: now[0]), clock=lambda: now[0])
    registry = CollectorRegistry()
    register_metrics(guard, registry)
    first = samples(registry)
    for role in ("researcher", "default_role"):
        for outcome in ("allowed", "blocked", "expired"):
            assert first[("crew_budget_calls_total", (("outcome", outcome), ("role", role)))] == 0
    assert first[("crew_budget_usage_errors_total", ())] == 0
    call(guard)
    ticket = guard.preflight("intern", "m", MSG, max_tokens=1000)   # -> default_role
    guard.settle(ticket, {"prompt_tokens": 2, "completion_tokens": 500})
    hour = (("scope", "role:researcher"), ("window", "hour"))
    got = samples(registry)
    assert got[("crew_budget_spent_usd", hour)] == 0.005
    assert got[("crew_budget_spent_usd", (("scope", "role:default_role"), ("window", "day")))] \
        == 0.005
    assert got[("crew_budget_calls_total", (("outcome", "allowed"), ("role", "default_role")))] \
        == 1
    assert got[("crew_budget_window_end_timestamp_seconds", hour)] == T0 - 3200 + 3600  # 09:00
    now[0] += 3600                                    # the next hour
    later = samples(registry)
    assert later[("crew_budget_spent_usd", hour)] == 0.0
    assert later[("crew_budget_window_end_timestamp_seconds", hour)] == T0 + 400 + 3600
    series = [k for k in later if k[0] == "crew_budget_spent_usd"]
    assert len(series) == len(set(series)) == 4   # researcher hour/day, default_role, crew
    assert not any("period" in dict(labels) for _, labels in later)
    # Conventional names: counters end in _total, money in _usd, time in _seconds.
    names = {name for name, _ in later}
    assert {"crew_budget_calls_total", "crew_budget_cost_usd_total",
            "crew_budget_usage_errors_total", "crew_budget_ledger_up",
            "crew_budget_actual_to_estimate_ratio_count"} <= names
    text = generate_latest(registry).decode()
    assert "# TYPE crew_budget_overruns_total counter" in text
    assert "# TYPE crew_budget_cost_usd_total counter" in text


def test_ledger_source_warns_when_the_ledger_keeps_no_records(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # records_retention_days: 0 leaves source="ledger" nothing to count: one
    # warning names the setting and the fix instead of silent zeros.
    url = f"sqlite:///{tmp_path / 'l.db'}"
    guard = Guard({"roles": {"r": {"daily": 1}}, "records_retention_days": 0}, url)
    with caplog.at_level("WARNING", logger="crew_budget.metrics"):
        register_metrics(guard, CollectorRegistry(), source="ledger")
    assert [r.getMessage() for r in caplog.records] == [
        f"crew-budget metrics: source='ledger' counts calls from the ledger's spend records, "
        f"and {url} keeps none (records_retention_days: 0): the call, cost and overrun "
        "counters stay at 0. Fix: set records_retention_days to 1 or more, or use "
        "source='calls' in each process"]
    guard.close()
