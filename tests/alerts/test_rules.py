"""Threshold and anomaly rules on synthetic histories with known answers.

Every expected number below is arithmetic on the synthetic history written
in the test (not output of the code under test); the comments show it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from crew_budget.alerts.config import (
    AlertsConfig,
    AnomalyConfig,
    BurnRateRule,
    CostPerCallRule,
    NewModelRule,
    SpendSpikeRule,
)
from crew_budget.alerts.rules import (
    burn_rate,
    cost_per_call,
    evaluate_anomalies,
    new_model,
    spend_spike,
    thresholds,
)
from crew_budget.ledger import Bucket, BucketState, SpendRecord

NANO = 10**9
# Wednesday 2026-11-25 14:30 UTC; the current hour started at 14:00.
NOW = datetime(2026, 11, 25, 14, 30, tzinfo=timezone.utc).timestamp()
HOUR_START = NOW - 1800
DAY_START = datetime(2026, 11, 25, tzinfo=timezone.utc).timestamp()


def rec(ts: float, cost: str, *, role: str = "researcher", model: str = "gpt-4o-mini",
        outcome: str = "settled") -> SpendRecord:
    return SpendRecord(ts=ts, reservation_id="r", outcome=outcome,  # type: ignore[arg-type]
                       role=role, model=model, cost_nano=int(Decimal(cost) * NANO))


def day_state(spent: str, limit: str = "5", scope: str = "role:researcher") -> BucketState:
    bucket = Bucket(scope, "day", "2026-11-25", int(Decimal(limit) * NANO), DAY_START,
                    DAY_START + 86400)
    return BucketState(bucket, int(Decimal(spent) * NANO), 0)


# -- thresholds -----------------------------------------------------------------


def test_thresholds_fire_at_exactly_the_percentage_and_not_below() -> None:
    # $4.00 of $5.00 is exactly 80 %: 50 and 80 fire, 100 does not.
    alerts = thresholds([day_state("4.00")], [50, 80, 100], NOW)
    assert [a.key for a in alerts] == [
        "threshold:role:researcher|day|2026-11-25:50",
        "threshold:role:researcher|day|2026-11-25:80",
    ]
    assert [a.severity for a in alerts] == ["info", "warning"]
    assert alerts[1].message == (
        "role 'researcher' has spent $4.00 of its day budget $5.00 (80.0%, threshold 80%); "
        "$1.00 left until the window resets at 2026-11-26 00:00 UTC."
    )
    assert alerts[1].values["spent_usd"] == Decimal("4.00")
    # One nano-dollar below 80 %: only 50 fires.
    below = BucketState(day_state("4").bucket, 4 * NANO - 1, 0)
    assert [a.values["threshold_pct"] for a in thresholds([below], [50, 80, 100], NOW)] == [50]


def test_thresholds_can_differ_per_scope() -> None:
    cfg = AlertsConfig.model_validate({"thresholds": [50, 80, 100],
                                       "scope_thresholds": {"crew:team": [30, 90]}})
    states = [day_state("2.00"), day_state("2.00", scope="crew:team")]  # 40 % of $5 each
    alerts = thresholds(states, cfg.thresholds_for, NOW)
    assert [a.key for a in alerts] == ["threshold:crew:team|day|2026-11-25:30"]


def test_reservations_in_flight_do_not_count_towards_thresholds() -> None:
    st = BucketState(day_state("0").bucket, 1 * NANO, 4 * NANO)  # $1 spent, $4 reserved
    assert thresholds([st], [50, 80, 100], NOW) == []


def test_full_budget_is_critical_and_unlimited_buckets_are_skipped() -> None:
    (hundred,) = [a for a in thresholds([day_state("5")], [100], NOW)]
    assert hundred.severity == "critical"
    assert hundred.title == "role 'researcher' reached 100% of its day budget"
    unlimited = BucketState(Bucket("global", "day", "2026-11-25", None, DAY_START,
                                   DAY_START + 86400), 10 * NANO, 0)
    assert thresholds([unlimited], [50], NOW) == []


def test_a_refused_call_counts_as_100_percent_with_the_lower_thresholds_first() -> None:
    """$4.85 spent and $0.10 in flight of $5.00: a $0.06 call is refused. By
    spend only 50 and 80 % are reached; the refusal adds 100 % (the next call
    is blocked) but not 120 %, which only spend can reach."""
    st = BucketState(day_state("0").bucket, 4_850_000_000, 100_000_000)
    key = st.bucket.key
    assert [a.values["threshold_pct"] for a in thresholds([st], [50, 80, 100, 120], NOW)] == [
        50, 80]
    alerts = thresholds([st], [50, 80, 100, 120], NOW, refused={key})
    assert [(a.values["threshold_pct"], a.values["reached_by"]) for a in alerts] == [
        (50, "spend"), (80, "spend"), (100, "refused_call")]
    assert alerts[2].severity == "critical"
    assert alerts[2].message == (
        "role 'researcher' refused a call: its day budget $5.00 cannot take the next one "
        "($4.85 spent, 97.0%, and $0.10 reserved by calls in flight), which counts as 100%; "
        "calls that fit in the $0.05 left still pass until the window resets at "
        "2026-11-26 00:00 UTC."
    )
    # A refusal early in the window (one huge call) still keeps the order:
    # every threshold up to 100 % comes with it, ascending.
    early = BucketState(day_state("0").bucket, 1 * NANO, 0)
    assert [a.values["threshold_pct"] for a in thresholds([early], [50, 80, 100], NOW,
                                                          refused={key})] == [50, 80, 100]


# -- burn rate ------------------------------------------------------------------


def test_burn_rate_thirty_percent_of_a_day_in_two_hours() -> None:
    now = DAY_START + 2 * 3600
    (alert,) = burn_rate([day_state("1.50")], now, BurnRateRule())
    # 1.50/5.00 = 30 % spent in 2/24 = 8.3 % of the day: 0.30 / (1/12) = 3.6x;
    # projected 1.50 * 24 / 2 = 18.00.
    assert alert.message == (
        "role 'researcher' is spending its day budget too fast: $1.50 (30.0%) of $5.00 spent "
        "in the first 2h00m of the window (8.3% of it), 3.6x pro-rata; at this pace it would "
        "spend $18.00 by the reset at 2026-11-26 00:00 UTC."
    )
    assert alert.values["projected_usd"] == Decimal("18.00")
    assert alert.values["pace"] == Decimal("3.6")
    assert alert.key == "burn_rate:role:researcher|day|2026-11-25"


def test_burn_rate_quiet_below_min_fraction_or_near_pro_rata() -> None:
    rule = BurnRateRule()  # factor 2, min_fraction 25 %
    # 20 % after 1 hour is 4.8x pro-rata but below the 25 % floor.
    assert burn_rate([day_state("1.00")], DAY_START + 3600, rule) == []
    # 30 % after 5 hours: pro-rata is 20.8 %, 2x would be 41.7 % > 30 %.
    assert burn_rate([day_state("1.50")], DAY_START + 5 * 3600, rule) == []
    # The same 30 % after 3.5 hours is 2.06x pro-rata (14.6 % elapsed): fires.
    assert len(burn_rate([day_state("1.50")], DAY_START + 3.5 * 3600, rule)) == 1
    assert burn_rate([day_state("1.50")], DAY_START + 2 * 3600,
                     BurnRateRule(enabled=False)) == []


# -- spend spike ----------------------------------------------------------------


def _alternating_baseline(hours: int) -> list[SpendRecord]:
    # Hour k before the current one (k = 1..hours) spent $1 (odd k) or $3 (even k):
    # mean $2.00, population standard deviation $1.00.
    return [rec(HOUR_START - k * 3600 + 60, "1" if k % 2 else "3") for k in range(1, hours + 1)]


def test_spend_spike_three_sigma_above_baseline() -> None:
    history = _alternating_baseline(48)
    rule = SpendSpikeRule()  # 3 sigma: alert above 2.00 + 3 * 1.00 = 5.00
    at_limit = [*history, rec(HOUR_START + 60, "3"), rec(HOUR_START + 120, "2")]
    assert spend_spike(at_limit, NOW, rule) == []  # $5.00 is not above $5.00
    spiking = [*history, rec(HOUR_START + 60, "3"), rec(HOUR_START + 120, "2.01")]
    (alert,) = spend_spike(spiking, NOW, rule)
    assert alert.message == (
        "role 'researcher' spent $5.01 this hour (since 14:00), 3.0 sigma above its hourly "
        "baseline over the last 7 days (48 hours: mean $2.00, std dev $1.00; alert above $5.00)."
    )
    assert alert.values["mean_usd"] == Decimal(2)
    assert alert.values["std_usd"] == Decimal(1)
    assert alert.key == "spend_spike:researcher:2026-11-25T14+0000"


def test_spend_spike_counts_quiet_hours_as_zero_and_needs_history() -> None:
    # One $31 call in the 31st hour before the current one, nothing since: 31
    # baseline hours (30 zeros and 31): mean 1, E[x^2] = 961/31 = 31, so the
    # variance is 31 - 1 = 30 and the alert line 1 + 3 * sqrt(30) = 17.43.
    history = [rec(HOUR_START - 31 * 3600 + 10, "31")]
    rule = SpendSpikeRule()
    assert spend_spike([*history, rec(HOUR_START + 5, "17")], NOW, rule) == []
    (alert,) = spend_spike([*history, rec(HOUR_START + 5, "18")], NOW, rule)
    assert alert.values["baseline_hours"] == 31
    assert alert.values["mean_usd"] == Decimal(1)
    assert alert.values["std_usd"] == Decimal(30).sqrt()
    # Had quiet hours been skipped, there would be one baseline hour (no alert).
    # A role with only 10 hours of history has no baseline yet.
    young = [rec(HOUR_START - 10 * 3600, "1"), rec(HOUR_START + 5, "100")]
    assert spend_spike(young, NOW, rule) == []
    # Blocked and reset records are not spend.
    noise = [*history, rec(HOUR_START + 5, "500", outcome="reset"),
             rec(HOUR_START + 6, "0", outcome="blocked")]
    assert spend_spike(noise, NOW, rule) == []


def test_spend_spike_ignores_other_roles_baselines() -> None:
    history = _alternating_baseline(48)  # researcher's baseline only
    writer_now = [rec(HOUR_START + 60, "50", role="writer")]
    assert spend_spike([*history, *writer_now], NOW, SpendSpikeRule()) == []


# -- new model ------------------------------------------------------------------


def test_new_model_fires_for_a_model_outside_the_baseline() -> None:
    baseline = [rec(NOW - 86400 * d - 600, "0.01") for d in range(1, 7)]  # 6 calls
    baseline += [rec(NOW - 7200 - 60 * i, "0.01") for i in range(6)]      # +6 = 12 calls
    recent = [rec(NOW - 300, "0.05", model="gpt-4o"), rec(NOW - 100, "0.07", model="gpt-4o"),
              rec(NOW - 50, "0.01")]
    (alert,) = new_model([*baseline, *recent], NOW, NewModelRule())
    assert alert.message == (
        "role 'researcher' called model 'gpt-4o' (2 calls, $0.12 in the last 60 min), which "
        "it has not used in its 7-day baseline (12 calls on: gpt-4o-mini)."
    )
    assert alert.key == "new_model:researcher:gpt-4o"


def test_new_model_quiet_without_enough_baseline_or_for_known_models() -> None:
    baseline = [rec(NOW - 7200 - 60 * i, "0.01") for i in range(9)]  # 9 < 10 calls
    recent = [rec(NOW - 100, "0.05", model="gpt-4o")]
    assert new_model([*baseline, *recent], NOW, NewModelRule()) == []
    assert new_model([*baseline, *recent], NOW, NewModelRule(min_baseline_calls=9)) != []
    # Used 6 days ago: inside the 7-day baseline, so not new.
    known = [*baseline, rec(NOW - 6 * 86400, "0.02", model="gpt-4o")]
    assert new_model([*known, *recent], NOW, NewModelRule()) == []
    # ... but 8 days ago is outside it.
    old = [*baseline, rec(NOW - 8 * 86400, "0.02", model="gpt-4o"), rec(NOW - 9000, "0.01")]
    assert len(new_model([*old, *recent], NOW, NewModelRule())) == 1


# -- cost per call --------------------------------------------------------------


def test_cost_per_call_doubling_fires_with_exact_ratio() -> None:
    baseline = [rec(NOW - 86400 - 60 * i, "0.01") for i in range(20)]
    recent = [rec(NOW - 60 * i - 1, "0.025") for i in range(4)]
    (alert,) = cost_per_call([*baseline, *recent], NOW, CostPerCallRule())
    # 0.025 / 0.01 = 2.5x
    assert alert.message == (
        "role 'researcher' cost per call rose 2.5x: $0.0250 on average over the last 60 min "
        "(4 calls) vs $0.01 in its 7-day baseline (20 calls)."
    )
    assert alert.values["ratio"] == Decimal("2.5")


def test_cost_per_call_quiet_below_factor_too_few_calls_or_for_expired_leases() -> None:
    baseline = [rec(NOW - 86400 - 60 * i, "0.01") for i in range(20)]
    rule = CostPerCallRule()
    below = [rec(NOW - 60 * i - 1, "0.0199") for i in range(4)]  # 1.99x
    assert cost_per_call([*baseline, *below], NOW, rule) == []
    few = [rec(NOW - 60 * i - 1, "0.05") for i in range(2)]      # 2 calls < min 3
    assert cost_per_call([*baseline, *few], NOW, rule) == []
    # Expired leases are charged at the reservation, not at a real price.
    leases = [rec(NOW - 60 * i - 1, "0.01") for i in range(3)]
    leases += [rec(NOW - 30, "0.50", outcome="expired"), rec(NOW - 20, "0.50", outcome="expired")]
    assert cost_per_call([*baseline, *leases], NOW, rule) == []


def test_evaluate_anomalies_runs_every_enabled_rule_and_honours_disable() -> None:
    history = _alternating_baseline(48)
    history += [rec(HOUR_START + 60, "9", model="gpt-4o")]  # spike, new model, costlier
    kinds = sorted(a.kind for a in evaluate_anomalies(history, [], NOW, AnomalyConfig()))
    # Baseline mean cost per call is $2 (48 calls); the new $9 call is 4.5x, but
    # min_calls is 3, so cost_per_call stays quiet.
    assert kinds == ["new_model", "spend_spike"]
    off = AnomalyConfig(enabled=False)
    assert evaluate_anomalies(history, [], NOW, off) == []
