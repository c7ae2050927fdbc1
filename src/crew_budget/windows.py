"""Budget windows (hour / day / month) in the configured time zone, and runs.

A window *instance* is named by its period label (``"2026-11-25"`` for a day)
and bounded by ``[starts_at, ends_at)`` in Unix seconds. Labels are computed
from the ledger's clock: the Redis ledger checks that its own ``TIME`` falls
inside the bounds the client computed and asks for a recompute otherwise, so a
client with a skewed clock can never charge the wrong day.

A *run* (``RUN_WINDOW``) is the one window that is not on the calendar: its
period is the run's id (``crew_budget.run``), so it never rolls over; every
call of the run lands in the same counter. See ``run_span`` for its bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo

WindowName = Literal["hour", "day", "month", "run"]
WINDOWS: tuple[WindowName, ...] = ("hour", "day", "month")
"""The calendar windows, shortest first (``run`` is not one of them)."""
RUN_WINDOW: WindowName = "run"
#: How far past ``now`` a run bucket's ``ends_at`` lies. The ledger checks
#: that its clock falls inside every bucket's bounds (see above) and keeps a
#: counter until ``ends_at`` plus the retention period; a run has no end in
#: time, so its bounds slide with each call: from the epoch to a day ahead.
RUN_HORIZON_SECONDS = 86_400.0

__all__ = ["RUN_HORIZON_SECONDS", "RUN_WINDOW", "WINDOWS", "WindowName", "WindowSpan",
           "get_tz", "run_span", "span"]


@dataclass(frozen=True, slots=True)
class WindowSpan:
    """One instance of a window: its label and its bounds in Unix seconds."""

    window: WindowName
    period: str
    starts_at: float
    ends_at: float


def get_tz(name: str) -> tzinfo:
    """``"UTC"`` or an IANA name such as ``"Europe/Berlin"``."""
    if name.upper() == "UTC":
        return timezone.utc
    return ZoneInfo(name)


def span(window: WindowName, now: float, tz: tzinfo) -> WindowSpan:
    """The instance of ``window`` that contains the instant ``now``.

    Bounds are computed on local wall-clock fields and converted back through
    the zone, so a day across a DST change is 23 or 25 hours long, as the
    user's calendar says.
    """
    local = datetime.fromtimestamp(now, tz)
    if window == "hour":
        # Local hour (so +05:30 zones get :00 boundaries); ``replace`` keeps
        # ``fold``, so DST's repeated hour is two distinct windows.
        start = local.replace(minute=0, second=0, microsecond=0)
        start_ts = start.timestamp()
        return WindowSpan(window, start.strftime("%Y-%m-%dT%H%z"), start_ts, start_ts + 3600.0)
    if window == "day":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        nxt = _midnight(start.date() + timedelta(days=1), tz)
        start = _midnight(start.date(), tz)
        return WindowSpan(window, start.strftime("%Y-%m-%d"), start.timestamp(), nxt.timestamp())
    if window == "month":
        first = local.date().replace(day=1)
        nxt_first = (first + timedelta(days=32)).replace(day=1)
        return WindowSpan(
            window,
            first.strftime("%Y-%m"),
            _midnight(first, tz).timestamp(),
            _midnight(nxt_first, tz).timestamp(),
        )
    raise ValueError(f"unknown window {window!r}; use one of {', '.join(WINDOWS)}")


def run_span(run_id: str, now: float) -> WindowSpan:
    """The bounds of run ``run_id``'s bucket for a call made at ``now``.

    ``[0, now + RUN_HORIZON_SECONDS)``: the ledger's clock check always
    passes (unless the ledger's clock is a day off ours). Ledgers give a
    counter its expiry when it is created, so a run's counters are kept
    until a day after its first call plus ``retention_days``: a run is
    expected to end well within that (a run that outlives it starts again
    from $0 in its run buckets; its calendar buckets are unaffected).
    """
    return WindowSpan(RUN_WINDOW, run_id, 0.0, now + RUN_HORIZON_SECONDS)


def _midnight(day: date, tz: tzinfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz)
