"""Budget windows (hour / day / month) in the configured time zone.

A window *instance* is named by its period label (``"2026-11-25"`` for a day)
and bounded by ``[starts_at, ends_at)`` in Unix seconds. Labels are computed
from the ledger's clock: the Redis ledger checks that its own ``TIME`` falls
inside the bounds the client computed and asks for a recompute otherwise, so a
client with a skewed clock can never charge the wrong day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo

WindowName = Literal["hour", "day", "month"]
WINDOWS: tuple[WindowName, ...] = ("hour", "day", "month")

__all__ = ["WINDOWS", "WindowName", "WindowSpan", "get_tz", "span"]


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


def _midnight(day: date, tz: tzinfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz)
