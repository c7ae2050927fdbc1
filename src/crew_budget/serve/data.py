"""Everything the dashboard shows, read through the public Guard/Ledger API.

This is the one module that touches the ledger. The spend-per-hour chart
reads the ledger's hourly rollups (``ledger.rollups``: 24 hours cost 24
hours, however many calls, and survive ``records_retention_days: 0``); the
per-role and per-model tables and the lists fold ``ledger.records(since,
until)`` over the last 24 hours.

Nothing here writes: budgets come from ``guard.status()`` and the records
from ``ledger.records()`` (read incrementally by ``RecordWindow``); the alert
feed is *computed* from the same pure rules the alert manager uses
(``crew_budget.alerts.rules``), so the dashboard never claims or
acknowledges an alert and never sends one.

Money leaves this module as exact decimal strings (``*_usd``) and integer
nano-USD (``*_nano``, for charts); no float ever holds a balance.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from crew_budget.money import from_nano

if TYPE_CHECKING:
    from crew_budget.guard import Guard
    from crew_budget.ledger.base import Rollup, SpendRecord

__all__ = ["HOUR", "RecordWindow", "Snapshot", "snapshot"]

HOUR = 3600
#: How far back the charts, the blocked-call list and the overruns look.
HISTORY_SECONDS = 24 * HOUR
#: At most this many rows in the blocked-call and overrun lists (newest first).
LIST_LIMIT = 50

#: Record outcomes that cost money (a blocked or released call costs nothing,
#: a reset is an operator's correction, not spend).
_SPEND_OUTCOMES = frozenset({"settled", "expired", "unguarded"})


def _usd(nano: int) -> str:
    return str(from_nano(nano))


def _dec(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent read of the books, ready to be sent as JSON."""

    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.data


def gauges(guard: Guard) -> list[dict[str, Any]]:
    """One entry per configured scope and window, from ``guard.status()``."""
    out: list[dict[str, Any]] = []
    for row in guard.status():
        if row.unit != "usd":  # dollar gauges; token and call limits: `crew-budget status`
            continue
        used = Decimal(0)
        if row.limit:
            used = (row.spent + row.reserved) / row.limit
        out.append({
            "scope": row.scope,
            "window": row.window,
            "period": row.period,
            "limit_usd": _dec(row.limit),
            "spent_usd": str(row.spent),
            "reserved_usd": str(row.reserved),
            "left_usd": _dec(row.remaining),
            "used_pct": str((used * 100).quantize(Decimal("0.1"))),
            "resets_at": row.resets_at.timestamp(),
            "resets_at_iso": row.resets_at.isoformat(),
        })
    return out


def spend_breakdown(records: Iterable[SpendRecord], now: float,
                    rollups: Iterable[Rollup] | None = None) -> dict[str, Any]:
    """Spend per role, per model and per hour of the last 24 hours.

    The hours are whole UTC-aligned hours (time zones with half-hour offsets
    still see 24 comparable bars); the newest bar is the hour in progress.
    With ``rollups`` (the ledger's, for those hours) the bars come from them
    instead of the records.
    """
    by_role: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # nano, calls, blocked
    by_model: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    last_hour = int(now // HOUR) * HOUR
    first_hour = last_hour - 23 * HOUR
    hours = [first_hour + i * HOUR for i in range(24)]
    per_hour: dict[str, list[int]] = {}
    total = 0
    for r in records:
        if r.outcome == "blocked":
            by_role[r.role][2] += 1
            by_model[r.model][2] += 1
            continue
        if r.outcome not in _SPEND_OUTCOMES:
            continue
        total += r.cost_nano
        for table, key in ((by_role, r.role), (by_model, r.model)):
            table[key][0] += r.cost_nano
            table[key][1] += 1
        slot = int(r.ts // HOUR) * HOUR
        if rollups is None and first_hour <= slot <= last_hour:
            series = per_hour.setdefault(r.role, [0] * 24)
            series[(slot - first_hour) // HOUR] += r.cost_nano
    for ro in rollups or ():
        slot = int(ro.hour)
        if ro.cost_nano and first_hour <= slot <= last_hour:
            series = per_hour.setdefault(ro.role, [0] * 24)
            series[(slot - first_hour) // HOUR] += ro.cost_nano

    def rows(table: dict[str, list[int]], name: str) -> list[dict[str, Any]]:
        return [
            {name: key, "spent_usd": _usd(v[0]), "spent_nano": v[0], "calls": v[1],
             "blocked": v[2]}
            for key, v in sorted(table.items(), key=lambda kv: (-kv[1][0], kv[0]))
        ]

    return {
        "total_usd": _usd(total),
        "total_nano": total,
        "by_role": rows(by_role, "role"),
        "by_model": rows(by_model, "model"),
        "hours": hours,
        "by_hour": {role: series for role, series in sorted(per_hour.items())},
    }


def blocked_calls(records: Sequence[SpendRecord]) -> list[dict[str, Any]]:
    """The calls a budget refused (newest first): no request was sent for them."""
    out = [
        {"ts": r.ts, "role": r.role, "model": r.model, "scope": r.scope,
         "estimate_usd": _usd(r.estimate_nano)}
        for r in records if r.outcome == "blocked"
    ]
    return out[::-1][:LIST_LIMIT]


def overruns(records: Sequence[SpendRecord]) -> dict[str, Any]:
    """Calls that cost more than was reserved for them, and expired leases.

    A settled call above its reservation means the prompt estimate was low
    (the hard limit's only slack); an expired lease was charged at its
    reserved amount because its process never settled.
    """
    rows: list[dict[str, Any]] = []
    excess = 0
    for r in records:
        if r.outcome == "settled" and r.cost_nano > r.estimate_nano:
            excess += r.cost_nano - r.estimate_nano
            rows.append({"ts": r.ts, "role": r.role, "model": r.model, "kind": "over estimate",
                         "estimate_usd": _usd(r.estimate_nano), "cost_usd": _usd(r.cost_nano),
                         "over_usd": _usd(r.cost_nano - r.estimate_nano)})
        elif r.outcome == "expired":
            rows.append({"ts": r.ts, "role": r.role, "model": r.model, "kind": "lease expired",
                         "estimate_usd": _usd(r.estimate_nano), "cost_usd": _usd(r.cost_nano),
                         "over_usd": "0"})
    return {"count": len(rows), "over_usd": _usd(excess), "calls": rows[::-1][:LIST_LIMIT]}


def alert_feed(guard: Guard, records: Sequence[SpendRecord], now: float) -> list[dict[str, Any]]:
    """The alerts that hold now, by the alert manager's own threshold rule.

    Thresholds reached in the current windows (``rules.thresholds`` over the
    ledger's bucket states, with the config's percentages, 50/80/100 if the
    config has no ``alerts:`` section), and one "blocked" entry per budget
    scope that refused a call in the last 24 hours, at its latest refusal.
    The blocked entry quotes the record, not the configured limit: the call
    may have been refused by a stricter inline limit (``BudgetLLM(daily_usd=)``)
    that the config does not know.
    """
    from crew_budget.alerts.rules import describe_scope, thresholds
    from crew_budget.windows import get_tz

    tz = get_tz(guard.config.timezone)
    cfg = guard.config.alerts
    percents: Any = cfg.thresholds_for if cfg is not None else (50, 80, 100)
    states = guard.ledger.status(guard.buckets(now=now))
    feed: list[dict[str, Any]] = [
        {"severity": a.severity, "kind": a.kind, "title": a.title, "message": a.message,
         "ts": a.ts, "scope": a.scope}
        for a in thresholds(states, percents, now, tz)
    ]
    latest: dict[str, SpendRecord] = {}
    count: dict[str, int] = defaultdict(int)
    for r in records:
        if r.outcome == "blocked":
            key = r.scope or f"role:{r.role}"
            latest[key] = r
            count[key] += 1
    for scope, r in latest.items():
        n = count[scope]
        feed.append({
            "severity": "critical", "kind": "blocked", "scope": scope, "ts": r.ts,
            "title": f"{describe_scope(scope)} refused {n} call{'s' if n != 1 else ''}",
            "message": (f"latest: a {r.model} call by role {r.role!r} estimated at "
                        f"${from_nano(r.estimate_nano)} was blocked before it was sent "
                        f"({datetime.fromtimestamp(r.ts, tz).strftime('%Y-%m-%d %H:%M:%S %Z')})."),
        })
    rank = {"critical": 0, "warning": 1, "info": 2}
    feed.sort(key=lambda a: (rank[a["severity"]], -a["ts"], a["title"]))
    return feed


class RecordWindow:
    """The last 24 hours of spend records, read incrementally.

    Reading a day of records costs ~28 ms per 1,000 on SQLite (mostly JSON
    decoding), too much to redo every second on a busy ledger. So the first
    read takes the whole window and each later one only what is new, plus an
    ``overlap`` of seconds re-read and de-duplicated: a process may commit a
    record stamped a little earlier than one already seen. A full re-read every
    ``full_every`` seconds bounds any drift (records the ledger dropped).
    Not thread-safe: one reader at a time (the app serialises its reads).
    """

    def __init__(self, span: float = HISTORY_SECONDS, overlap: float = 60.0,
                 full_every: float = 300.0) -> None:
        self.span = span
        self.overlap = overlap
        self.full_every = full_every
        self._items: list[SpendRecord] = []
        self._read_until: float | None = None
        self._full_at = 0.0

    def read(self, guard: Guard, now: float) -> list[SpendRecord]:
        ledger = guard.ledger
        if self._read_until is None or now - self._full_at >= self.full_every:
            self._items = sorted(ledger.records(since=now - self.span, until=now + 1),
                                 key=lambda r: r.ts)
            self._full_at = now
        else:
            cutoff = self._read_until - self.overlap
            seen = {_key(r) for r in self._items if r.ts >= cutoff}
            fresh = [r for r in ledger.records(since=cutoff, until=now + 1)
                     if _key(r) not in seen]
            start = now - self.span
            merged = [r for r in self._items if r.ts >= start] + fresh
            if fresh:
                merged.sort(key=lambda r: r.ts)  # a late record keeps time order (stable)
            self._items = merged
        self._read_until = now
        return list(self._items)


def runs_and_tasks(records: Iterable[SpendRecord]) -> dict[str, list[dict[str, Any]]]:
    """Spend per run (``crew_budget.run``) and per task (CrewAI task name,
    LangChain ``task`` metadata or run name) over the records' span, costliest
    first: what ``report --by run`` / ``--by task`` show, live."""
    tables: dict[str, dict[str, list[int]]] = {"run": {}, "task": {}}
    for r in records:
        meta = r.metadata or {}
        names = {"run": meta.get("run"), "task": meta.get("task") or meta.get("run_name")}
        for kind, name in names.items():
            if not isinstance(name, str) or not name:
                continue
            row = tables[kind].setdefault(name, [0, 0, 0])  # nano, calls, blocked
            if r.outcome == "blocked":
                row[2] += 1
            elif r.outcome in ("settled", "expired", "unguarded"):
                row[0] += r.cost_nano
                row[1] += 1
    return {
        f"by_{kind}": [
            {kind: name, "spent_nano": v[0], "spent_usd": _usd(v[0]), "calls": v[1],
             "blocked": v[2]}
            for name, v in sorted(table.items(), key=lambda kv: (-kv[1][0], kv[0]))
        ]
        for kind, table in tables.items()
    }


def live_limits(guard: Guard) -> list[dict[str, Any]]:
    """The live limits in force (``crew-budget set/pause``), re-read from the
    ledger so the page shows what every process applies on its next call."""
    return [
        {"role": o.role, "kind": o.kind,
         "limit_usd": None if o.limit_nano is None else _usd(o.limit_nano),
         "who": o.who, "reason": o.reason, "set_at": o.set_at, "until": o.until}
        for o in guard.refresh_overrides()
    ]


def _key(r: SpendRecord) -> tuple[float, str, str, str, str, int]:
    return (r.ts, r.reservation_id, r.outcome, r.role, r.model, r.cost_nano)


def snapshot(guard: Guard, window: RecordWindow | None = None) -> Snapshot:
    """Everything the page shows, read once on the ledger's clock.

    Pass the same ``window`` to successive calls to read records incrementally.
    """
    from crew_budget.redact import redact_url
    from crew_budget.report import shadow_summary

    now = guard.ledger.now()
    limits = live_limits(guard)  # first: the gauges then show the limits in force
    if window is None:
        records = guard.ledger.records(since=now - HISTORY_SECONDS, until=now + 1)
        records.sort(key=lambda r: r.ts)  # ledger order is commit order; lists go by time
    else:
        records = window.read(guard, now)
    return Snapshot({
        "now": now,
        "now_iso": datetime.fromtimestamp(now, timezone.utc).isoformat(),
        "ledger": redact_url(guard.ledger.url),
        "timezone": guard.config.timezone,
        "gauges": gauges(guard),
        "spend": spend_breakdown(records, now, guard.ledger.rollups(
            since=int(now // HOUR) * HOUR - 23 * HOUR, until=now + 1)),
        "blocked": blocked_calls(records),
        "overruns": overruns(records),
        "alerts": alert_feed(guard, records, now),
        "runs": runs_and_tasks(records),
        "live_limits": limits,
        # Calls shadow mode let through that the limits would have blocked.
        "shadow_blocked": shadow_summary(records, since=now - HISTORY_SECONDS).to_dict(),
    })
