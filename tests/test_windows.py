"""Window boundaries in a non-UTC zone, and rollover, with an injected clock."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from crew_budget import BudgetExceeded, Guard
from crew_budget.windows import get_tz, span

BERLIN = ZoneInfo("Europe/Berlin")


def ts(text: str, tz: ZoneInfo = BERLIN) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def test_day_month_hour_bounds_follow_the_local_calendar() -> None:
    t = ts("2026-11-25T23:30:00")  # 22:30 UTC: still the 25th in Berlin
    day = span("day", t, BERLIN)
    assert day.period == "2026-11-25"
    assert day.starts_at == ts("2026-11-25T00:00:00")
    assert day.ends_at == ts("2026-11-26T00:00:00")
    month = span("month", t, BERLIN)
    assert (month.period, month.ends_at) == ("2026-11", ts("2026-12-01T00:00:00"))
    hour = span("hour", t, BERLIN)
    assert hour.starts_at == ts("2026-11-25T23:00:00")
    assert hour.ends_at - hour.starts_at == 3600


def test_dst_day_is_23_hours_long_and_half_hour_zones_get_local_hours() -> None:
    day = span("day", ts("2026-03-29T12:00:00"), BERLIN)  # spring forward
    assert day.ends_at - day.starts_at == 23 * 3600
    kolkata = get_tz("Asia/Kolkata")
    hour = span("hour", datetime(2026, 11, 25, 10, 45, tzinfo=kolkata).timestamp(), kolkata)
    assert datetime.fromtimestamp(hour.starts_at, kolkata).minute == 0


def test_december_rolls_into_january() -> None:
    month = span("month", ts("2026-12-31T23:59:59"), BERLIN)
    assert month.period == "2026-12"
    assert month.ends_at == ts("2027-01-01T00:00:00")


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(
    ("window", "start", "just_before_reset", "after_reset"),
    [
        ("hourly", "2026-11-25T14:05:00", "2026-11-25T14:59:59", "2026-11-25T15:00:00"),
        ("daily", "2026-11-25T08:00:00", "2026-11-25T23:59:59", "2026-11-26T00:00:00"),
        ("monthly", "2026-11-03T08:00:00", "2026-11-30T23:59:59", "2026-12-01T00:00:00"),
    ],
)
def test_budget_resets_exactly_at_the_local_window_boundary(
    window: str, start: str, just_before_reset: str, after_reset: str
) -> None:
    clock = Clock(ts(start))
    config = {
        "timezone": "Europe/Berlin",
        "roles": {"r": {window: "0.02"}},
        "prices": {"m": {"input_per_million": 0, "output_per_million": 10}},
    }
    guard = Guard(config, "memory://", clock=clock)
    # 1000 output tokens at $10/M = $0.01 per call: two calls fill the window.
    for _ in range(2):
        t = guard.preflight("r", "m", [{"role": "user", "content": "x"}], max_tokens=1000)
        guard.settle(t, {"prompt_tokens": 1, "completion_tokens": 1000})
    clock.t = ts(just_before_reset)
    with pytest.raises(BudgetExceeded) as info:
        guard.preflight("r", "m", [{"role": "user", "content": "x"}], max_tokens=1000)
    assert info.value.spent == Decimal("0.02")
    clock.t = ts(after_reset)
    ticket = guard.preflight("r", "m", [{"role": "user", "content": "x"}], max_tokens=1000)
    guard.settle(ticket, {"prompt_tokens": 1, "completion_tokens": 1000})
    (status,) = guard.status()
    assert status.spent == Decimal("0.01")
    assert status.resets_at > datetime.fromtimestamp(clock.t, BERLIN)
