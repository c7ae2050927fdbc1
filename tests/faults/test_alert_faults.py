"""Alerts under faults: a webhook that is down, a claimant SIGKILLed, a burst
of processes, a limit that is no multiple of the call cost, a sink that never
comes back. Real loopback HTTP servers, real processes, real redis-server.

Every call costs exactly $0.01 (1000 output tokens at $10/M) unless stated,
against a $1.00 daily budget for role "racer" with thresholds 50/80/100 %, so
the alerts are: 50 %, 80 %, 100 % and "exhausted" of ``role:racer|day|<day>``.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from crew_budget import Guard
from crew_budget.alerts import Alert, AlertManager, WebhookSink
from tests.alerts.helpers import FlakyWebhook, burst_worker, fault_config, spend_until_blocked

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'alerts.db'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def hook() -> Iterator[FlakyWebhook]:
    h = FlakyWebhook(down_for=None)  # 503 until the test calls up()
    yield h
    h.close()


def expected(period: str) -> list[str]:
    base = f"role:racer|day|{period}"
    return [f"threshold:{base}:50", f"threshold:{base}:80", f"threshold:{base}:100",
            f"exhausted:{base}"]


def period_of(guard: Guard) -> str:
    (role,) = [s for s in guard.status("racer") if s.scope == "role:racer"]
    return role.period


def wait_until(check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_webhook_down_then_up_gets_every_alert_exactly_once_in_order(
    url: str, hook: FlakyWebhook
) -> None:
    """The webhook answers 503 for longer than the old 4-attempt retry window
    (which lost the "exhausted" alert for good); every alert still arrives,
    once, in ascending order."""
    guard = Guard(fault_config(hook.url), url)
    assert spend_until_blocked(guard) == 100
    wait_until(lambda: hook.refused() >= 6)       # a few rounds of 503s...
    assert hook.delivered() == []
    hook.up()                                     # ...then the webhook is back
    assert guard.alerts.flush(60)
    (stats,) = guard.alerts.stats()
    period = period_of(guard)
    guard.close()
    assert hook.delivered() == expected(period)   # once each, 50 < 80 < 100 < exhausted
    assert stats.delivered == 4 and stats.failed == 0
    assert stats.retries == hook.refused() >= 6   # every 503 was retried, none lost


def test_claimant_killed_after_claiming_is_taken_over_after_its_lease(
    url: str, hook: FlakyWebhook
) -> None:
    """A process raises all four alerts, claims the first one and is SIGKILLed
    before sending it. Another process delivers everything once the claim's
    lease (2 s) has run out: each alert exactly once, in order."""
    hook.up()
    code = ("import sys; from tests.alerts.helpers import die_after_claim_worker; "
            "die_after_claim_worker(sys.argv[1], sys.argv[2], 2.0)")
    proc = subprocess.run([sys.executable, "-c", code, url, hook.url], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr      # died by SIGKILL, right after the claim
    assert hook.log == []                          # nothing was sent

    guard = Guard(fault_config(hook.url), url, start_alerts=False)
    period = period_of(guard)
    keys = expected(period)
    channel = WebhookSink(hook.url).name          # the outbox channel is the sink's name
    first = guard.ledger.outbox_get(f"{keys[0]}>{channel}")
    assert first is not None and (first.state, first.attempts) == ("claimed", 1)
    rest = [guard.ledger.outbox_get(f"{k}>{channel}") for k in keys[1:]]
    assert [(e.state, e.attempts) for e in rest if e] == [("pending", 0)] * 3

    manager = AlertManager(guard)                 # the survivor: raises nothing new...
    assert manager.check(["racer"]) == []
    assert manager.flush(60)                      # ...but delivers what the dead one left
    wait_until(lambda: len(hook.delivered()) == 4)
    after = [guard.ledger.outbox_get(f"{k}>{channel}") for k in keys]
    manager.close()
    guard.close()
    assert hook.delivered() == keys
    assert [(e.state, e.attempts) for e in after if e] == [
        ("delivered", 2), ("delivered", 1), ("delivered", 1), ("delivered", 1)]


@pytest.mark.slow
def test_burst_of_processes_delivers_thresholds_in_ascending_order(
    url: str, hook: FlakyWebhook
) -> None:
    """4 processes x 3 threads spend one budget until refused, each process
    with its own AlertManager: each alert arrives once, 50 < 80 < 100 <
    exhausted, though the evaluations raising them raced."""
    hook.up()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as shared:
        start = shared.Barrier(4)
        with ctx.Pool(4) as pool:
            calls = pool.starmap(burst_worker, [(url, hook.url, 3, start)] * 4)
    guard = Guard(fault_config(hook.url), url, start_alerts=False)
    period = period_of(guard)
    spent = [s.spent for s in guard.status("racer")]
    blocked = [r for r in guard.ledger.records() if r.outcome == "blocked"]
    guard.close()
    assert sum(calls) == 100 and spent == [Decimal("1")]
    assert len(blocked) == 12                     # every thread was refused once
    assert hook.delivered() == expected(period)
    assert hook.refused() == 0


def test_100_percent_fires_when_the_next_call_is_blocked_on_an_odd_limit(url: str) -> None:
    """$0.03 calls against $1.00: the budget stops at $0.99 (33 calls), which
    never reaches 100 % by spend; the refused 34th call makes it fire, after
    50 and 80 and before "exhausted"."""
    got: list[Alert] = []
    guard = Guard({**fault_config("http://127.0.0.1:9/unused"), "alerts": {
        "thresholds": [50, 80, 100], "anomalies": {"enabled": False}, "sinks": []}}, url,
        start_alerts=False)
    with AlertManager(guard, sinks=[got.append]) as manager:
        assert spend_until_blocked(guard, tokens=3000) == 33
        assert manager.flush(30)
    period = period_of(guard)
    assert [s.spent for s in guard.status("racer")] == [Decimal("0.99")]
    guard.close()
    assert [a.key for a in got] == expected(period)
    hundred = got[2]
    assert hundred.values["reached_by"] == "refused_call"
    assert hundred.values["spent_usd"] == Decimal("0.99")
    assert hundred.message.startswith("role 'racer' refused a call: its day budget $1.00 "
                                      "cannot take the next one ($0.99 spent, 99.0%")
    assert [a.values["reached_by"] for a in got[:2]] == ["spend", "spend"]


def test_give_up_after_the_configured_time_logs_an_error_per_alert(
    url: str, hook: FlakyWebhook, caplog: pytest.LogCaptureFixture
) -> None:
    """The webhook never comes back: after give_up_after_seconds (1 s) each
    alert is marked failed and one ERROR names it; nothing is retried after."""
    guard = Guard(fault_config(hook.url, give_up_after_seconds=1.0), url)
    with caplog.at_level(logging.WARNING, logger="crew_budget.alerts"):
        assert spend_until_blocked(guard) == 100
        assert guard.alerts.flush(60)
        (stats,) = guard.alerts.stats()
        period = period_of(guard)
        attempts = Counter(k for k, _ in hook.log)
        guard.close()
    keys = expected(period)
    assert hook.delivered() == []
    assert (stats.failed, stats.delivered) == (4, 0)
    assert set(attempts) == set(keys)
    # The first alert was retried with backoff for its whole second; the
    # others, queued behind it (a budget's alerts go in order), were about a
    # second old when their turn came: at least one try each, then given up.
    assert attempts[keys[0]] >= 3
    assert all(attempts[k] >= 1 for k in keys[1:])
    assert sum(attempts.values()) == stats.retries + stats.failed  # every POST accounted
    gave_up = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    # one ERROR per alert, in order
    assert re.findall(r"GAVE UP on alert (\S+) ", "\n".join(gave_up)) == keys
    assert all("HTTP Error 503" in m and "give_up_after_seconds" in m for m in gave_up)
    time.sleep(0.5)
    assert Counter(k for k, _ in hook.log) == attempts   # given up means no more sends
