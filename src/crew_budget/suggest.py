"""Budgets suggested from history: ``crew-budget suggest``.

Picking a first budget is guesswork; the ledger already knows what each
role spends. ``suggest`` reads the hourly rollups of a period
(``Ledger.rollups``, never raw records, so 30 days cost what roles x
models x hours cost) and proposes, per role, per crew and for everything:

- ``daily``: the 95th percentile of the daily spend, times a headroom
  (1.25 by default), rounded *up* to two significant digits ($4.71 x 1.25
  = $5.8875 -> $5.9). The percentile is nearest-rank over every day from
  the first one with any activity to the end of the period, idle days
  included (a budget must also fit a quiet week); with fewer than 20 days
  the p95 is the peak day itself.
- ``hourly``: the peak hour times the headroom, rounded the same way, only
  when that is below the daily suggestion: it stops a runaway loop from
  burning the whole day's budget in one hour.

Each entry says what it rests on: the p95 and the peak day, the blocked
calls (a role that was blocked spent less than it wanted: its history
under-states it), and the days of data; fewer than ``min_days`` (7) is
flagged as too short to trust. Days are local days of the configured
time zone; a rollup's UTC hour counts in the day its start falls in.

Money is integer nano-USD throughout, ``Decimal`` at the edge. No agent
framework is imported here (the core's rule).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone, tzinfo
from decimal import ROUND_CEILING, Decimal
from typing import Any, Literal

from crew_budget.ledger.base import Rollup, in_span
from crew_budget.money import from_nano

__all__ = ["MIN_DAYS", "Suggestion", "Suggestions", "p95", "readable_usd", "suggest"]

MIN_DAYS = 7
"""Days of history below which a suggestion is flagged as resting on too little."""

Kind = Literal["global", "crew", "role"]


def p95(values: list[int]) -> int:
    """Nearest-rank 95th percentile of ``values`` (integers; 0 for none)."""
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def readable_usd(nano: int) -> Decimal:
    """``nano`` nano-USD rounded *up* to two significant digits, as dollars.

    ``5887500000`` -> ``5.9``; ``33000`` -> ``0.000033``. Up, so a suggestion
    is never below what it rests on; never below one nano-dollar.
    """
    if nano <= 0:
        return Decimal(0)
    usd = from_nano(nano)
    quantum = max(Decimal(1).scaleb(usd.adjusted() - 1), Decimal("1e-9"))
    rounded = ((usd / quantum).to_integral_value(rounding=ROUND_CEILING) * quantum).normalize()
    # normalize() writes 130 as 1.3E+2: whole amounts are shown whole
    return rounded.quantize(Decimal(1)) if rounded == rounded.to_integral_value() else rounded


@dataclass(slots=True)
class Suggestion:
    """What one role, crew or the whole ledger spent, and the budget proposed.

    Money in nano-USD; ``daily``/``hourly`` are the proposed limits in
    dollars (None: nothing to propose: no spend, or an hourly limit that
    would not be below the daily one).
    """

    kind: Kind
    name: str
    days: int = 0
    first_day: str = ""
    calls: int = 0
    blocked: int = 0
    cost_nano: int = 0
    p95_day_nano: int = 0
    peak_day: str = ""
    peak_day_nano: int = 0
    peak_hour: str = ""
    peak_hour_nano: int = 0
    daily: Decimal | None = None
    hourly: Decimal | None = None
    daily_series: list[int] = field(default_factory=list, repr=False)

    @property
    def too_short(self) -> bool:
        return self.days < MIN_DAYS

    def note(self) -> str:
        """The YAML comment that says what ``daily`` rests on."""
        if not self.cost_nano:
            what = "no spend"
        else:
            what = (f"p95 ${from_nano(self.p95_day_nano)}/day, peak "
                    f"${from_nano(self.peak_day_nano)} on {self.peak_day}")
        if self.blocked:
            what += f", {self.blocked} blocked call{'s' if self.blocked != 1 else ''}"
        what += f", {self.days} day{'s' if self.days != 1 else ''} of data"
        if self.too_short:
            what += " (too short to trust)"
        return what

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "name": self.name, "days": self.days,
            "first_day": self.first_day, "too_short": self.too_short,
            "calls": self.calls, "blocked": self.blocked,
            "cost_usd": str(from_nano(self.cost_nano)),
            "p95_day_usd": str(from_nano(self.p95_day_nano)),
            "peak_day": self.peak_day, "peak_day_usd": str(from_nano(self.peak_day_nano)),
            "peak_hour": self.peak_hour, "peak_hour_usd": str(from_nano(self.peak_hour_nano)),
            "daily": None if self.daily is None else f"{self.daily:f}",
            "hourly": None if self.hourly is None else f"{self.hourly:f}",
        }


@dataclass(slots=True)
class Suggestions:
    """Every suggestion of a period: ``to_yaml()`` is ready to paste."""

    since: float
    until: float
    tz: tzinfo
    headroom: Decimal
    overall: Suggestion
    crews: list[Suggestion]
    roles: list[Suggestion]

    def _day(self, ts: float) -> str:
        return datetime.fromtimestamp(ts, self.tz).date().isoformat()

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": datetime.fromtimestamp(self.since, self.tz).isoformat(),
            "until": datetime.fromtimestamp(self.until, self.tz).isoformat(),
            "timezone": str(self.tz), "headroom": str(self.headroom),
            "min_days": MIN_DAYS,
            "global": self.overall.to_dict(),
            "crews": [c.to_dict() for c in self.crews],
            "roles": [r.to_dict() for r in self.roles],
        }

    def to_yaml(self) -> str:
        """The budget YAML (global, crew, roles), each limit with its reasons.

        Amounts are quoted strings, so they load as the exact dollars shown.
        """
        first = self.overall.first_day or self._day(self.since)
        lines = [
            f"# crew-budget suggest: spend from {first} to {self._day(self.until - 1e-6)} "
            f"({self.overall.days} days, {self.tz})",
            f"# daily = p95 of daily spend x {self.headroom}, rounded up; hourly = peak hour "
            f"x {self.headroom}, when below daily",
        ]
        short = [s for s in (self.overall, *self.crews, *self.roles)
                 if s.too_short and s.calls + s.blocked]
        if short:
            lines.append(f"# WARNING: fewer than {MIN_DAYS} days of history for "
                         f"{', '.join(_label(s) for s in short)}: with so few days the p95 is "
                         "the peak day; run suggest again after a week or more of traffic")
        if self.overall.calls + self.overall.blocked == 0:
            lines.append("# no calls in this period: nothing to suggest (widen --since)")
            return "\n".join(lines) + "\n"
        blocked = [s for s in self.roles if s.blocked]
        if blocked:
            lines.append("# roles with blocked calls spent less than they asked for: their "
                         "history under-states their need")
        lines += _entry("global", self.overall, "  ")
        if self.crews:
            crew = self.crews[0]
            lines += _entry("crew", crew, "  ", (f"name: {_yaml_str(crew.name)}",))
            for other in self.crews[1:]:
                lines.append(f"# another crew in this ledger: {other.name}: daily "
                             f"{_yaml_amount(other.daily)} ({other.note()})")
        lines.append("roles:")
        for role in self.roles:
            lines += _entry(f"  {_yaml_str(role.name)}", role, "    ")
        return "\n".join(lines) + "\n"


def _label(s: Suggestion) -> str:
    return "everything" if s.kind == "global" else f"{s.kind} {s.name}"


def _yaml_str(text: str) -> str:
    import json

    plain = text.replace("-", "").replace("_", "").replace(" ", "").isalnum()
    return text if plain and not text[:1].isdigit() and text == text.strip() else json.dumps(text)


def _yaml_amount(amount: Decimal | None) -> str:
    return "null" if amount is None else f'"{amount:f}"'


def _entry(head: str, s: Suggestion, indent: str, fixed: tuple[str, ...] = ()) -> list[str]:
    """``head:`` and its limits, each with the reasons behind it as a comment.

    Nothing to propose (no spend): ``head: {}`` and why, or, when ``fixed``
    lines (a crew's name) keep the mapping non-empty, just the comment.
    """
    if s.daily is None:
        why = f"# {s.note()}: no limit to suggest"
        if fixed:
            return [f"{head}:", *(indent + f for f in fixed), indent + why]
        return [f"{head}: {{}}  {why}"]
    out = [f"{head}:", *(indent + f for f in fixed),
           f"{indent}daily: {_yaml_amount(s.daily)}  # {s.note()}"]
    if s.hourly is not None:
        out.append(f"{indent}hourly: {_yaml_amount(s.hourly)}  # peak hour "
                   f"${from_nano(s.peak_hour_nano)} at {s.peak_hour}")
    return out


class _Acc:
    """One entity's per-day and per-hour spend while the rollups are read."""

    def __init__(self, kind: Kind, name: str) -> None:
        self.s = Suggestion(kind, name)
        self.days: dict[int, int] = {}      # local day ordinal -> nano
        self.hours: dict[float, int] = {}   # UTC hour start -> nano
        self.first: int | None = None       # first local day with any activity

    def add(self, r: Rollup, day: int) -> None:
        self.s.calls += r.calls
        self.s.blocked += r.blocked
        self.s.cost_nano += r.cost_nano
        if r.calls or r.blocked:
            self.first = day if self.first is None else min(self.first, day)
        if r.cost_nano:
            self.days[day] = self.days.get(day, 0) + r.cost_nano
            self.hours[r.hour] = self.hours.get(r.hour, 0) + r.cost_nano

    def finish(self, last_day: int, tz: tzinfo, headroom: Decimal) -> Suggestion:
        s = self.s
        if self.first is None:
            return s
        series = [self.days.get(d, 0) for d in range(self.first, last_day + 1)]
        s.days = len(series)
        s.daily_series = series
        s.first_day = date.fromordinal(self.first).isoformat()
        if not s.cost_nano:
            return s
        s.p95_day_nano = p95(series)
        peak = max(range(len(series)), key=lambda i: (series[i], -i))
        s.peak_day = date.fromordinal(self.first + peak).isoformat()
        s.peak_day_nano = series[peak]
        hour = min(self.hours, key=lambda h: (-self.hours[h], h))
        s.peak_hour = datetime.fromtimestamp(hour, tz).strftime("%Y-%m-%d %H:%M")
        s.peak_hour_nano = self.hours[hour]
        s.daily = readable_usd(_times(s.p95_day_nano, headroom))
        hourly = readable_usd(_times(s.peak_hour_nano, headroom))
        s.hourly = hourly if hourly < s.daily else None
        return s


def _times(nano: int, factor: Decimal) -> int:
    """``nano x factor``, rounded up to a whole nano-dollar (exact Decimal)."""
    return int((Decimal(nano) * factor).to_integral_value(rounding=ROUND_CEILING))


def suggest(
    rollups: Iterable[Rollup],
    *,
    since: float,
    until: float,
    tz: tzinfo = timezone.utc,
    headroom: Decimal | int | str = Decimal("1.25"),
) -> Suggestions:
    """Suggest budgets from the rollups of ``[since, until)`` (see the module doc).

    ``headroom`` multiplies the p95 day and the peak hour (1 to 100; a
    ``ValueError`` otherwise). Roles are listed costliest first, crews too.
    """
    factor = Decimal(str(headroom))
    if not factor.is_finite() or not Decimal(1) <= factor <= Decimal(100):
        raise ValueError(f"headroom must be a number from 1 to 100 (1.25 = 25% above the "
                         f"p95 day), got {headroom!r}")
    day_cache: dict[float, int] = {}

    def day_of(ts: float) -> int:
        d = day_cache.get(ts)
        if d is None:
            d = day_cache[ts] = datetime.fromtimestamp(ts, tz).date().toordinal()
        return d

    overall = _Acc("global", "global")
    crews: dict[str, _Acc] = {}
    roles: dict[str, _Acc] = {}
    for r in rollups:
        if not in_span(r.hour, since, until):
            continue
        day = day_of(max(r.hour, since))
        overall.add(r, day)
        if r.crew:
            crews.setdefault(r.crew, _Acc("crew", r.crew)).add(r, day)
        roles.setdefault(r.role, _Acc("role", r.role)).add(r, day)
    last = day_of(until - 1e-6)
    done_crews = [a.finish(last, tz, factor) for a in crews.values()]
    done_roles = [a.finish(last, tz, factor) for a in roles.values()]
    for group in (done_crews, done_roles):
        group.sort(key=lambda s: (-s.cost_nano, -s.blocked, s.name))
    return Suggestions(since, until, tz, factor, overall.finish(last, tz, factor),
                       done_crews, done_roles)
