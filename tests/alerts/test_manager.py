"""AlertManager driven by a real Guard on the memory ledger.

Prices are output-only ($0 input, $10 per million output tokens) and every
call reserves max_tokens=1000 and settles 1000 completion tokens, so each
call costs exactly 1000 * $10/1e6 = $0.01 and a $1.00 budget takes 100 calls.
"""

from __future__ import annotations

import logging
import threading
from decimal import Decimal
from typing import Any

import pytest

from crew_budget import BudgetExceeded, Guard
from crew_budget.alerts import Alert, AlertManager, AlertsConfig
from crew_budget.guard import GuardEvent
from crew_budget.ledger import SpendRecord
from crew_budget.ledger.memory import MemoryLedger

MSG = [{"role": "user", "content": "go"}]
USAGE = {"prompt_tokens": 5, "completion_tokens": 1000}  # $0.01 at the test price
CONFIG: dict[str, Any] = {
    "roles": {"researcher": {"daily": "1.00"}, "writer": {"daily": "10"}},
    "crew": {"name": "team", "daily": "2.00"},
    "prices": {"alert-model": {"input_per_million": 0, "output_per_million": 10},
               "big-model": {"input_per_million": 0, "output_per_million": 100}},
    "alerts": {"sinks": [], "anomalies": {"enabled": False}},
}
T0 = 1_795_000_000.0  # 2026-11-18 (a Wednesday), 08:53 UTC


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def spend(guard: Guard, calls: int, role: str = "researcher", model: str = "alert-model") -> None:
    for _ in range(calls):
        ticket = guard.preflight(role, model, MSG, max_tokens=1000)
        guard.settle(ticket, USAGE)


def keys(alerts: list[Alert]) -> list[str]:
    return [a.key for a in alerts]


def test_each_threshold_fires_exactly_once_per_scope_and_window() -> None:
    got: list[Alert] = []
    guard = Guard(CONFIG, "memory://", clock=Clock())
    with AlertManager(guard, sinks=[got.append]) as manager:
        spend(guard, 49)                      # $0.49: nothing yet
        assert manager.flush()
        assert got == []
        spend(guard, 1)                       # $0.50: role 50 %
        assert manager.flush()
        assert keys(got) == ["threshold:role:researcher|day|2026-11-18:50"]
        spend(guard, 50)                      # $1.00: role 80 + 100, crew 50
        for _ in range(3):                    # blocked three times: one exhausted alert
            with pytest.raises(BudgetExceeded):
                spend(guard, 1)
        assert manager.flush()
    # The crew ($1.00 of $2.00) crosses 50 % with the same calls; the order
    # within one evaluation batch is not part of the contract, the count is.
    assert sorted(keys(got)) == [
        "exhausted:role:researcher|day|2026-11-18",
        "threshold:crew:team|day|2026-11-18:50",
        "threshold:role:researcher|day|2026-11-18:100",
        "threshold:role:researcher|day|2026-11-18:50",
        "threshold:role:researcher|day|2026-11-18:80",
    ]
    (exhausted,) = [a for a in got if a.kind == "exhausted"]
    assert exhausted.values["spent_usd"] == Decimal("1.00")
    assert exhausted.values["estimate_usd"] == Decimal("0.01")
    assert "a alert-model call by role 'researcher' estimated at $0.01 was blocked" in (
        exhausted.message)
    assert "until the window resets at 2026-11-19 00:00 UTC" in exhausted.message


def test_thresholds_fire_again_in_the_next_window() -> None:
    clock = Clock()
    got: list[Alert] = []
    guard = Guard(CONFIG, "memory://", clock=clock)
    with AlertManager(guard, sinks=[got.append]) as manager:
        spend(guard, 50)
        manager.flush()
        clock.t += 86400  # next day: new buckets, new periods
        spend(guard, 50)
        manager.flush()
    assert keys(got) == ["threshold:role:researcher|day|2026-11-18:50",
                         "threshold:role:researcher|day|2026-11-19:50"]


def test_two_managers_sharing_a_ledger_send_each_alert_once() -> None:
    ledger = MemoryLedger(clock=Clock())
    got_a: list[Alert] = []
    got_b: list[Alert] = []
    guard_a, guard_b = Guard(CONFIG, ledger), Guard(CONFIG, ledger)
    with AlertManager(guard_a, sinks=[got_a.append]) as a, \
            AlertManager(guard_b, sinks=[got_b.append]) as b:
        for _ in range(25):  # both push the same budget past 50 %
            spend(guard_a, 1)
            spend(guard_b, 1)
        a.flush()
        b.flush()
    assert len(got_a) + len(got_b) == 1
    assert keys(got_a + got_b) == ["threshold:role:researcher|day|2026-11-18:50"]


def test_a_blocking_sink_never_delays_the_call() -> None:
    entered, release = threading.Event(), threading.Event()
    delivered: list[Alert] = []

    def slow_sink(alert: Alert) -> None:
        entered.set()
        assert release.wait(10)
        delivered.append(alert)

    guard = Guard(CONFIG, "memory://", clock=Clock())
    manager = AlertManager(guard, sinks=[slow_sink])
    spend(guard, 50)
    assert entered.wait(5)        # the sink is now stuck inside the 50 % alert...
    spend(guard, 30)              # ...and 30 more calls go through regardless
    assert guard.status("researcher")[0].spent == Decimal("0.80")
    assert delivered == []
    release.set()
    assert manager.flush()
    assert [a.values["threshold_pct"] for a in delivered] == [50, 80]
    manager.close()


def test_failing_sink_is_retried_with_exponential_backoff_from_the_outbox() -> None:
    """Retries wait in the ledger: after each failed send the entry is due
    again 0.5 s, then 1.0 s later on the ledger's clock (0.5 * 2**n)."""
    attempts: list[str] = []

    def flaky(alert: Alert) -> None:
        attempts.append(alert.key)
        if len(attempts) < 3:
            raise ConnectionError("webhook down")

    cfg = AlertsConfig.model_validate({
        "sinks": [], "anomalies": {"enabled": False},
        "delivery": {"backoff_seconds": 0.5, "max_backoff_seconds": 30},
    })
    clock = Clock()
    guard = Guard(CONFIG, "memory://", clock=clock)
    manager = AlertManager(guard, cfg, sinks=[flaky], start=False)
    spend(guard, 50)
    (alert,) = manager.check(["researcher"])
    (worker,) = manager._workers
    okey = f"{alert.key}>{worker.channel}"
    dues = []
    for _ in range(3):
        assert worker.deliver_due() == 1
        entry = guard.ledger.outbox_get(okey)
        assert entry is not None
        due = entry.due_at - clock.t if entry.state == "pending" else None
        dues.append((entry.state, due, entry.last_error))
        assert worker.deliver_due() == 0          # not due until the clock moves
        clock.t += 5
    assert dues == [("pending", 0.5, "ConnectionError: webhook down"),
                    ("pending", 1.0, "ConnectionError: webhook down"),
                    ("delivered", None, "ConnectionError: webhook down")]
    assert attempts == [alert.key] * 3                # two failures, then delivered
    (stats,) = manager.stats()
    assert (stats.delivered, stats.failed, stats.retries) == (1, 0, 2)
    manager.close()


def test_dead_sink_gives_up_loudly_per_alert_and_other_sinks_still_deliver(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def dead(alert: Alert) -> None:
        raise ConnectionRefusedError("nobody listening")

    good: list[Alert] = []
    cfg = AlertsConfig.model_validate({
        "sinks": [], "anomalies": {"enabled": False},
        "delivery": {"attempts": 2, "backoff_seconds": 0},
    })
    guard = Guard(CONFIG, "memory://", clock=Clock())
    with caplog.at_level(logging.WARNING, logger="crew_budget.alerts"), \
            AlertManager(guard, cfg, sinks=[dead, good.append]) as manager:
        spend(guard, 100)                     # role 50/80/100 + crew 50: all fail on `dead`
        assert manager.flush()
        dead_stats, good_stats = manager.stats()
    assert guard.status("researcher")[0].spent == Decimal("1.00")  # every call went through
    assert (dead_stats.failed, dead_stats.delivered, dead_stats.retries) == (4, 0, 4)
    assert dead_stats.last_error == "ConnectionRefusedError: nobody listening"
    assert good_stats.delivered == 4 and len(good) == 4
    gave_up = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(gave_up) == 4                  # one ERROR per alert lost, naming it
    lost = sorted(r.getMessage().split(" GAVE UP on alert ")[1].split()[0] for r in gave_up)
    assert lost == sorted(a.key for a in good)
    assert all(" failed 2 times over " in r.getMessage() for r in gave_up)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1                 # failed sends: one warning per burst


def test_a_raising_listener_never_reaches_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    guard = Guard(CONFIG, "memory://", clock=Clock())
    seen: list[str] = []

    def broken(event: GuardEvent) -> None:
        seen.append(event.outcome)
        raise RuntimeError("listener bug")

    remove = guard.add_listener(broken)
    with caplog.at_level(logging.ERROR, logger="crew_budget"):
        spend(guard, 1)
    assert seen == ["allowed", "settled"]
    assert guard.status("researcher")[0].spent == Decimal("0.01")
    assert sum("listener" in r.getMessage() for r in caplog.records) == 2
    remove()
    spend(guard, 1)
    assert seen == ["allowed", "settled"]


def test_guard_events_carry_outcome_cost_and_block_details() -> None:
    guard = Guard({**CONFIG, "roles": {"researcher": {"daily": "0.015"}, "writer": {}}},
                  "memory://", clock=Clock())
    events: list[GuardEvent] = []
    guard.add_listener(events.append)
    spend(guard, 1)
    with pytest.raises(BudgetExceeded):
        spend(guard, 1)
    ticket = guard.preflight("writer", "alert-model", MSG, max_tokens=1000)
    guard.release(ticket)
    guard.release(ticket)  # a repeat changes nothing
    assert [(e.outcome, e.role, e.cost, e.applied) for e in events] == [
        ("allowed", "researcher", Decimal(0), True),
        ("settled", "researcher", Decimal("0.01"), True),
        ("blocked", "researcher", Decimal(0), True),
        ("allowed", "writer", Decimal(0), True),
        ("released", "writer", Decimal(0), True),
        ("released", "writer", Decimal(0), False),
    ]
    blocked = events[2].error
    assert blocked is not None and blocked.scope == "role:researcher"
    assert blocked.limit == Decimal("0.015")


def baseline_with_new_model_rule(check_interval: float) -> tuple[MemoryLedger, dict[str, Any]]:
    """A ledger holding 12 researcher calls on alert-model over the last days,
    and a config with only the new-model rule: a $0.10 call would also be a
    spend spike against this quiet baseline (tested in test_rules.py)."""
    ledger = MemoryLedger(clock=Clock(T0))
    for i in range(12):
        ledger.append_record(SpendRecord(ts=T0 - 86400 - 600 * i, reservation_id=f"b{i}",
                                         outcome="settled", role="researcher",
                                         model="alert-model", cost_nano=10_000_000))
    quiet = {"enabled": False}
    config = {**CONFIG, "alerts": {"sinks": [], "thresholds": [], "anomalies": {
        "check_interval_seconds": check_interval, "burn_rate": quiet, "spend_spike": quiet}}}
    return ledger, config


def test_anomalies_are_evaluated_after_spend_and_sent_once() -> None:
    ledger, config = baseline_with_new_model_rule(0)
    got: list[Alert] = []
    guard = Guard(config, ledger)
    with AlertManager(guard, sinks=[got.append]) as manager:
        spend(guard, 1, model="big-model")   # a model outside the baseline
        manager.flush()
        spend(guard, 1, model="big-model")   # the same switch again: no second alert
        manager.flush()
    assert keys(got) == ["new_model:researcher:big-model"]
    assert got[0].message == (
        "role 'researcher' called model 'big-model' (1 calls, $0.10 in the last 60 min), "
        "which it has not used in its 7-day baseline (12 calls on: alert-model)."
    )


def test_anomaly_check_skipped_by_the_interval_runs_when_it_is_due() -> None:
    ledger, config = baseline_with_new_model_rule(0.3)
    got: list[Alert] = []
    guard = Guard(config, ledger)
    with AlertManager(guard, sinks=[got.append]) as manager:
        spend(guard, 1)                      # first check: nothing unusual
        manager.flush()
        spend(guard, 1, model="big-model")   # within the interval: check deferred
        manager.flush()
        assert got == []
        deadline = threading.Event()
        for _ in range(100):                 # ... and run by the worker when due
            if got:
                break
            deadline.wait(0.05)
    assert keys(got) == ["new_model:researcher:big-model"]


def test_manual_check_covers_every_configured_budget() -> None:
    ledger = MemoryLedger(clock=Clock())
    guard = Guard(CONFIG, ledger)
    spend(guard, 100, role="writer")  # $1.00: 10 % of writer's $10, 50 % of the crew's $2
    got: list[Alert] = []
    manager = AlertManager(guard, sinks=[got.append], start=False)
    sent = manager.check()
    manager.flush()
    assert keys(sent) == keys(got) == ["threshold:crew:team|day|2026-11-18:50"]
    assert manager.check() == []  # claimed: never twice
    manager.close()


def test_callable_sink_named_in_the_yaml_receives_alerts() -> None:
    from tests.alerts import helpers

    helpers.RECORDED.clear()
    config = {**CONFIG, "alerts": {
        "anomalies": {"enabled": False},
        "scope_thresholds": {"role:researcher": [10]},
        "sinks": [{"type": "callable", "path": "tests.alerts.helpers:record_alert"}]}}
    guard = Guard(config, "memory://", clock=Clock())
    with AlertManager(guard) as manager:
        spend(guard, 10)  # $0.10 of $1.00: the researcher's own 10 % threshold
        assert manager.flush()
        (stats,) = manager.stats()
    assert keys(helpers.RECORDED) == ["threshold:role:researcher|day|2026-11-18:10"]
    assert stats.name == "tests.alerts.helpers:record_alert" and stats.delivered == 1


def test_an_alerts_section_starts_a_manager_and_a_hand_built_one_replaces_it() -> None:
    """`alerts:` in the YAML must act (not be silently ignored), and a guard
    never ends up with two managers sending the same alert."""
    from crew_budget.alerts import AlertManager

    got: list[object] = []
    guard = Guard({"roles": {"r": {"daily": "0.001"}},
                   "prices": {"m": {"input_per_million": 0, "output_per_million": 10}},
                   # 60 % of a daily budget is a burn-rate alert before 07:12 UTC;
                   # this test is about thresholds, so it must not depend on the hour.
                   "alerts": {"sinks": [{"type": "log"}], "anomalies": {"enabled": False}}},
                  "memory://")
    auto = guard.alerts
    assert isinstance(auto, AlertManager)
    assert len(guard._listeners) == 1
    manual = AlertManager(guard, sinks=[got.append], replace_sinks=True)
    assert guard.alerts is manual
    assert len(guard._listeners) == 1
    t = guard.preflight("r", "m", [{"role": "user", "content": "x"}], max_tokens=60)
    guard.settle(t, {"prompt_tokens": 1, "completion_tokens": 60})  # 60 % of the budget
    assert manual.flush()
    assert [a.kind for a in got] == ["threshold"]  # type: ignore[attr-defined]
    guard.close()
    assert Guard({"alerts": {"sinks": []}}, "memory://", start_alerts=False).alerts is None


def test_a_lease_shorter_than_a_sink_timeout_is_a_config_error() -> None:
    """A claim must outlive the slowest send, or another process takes the
    alert over mid-send and it arrives twice."""
    from crew_budget.errors import ConfigError

    config = {**CONFIG, "alerts": {"anomalies": {"enabled": False}, "delivery": {
        "lease_seconds": 5}, "sinks": [{"type": "webhook", "url": "http://127.0.0.1:9/h",
                                        "timeout_seconds": 5}]}}
    with pytest.raises(ConfigError) as info:
        Guard(config, "memory://")
    assert str(info.value) == (
        "alerts: alerts.delivery.lease_seconds: the claim lease (5 s) must be longer than the "
        "timeout of sink webhook(http://127.0.0.1:9/h) (5 s), or a slow send "
        "could be taken over and sent twice. Fix: raise lease_seconds or lower the sink's "
        "timeout_seconds"
    )


def test_a_failed_put_holds_back_the_later_thresholds_to_keep_the_order() -> None:
    """The ledger refuses the 50 % put once: 80 % must not be stored (it
    would be delivered first). The next check stores both, in order."""
    from crew_budget.errors import LedgerUnavailable

    class OnceDown(MemoryLedger):
        failed = False

        def outbox_put(self, key: str, payload: str, **kw: Any) -> bool:
            if ":50>" in key and not self.failed:
                self.failed = True
                raise LedgerUnavailable(self.url, "connection reset")
            return super().outbox_put(key, payload, **kw)

    ledger = OnceDown(clock=Clock())
    got: list[Alert] = []
    guard = Guard(CONFIG, ledger, start_alerts=False)
    manager = AlertManager(guard, sinks=[got.append], start=False)
    spend(guard, 80, role="writer")         # $0.80: 8 % of writer, 40 % of the crew
    spend(guard, 80)                        # researcher at 80 %, crew at 80 %
    assert manager.check(["researcher"]) == []
    assert manager.flush()
    assert got == []
    raised = manager.check(["researcher"])
    assert manager.flush()
    assert keys(raised) == [
        "threshold:role:researcher|day|2026-11-18:50",
        "threshold:role:researcher|day|2026-11-18:80",
        "threshold:crew:team|day|2026-11-18:50",
        "threshold:crew:team|day|2026-11-18:80",
    ]
    # Delivered once each; in order within each budget (the two budgets interleave).
    assert sorted(keys(got)) == sorted(keys(raised))
    assert [k for k in keys(got) if ":role:" in k] == keys(raised)[:2]
    assert [k for k in keys(got) if ":crew:" in k] == keys(raised)[2:]
    manager.close()
