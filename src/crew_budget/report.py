"""Spend reports: pure aggregation over ``SpendRecord``s, and renderers.

``build_report(records, by=("role", "model", "hour"))`` answers "which agent
cost the most yesterday, on which model, at what hour": rows are sorted by
cost, money is summed in integer nano-USD and shown as exact ``Decimal``.
Renderers: ``to_csv``, ``to_json`` and ``render_table`` (rich); the HTML page
lives in ``crew_budget.report_html``.

What counts:

- cost: ``settled``, ``expired`` (charged at the reservation) and
  ``unguarded`` (let through by fail_open) records;
- calls: the same three outcomes (calls that reached, or may have reached,
  the provider); ``blocked`` and ``released`` are counted in their own
  columns;
- ``reset`` records are administrative, not spend: listed separately.

Grouping keys beyond the record's fields come from its metadata: ``run``
(the ``crew_budget.run`` id, ``name#hex``) and ``task`` (the CrewAI task, or
else the LangChain run name); a record without one is grouped under ``""``.

Rollups: ``build_report`` and ``time_series`` also take the ledger's hourly
``Rollup``s (``Ledger.rollups``) instead of records, and then cost what
roles x models x hours cost, however many calls there were. A rollup
covers a whole UTC hour, so a span selects the hours it overlaps, and its
hour label is the local time that hour starts at (``14:30+05:30`` in a
half-hour zone). Keys only records carry (``RECORD_KEYS``: ``outcome``,
``run``, ``task``) need records, which ledgers keep for
``records_retention_days`` only.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from decimal import Decimal
from json.encoder import encode_basestring_ascii
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any, Literal

from crew_budget.cli.common import fit_columns, fmt_usd, money_column
from crew_budget.ledger.base import (
    ROLLUP_METRICS,
    SHADOW_KEY,
    Rollup,
    RollupTable,
    SpendRecord,
    in_span,
)
from crew_budget.money import from_nano

__all__ = [
    "GROUP_KEYS",
    "RECORD_KEYS",
    "PriceSource",
    "Report",
    "ReportRow",
    "ShadowSummary",
    "build_report",
    "fmt_usd",
    "needs_records",
    "parse_by",
    "price_sources",
    "render_price_sources",
    "render_table",
    "scope_models",
    "shadow_summary",
    "short_hour",
    "time_series",
]

GROUP_KEYS = ("role", "model", "crew", "hour", "day", "outcome", "scope", "run", "task")
RECORD_KEYS = ("outcome", "run", "task")
"""Grouping keys that rollups do not hold: a report by one of them reads records."""
_CHARGED = frozenset({"settled", "expired", "unguarded"})


def needs_records(by: Sequence[str]) -> tuple[str, ...]:
    """The keys of ``by`` that only raw records can answer (see ``RECORD_KEYS``)."""
    return tuple(k for k in by if k in RECORD_KEYS)


def parse_by(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"role,model,hour"`` -> ``("role", "model", "hour")``; unknown keys raise."""
    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else text)]
    keys = tuple(p for p in parts if p)
    bad = [k for k in keys if k not in GROUP_KEYS]
    if bad:
        raise ValueError(
            f"cannot group by {', '.join(map(repr, bad))}; use a comma-separated list of "
            f"{', '.join(GROUP_KEYS)} (e.g. --by role,model,hour)"
        )
    if len(set(keys)) != len(keys):
        raise ValueError(f"--by {','.join(keys)} names a key twice")
    return keys


class _TimeLabels:
    """Local hour/day labels, cached per 15-minute slot of UTC.

    An hour is labelled by its ISO start with the UTC offset
    (``2026-11-24T14:00:00+01:00``): a CSV or JSON row then names one
    instant, and the two 01:00 hours of a DST fall-back stay two rows. A day
    is its ISO date. Every time zone's offset and DST switch is a multiple of
    15 minutes, so all instants of one slot share their local hour and day;
    formatting a ``datetime`` per record would dominate a 100k-record report
    otherwise.
    """

    def __init__(self, tz: tzinfo, step: Literal["hour", "day"]) -> None:
        self.tz, self.step = tz, step
        self._cache: dict[int, str] = {}

    def __call__(self, ts: float) -> str:
        slot = int(ts // 900)
        label = self._cache.get(slot)
        if label is None:
            label = self._cache[slot] = _time_label(slot * 900, self.tz, self.step)
        return label


def _time_label(ts: float, tz: tzinfo, step: Literal["hour", "day"]) -> str:
    local = datetime.fromtimestamp(ts, tz)
    if step == "day":
        return local.date().isoformat()
    return local.replace(minute=0, second=0, microsecond=0).isoformat()


class _HourLabels:
    """Labels of rollup hours (UTC hour starts), cached per hour."""

    def __init__(self, tz: tzinfo, step: Literal["hour", "day"]) -> None:
        self.tz, self.step = tz, step
        self._cache: dict[float, str] = {}

    def __call__(self, hour: float) -> str:
        label = self._cache.get(hour)
        if label is None:
            local = datetime.fromtimestamp(hour, self.tz)
            label = local.date().isoformat() if self.step == "day" else local.isoformat()
            self._cache[hour] = label
        return label


def _rollup_label(r: Rollup, key: str, labels: dict[str, _HourLabels]) -> str:
    if key in labels:
        return labels[key](r.hour)
    if key in RECORD_KEYS:
        raise ValueError(f"rollups cannot be grouped by {key!r}: read records for it")
    value = getattr(r, key)
    return "" if value is None else str(value)


def _rollup_key(keys: Sequence[str], labels: dict[str, _HourLabels]
                ) -> Callable[[Rollup], tuple[str, ...]]:
    """The row key of a rollup for ``keys``, as one function made once per report.

    What ``_rollup_label`` gives per key, without its per-key dispatch:
    ~23k rollups go through it in a 30-day role x model x hour report.
    """
    bad = [k for k in keys if k in RECORD_KEYS]
    if bad:
        def refuse(_r: Rollup) -> tuple[str, ...]:
            raise ValueError(f"rollups cannot be grouped by {bad[0]!r}: read records for it")
        return refuse
    parts: list[Callable[[Rollup], str]] = []
    for key in keys:
        if key in labels:
            parts.append(_hour_part(labels[key]))
        elif key in ("role", "model"):  # never None
            parts.append(attrgetter(key))
        else:
            parts.append(_optional_part(key))
    if len(parts) == 3:
        a, b, c = parts
        return lambda r: (a(r), b(r), c(r))
    if len(parts) == 2:
        a, b = parts
        return lambda r: (a(r), b(r))
    return lambda r: tuple(p(r) for p in parts)


def _hour_part(label: _HourLabels) -> Callable[[Rollup], str]:
    def part(r: Rollup) -> str:
        return label(r.hour)
    return part


def _optional_part(key: str) -> Callable[[Rollup], str]:
    get = attrgetter(key)

    def part(r: Rollup) -> str:
        value = get(r)
        return "" if value is None else str(value)
    return part


def short_hour(label: str) -> str:
    """``2026-11-24T14:00:00+01:00`` -> ``2026-11-24 14:00`` (tables, charts)."""
    return label[:16].replace("T", " ") if "T" in label else label


def _label(record: SpendRecord, key: str, labels: dict[str, _TimeLabels]) -> str:
    if key in labels:
        return labels[key](record.ts)
    if key == "crew":
        return record.crew or ""
    if key == "scope":
        return record.scope or ""
    if key == "run":
        return str(record.metadata.get("run") or "")
    if key == "task":
        meta = record.metadata
        return str(meta.get("task") or meta.get("run_name") or "")
    return str(getattr(record, key))


def _usd_text(nano: int) -> str:
    """``str(from_nano(nano))`` without a ``Decimal``: a report renders three
    amounts per row, ~23k rows for a 30-day role x model x hour report.

    Integer text for whole dollars, fixed point without trailing zeros from
    a micro-dollar up; below that ``Decimal`` writes an exponent (``1E-7``),
    so those few go through it (tests/test_report_fast.py compares both ways).
    """
    if nano >= 1000:  # the decimal point put into the integer's digits
        digits = str(nano)
        if len(digits) > 9:
            frac = digits[-9:].rstrip("0")
            return f"{digits[:-9]}.{frac}" if frac else digits[:-9]
        return "0." + digits.rjust(9, "0").rstrip("0")
    if nano <= -1000:
        return "-" + _usd_text(-nano)
    return str(from_nano(nano))


def _avg_nano(cost_nano: int, calls: int) -> int:
    """``cost_nano / calls`` rounded half to even (``Decimal``'s default), in integers."""
    q, r = divmod(cost_nano, calls)
    if 2 * r > calls or (2 * r == calls and q % 2):
        q += 1
    return q


def _share_text(cost_nano: int, total_nano: int) -> str:
    """``cost / total`` in percent to one decimal, rounded half to even: what
    ``Report.share`` gives, as text (exact while both are below ~1e24)."""
    if cost_nano < 0 or total_nano <= 0:
        return str((Decimal(cost_nano) * 100 / Decimal(total_nano)).quantize(Decimal("0.1")))
    tenths = _avg_nano(cost_nano * 1000, total_nano)
    return f"{tenths // 10}.{tenths % 10}"


@dataclass(slots=True)
class ReportRow:
    """One group's totals; money in nano-USD, ``cost`` in ``Decimal`` dollars."""

    key: tuple[str, ...]
    calls: int = 0
    blocked: int = 0
    released: int = 0
    expired: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_nano: int = 0
    estimate_nano: int = 0

    @property
    def cost(self) -> Decimal:
        return from_nano(self.cost_nano)

    @property
    def estimate(self) -> Decimal:
        return from_nano(self.estimate_nano)

    @property
    def avg_cost(self) -> Decimal:
        """Average cost per call, rounded to a nano-dollar (integer arithmetic)."""
        if not self.calls:
            return Decimal(0)
        return from_nano(_avg_nano(self.cost_nano, self.calls))

    def add_rollup(self, r: Rollup) -> None:
        self.calls += r.calls
        self.blocked += r.blocked
        self.released += r.released
        self.expired += r.expired
        self.input_tokens += r.input_tokens + r.cached_input_tokens + r.cache_write_tokens
        self.output_tokens += r.output_tokens
        self.cost_nano += r.cost_nano
        self.estimate_nano += r.estimate_nano

    def add_row(self, other: ReportRow) -> None:
        self.calls += other.calls
        self.blocked += other.blocked
        self.released += other.released
        self.expired += other.expired
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_nano += other.cost_nano
        self.estimate_nano += other.estimate_nano

    def add(self, r: SpendRecord) -> None:
        if r.outcome in _CHARGED:
            self.calls += 1
            self.cost_nano += r.cost_nano
            self.estimate_nano += r.estimate_nano
            self.input_tokens += r.input_tokens + r.cached_input_tokens + r.cache_write_tokens
            self.output_tokens += r.output_tokens
            if r.outcome == "expired":
                self.expired += 1
        elif r.outcome == "blocked":
            self.blocked += 1
        elif r.outcome == "released":
            self.released += 1


@dataclass(slots=True)
class Report:
    """Rows grouped by ``by``, sorted by cost (largest first), plus the total."""

    by: tuple[str, ...]
    since: float | None
    until: float | None
    tz: tzinfo
    rows: list[ReportRow]
    total: ReportRow
    resets: list[SpendRecord] = field(default_factory=list)
    records: int = 0
    source: Literal["records", "rollups"] = "records"
    records_retention_days: float | None = None
    overrides: list[SpendRecord] = field(default_factory=list)
    """Live-limit changes (crew-budget set/pause/resume) in the span: not calls."""
    prices: dict[str, PriceSource] = field(default_factory=dict)
    """Which source priced each model in the report, and under what name
    (``price_sources``); shown per row when the report is grouped by model."""
    what_if: dict[str, Any] | None = None
    """``report --what-if``: the span re-priced (``crew_budget.whatif.WhatIf.to_dict``)."""
    shadow: ShadowSummary | None = None
    """Calls shadow mode let through that the limits would have blocked (``shadow_summary``)."""

    def share(self, row: ReportRow) -> Decimal:
        """The row's share of total cost, in percent (one decimal)."""
        if not self.total.cost_nano:
            return Decimal(0)
        return (Decimal(row.cost_nano) * 100 / Decimal(self.total.cost_nano)).quantize(
            Decimal("0.1"))

    def _iso(self, ts: float | None) -> str | None:
        return None if ts is None else datetime.fromtimestamp(ts, self.tz).isoformat()

    def row_dict(self, row: ReportRow) -> dict[str, Any]:
        # Money as text, computed in integers (see _usd_text): the same
        # strings as str(row.cost), str(row.avg_cost), str(self.share(row)).
        data: dict[str, Any] = dict(zip(self.by, row.key, strict=False))
        total = self.total.cost_nano
        data.update(
            calls=row.calls, blocked=row.blocked, released=row.released, expired=row.expired,
            input_tokens=row.input_tokens, output_tokens=row.output_tokens,
            cost_usd=_usd_text(row.cost_nano), estimate_usd=_usd_text(row.estimate_nano),
            avg_cost_usd=_usd_text(_avg_nano(row.cost_nano, row.calls)) if row.calls else "0",
            share_pct=_share_text(row.cost_nano, total) if total else "0",
        )
        data.update(self._price_columns(row))
        return data

    def _price_columns(self, row: ReportRow) -> dict[str, str]:
        """A model row's price source and priced-as name (see ``price_sources``)."""
        if not self.prices or "model" not in self.by or not row.key:
            return {}
        found = self.prices.get(row.key[self.by.index("model")])
        if found is None:
            return {}
        return {"price_source": found.label, "priced_as": found.priced_as}

    def to_dict(self) -> dict[str, Any]:
        return self._to_dict(rows=True)

    def _to_dict(self, *, rows: bool) -> dict[str, Any]:
        """``to_dict``; ``rows=False`` leaves the rows out (an empty list: ``to_json``
        writes them itself)."""
        total = self.row_dict(self.total)
        return {
            "since": self._iso(self.since),
            "until": self._iso(self.until),
            "timezone": str(self.tz),
            "by": list(self.by),
            "records": self.records,
            "source": self.source,
            **({"records_retention_days": self.records_retention_days}
               if self.records_retention_days is not None else {}),
            "rows": [self.row_dict(r) for r in self.rows] if rows else [],
            "total": {k: v for k, v in total.items() if k not in self.by},
            "resets": [
                {"time": self._iso(r.ts), "scope": r.scope,
                 "cleared_usd": str(from_nano(-r.cost_nano)),
                 "reason": str(r.metadata.get("reason", ""))}
                for r in self.resets
            ],
            "overrides": [
                {**dict(r.metadata), "time": self._iso(r.ts), "role": r.role,
                 "until": self._iso(r.metadata.get("until"))}
                for r in self.overrides
            ],
            **({"prices": [p.to_dict() for p in self.prices.values()]} if self.prices else {}),
            **({"what_if": self.what_if} if self.what_if is not None else {}),
            **({"shadow_blocked": self.shadow.to_dict()} if self.shadow is not None else {}),
        }

    def to_json(self) -> str:
        """Indented JSON, one row per line.

        ``json.dumps(indent=2)`` runs Python's pure-Python encoder: half a
        second for the ~23k rows of a 30-day role x model x hour report. Rows
        are written one per line by ``_row_lines``, straight from their
        integers: the text ``json.dumps(self.row_dict(row))`` gives
        (tests/test_report_fast.py compares both on thousands of rows).
        """
        parts = []
        for key, value in self._to_dict(rows=False).items():
            if key == "rows":
                inner = ",\n    ".join(self._row_lines())
                text = f"[\n    {inner}\n  ]" if self.rows else "[]"
            else:
                text = json.dumps(value, indent=2).replace("\n", "\n  ")
            parts.append(f"  {json.dumps(key)}: {text}")
        return "{\n" + ",\n".join(parts) + "\n}"

    def _row_lines(self) -> list[str]:
        """``json.dumps(self.row_dict(row))`` of every row, without a dict per row.

        A 30-day role x model x hour report has ~23,000 rows: building each
        row's dict (with its price-source columns) and encoding it took
        longer than reading and grouping them. Keys are encoded by
        ``json``'s own C string encoder (``ensure_ascii``, as ``json.dumps``);
        money is ASCII digits from ``_usd_text``/``_share_text``.
        """
        enc = encode_basestring_ascii
        names = [enc(k) + ": " for k in self.by]
        n = len(names)
        total = self.total.cost_nano
        suffix: dict[str, str] = {}
        model_at = self.by.index("model") if self.prices and "model" in self.by else None
        if model_at is not None:
            for model, found in self.prices.items():
                suffix[model] = (f', "price_source": {enc(found.label)}, '
                                 f'"priced_as": {enc(found.priced_as)}')
        values: dict[str, str] = {}  # the same few keys recur on every row
        usd, avg, share = _usd_text, _avg_nano, _share_text
        out = []
        for row in self.rows:
            key = row.key
            if len(key) != n:  # not a row build_report makes: the general path
                out.append(json.dumps(self.row_dict(row)))
                continue
            parts = []
            for name, v in zip(names, key, strict=True):
                e = values.get(v)
                if e is None:
                    e = values[v] = enc(v)
                parts.append(name + e)
            calls, cost = row.calls, row.cost_nano
            out.append(
                f'{{{", ".join(parts)}{", " if n else ""}"calls": {calls}, '
                f'"blocked": {row.blocked}, "released": {row.released}, '
                f'"expired": {row.expired}, "input_tokens": {row.input_tokens}, '
                f'"output_tokens": {row.output_tokens}, "cost_usd": "{usd(cost)}", '
                f'"estimate_usd": "{usd(row.estimate_nano)}", '
                f'"avg_cost_usd": "{usd(avg(cost, calls)) if calls else "0"}", '
                f'"share_pct": "{share(cost, total) if total else "0"}"'
                f'{"" if model_at is None else suffix.get(key[model_at], "")}}}')
        return out

    def to_csv(self) -> str:
        """A header and one line per row: the cells of ``row_dict`` (a missing
        price column empty), made from the row's integers as ``_row_lines``."""
        out = io.StringIO()
        columns = [*self.by, "calls", "blocked", "released", "expired", "input_tokens",
                   "output_tokens", "cost_usd", "estimate_usd", "avg_cost_usd", "share_pct"]
        model_at = self.by.index("model") if self.prices and "model" in self.by else None
        if model_at is not None:
            columns += ["price_source", "priced_as"]
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        cells = {m: [p.label, p.priced_as] for m, p in self.prices.items()}
        total, n, none = self.total.cost_nano, len(self.by), ["", ""]
        usd, avg, share = _usd_text, _avg_nano, _share_text
        lines: list[list[Any]] = []
        for row in self.rows:
            key, calls, cost = row.key, row.calls, row.cost_nano
            if len(key) != n:  # not a row build_report makes: the general path
                d = self.row_dict(row)
                lines.append([d.get(c, "") for c in columns])
                continue
            line = [*key, calls, row.blocked, row.released, row.expired, row.input_tokens,
                    row.output_tokens, usd(cost), usd(row.estimate_nano),
                    usd(avg(cost, calls)) if calls else "0",
                    share(cost, total) if total else "0"]
            if model_at is not None:
                line += cells.get(key[model_at], none)
            lines.append(line)
        writer.writerows(lines)
        return out.getvalue()


def build_report(
    records: Iterable[SpendRecord] | Iterable[Rollup] | RollupTable,
    by: Sequence[str] = ("role", "model"),
    *,
    since: float | None = None,
    until: float | None = None,
    tz: tzinfo = timezone.utc,
    sort: Literal["cost", "key"] = "cost",
    resets: Iterable[SpendRecord] = (),
) -> Report:
    """Group records (or rollups) in ``[since, until)`` by ``by`` (see ``GROUP_KEYS``).

    Given rollups, ``resets`` lists the reset records to show (rollups hold
    none; ``Ledger.resets``), ``records`` counts the calls the rollups stand
    for, and a key of ``RECORD_KEYS`` raises ``ValueError``. Given a
    ``RollupTable`` (``Ledger.rollup_table``), the same report, from its rows.
    """
    keys = parse_by(by)
    if isinstance(records, RollupTable):
        return _table_report(records, keys, since, until, tz, sort, resets)
    labels = {"hour": _TimeLabels(tz, "hour"), "day": _TimeLabels(tz, "day")}
    hour_labels = {"hour": _HourLabels(tz, "hour"), "day": _HourLabels(tz, "day")}
    groups: dict[tuple[str, ...], ReportRow] = {}
    total = ReportRow(())
    # Audit records kept beside the rollups (Ledger.resets): resets and
    # live-limit changes, neither of them a call.
    audit = [r for r in resets
             if (since is None or r.ts >= since) and (until is None or r.ts < until)]
    reset_list = [r for r in audit if r.outcome == "reset"]
    overrides = [r for r in audit if r.outcome == "override"]
    count = len(reset_list)
    source: Literal["records", "rollups"] = "records"
    rollup_key = _rollup_key(keys, hour_labels)
    rolled = False
    for r in records:
        if isinstance(r, Rollup):
            rolled = True
            if not in_span(r.hour, since, until):
                continue
            count += r.calls + r.blocked + r.released
            key = rollup_key(r)
            row = groups.get(key)
            if row is None:
                row = groups[key] = ReportRow(key)
            row.add_rollup(r)
            continue
        if (since is not None and r.ts < since) or (until is not None and r.ts >= until):
            continue
        count += 1
        if r.outcome == "reset":
            reset_list.append(r)
            continue
        if r.outcome == "override":  # a live-limit change (crew-budget set/pause): not a call
            overrides.append(r)
            continue
        key = tuple(_label(r, k, labels) for k in keys)
        row = groups.get(key)
        if row is None:
            row = groups[key] = ReportRow(key)
        row.add(r)
    rows = list(groups.values())
    for row in rows:  # every record and rollup went into exactly one row
        total.add_row(row)
    if rolled:
        source = "rollups"
    if sort == "cost":
        rows.sort(key=lambda row: (-row.cost_nano, -row.calls, row.key))
    else:
        rows.sort(key=lambda row: row.key)
    return Report(keys, since, until, tz, rows, total, reset_list, count, source,
                  overrides=overrides)


def _audit(resets: Iterable[SpendRecord], since: float | None, until: float | None
           ) -> tuple[list[SpendRecord], list[SpendRecord]]:
    audit = [r for r in resets
             if (since is None or r.ts >= since) and (until is None or r.ts < until)]
    return ([r for r in audit if r.outcome == "reset"],
            [r for r in audit if r.outcome == "override"])


def _table_report(table: RollupTable, keys: tuple[str, ...], since: float | None,
                  until: float | None, tz: tzinfo, sort: Literal["cost", "key"],
                  resets: Iterable[SpendRecord]) -> Report:
    """``build_report`` over a ``RollupTable``: the rows' keys are made per group
    (few) and per hour (720 in 30 days), not per row; rows that share a key
    (several scopes of one group-hour, or all hours without a time key) are
    summed in integers. Same rows, totals and order as over ``Rollup``s
    (tests/test_report_table.py)."""
    bad = [k for k in keys if k in RECORD_KEYS]
    if bad:
        raise ValueError(f"rollups cannot be grouped by {bad[0]!r}: read records for it")
    timed = [i for i, k in enumerate(keys) if k in ("hour", "day")]
    if timed and not table.per_hour:
        raise ValueError("a rollup table summed over the span has no hours to group by")
    reset_list, overrides = _audit(resets, since, until)
    rows = table.rows
    if table.per_hour and (since is not None or until is not None):
        hours = {r[0] for r in rows}
        if not all(in_span(h, since, until) for h in hours):
            rows = [r for r in rows if in_span(r[0], since, until)]
    # Per group: the key's parts before and after its one time part.
    split = timed[0] if len(timed) == 1 else len(keys)
    pre: dict[Any, tuple[str, ...]] = {}
    post: dict[Any, tuple[str, ...]] = {}
    for gid, (scope, role, model, crew) in table.groups.items():
        named = {"scope": scope or "", "role": role, "model": model, "crew": crew or "",
                 "hour": "", "day": ""}
        parts = tuple(named[k] for k in keys)
        pre[gid], post[gid] = parts[:split], parts[split + 1:]
    first: dict[tuple[str, ...], tuple[Any, ...]] = {}
    merged: dict[tuple[str, ...], list[int]] = {}
    if len(timed) == 1:
        label = _HourLabels(tz, "hour" if keys[split] == "hour" else "day")
        labels = {h: label(h) for h in {r[0] for r in rows}}
        add = first.setdefault
        for r in rows:
            g = r[1]
            key = pre[g] + (labels[r[0]],) + post[g]
            if add(key, r) is not r:
                _merge(first, merged, key, r)
    elif not timed:
        for r in rows:
            _merge(first, merged, pre[r[1]], r)
    else:  # hour and day both: each rollup's own labels
        hour_labels = {"hour": _HourLabels(tz, "hour"), "day": _HourLabels(tz, "day")}
        for r in rows:
            both = list(pre[r[1]])
            for i in timed:
                both[i] = hour_labels[keys[i]](r[0])
            _merge(first, merged, tuple(both), r)
    for key, acc in merged.items():  # summed rows, in the shape of a table row
        first[key] = (None, None, *acc)
    c, b, rel, e, i, ci, cw, o, cost, est = _ROW_AT
    out = [ReportRow(key, r[c], r[b], r[rel], r[e], r[i] + r[ci] + r[cw], r[o], r[cost], r[est])
           for key, r in first.items()]
    # The total is the sum of the rows (every rollup went into exactly one).
    got = first.values()
    sums = [sum(map(itemgetter(at), got)) for at in _ROW_AT]
    total = ReportRow((), sums[0], sums[1], sums[2], sums[3], sums[4] + sums[5] + sums[6],
                      sums[7], sums[8], sums[9])
    count = len(reset_list) + total.calls + total.blocked + total.released
    # (-cost, -calls, key) as three stable sorts on single fields: C comparisons
    # instead of a tuple per row.
    out.sort(key=attrgetter("key"))
    if sort == "cost":
        out.sort(key=attrgetter("calls"), reverse=True)
        out.sort(key=attrgetter("cost_nano"), reverse=True)
    return Report(keys, since, until, tz, out, total, reset_list, count,
                  "rollups" if table.rows else "records", overrides=overrides)


# Positions of the counts a report reads in a RollupTable row's counts
# (``row[2:]``, ROLLUP_METRICS order); ``_SHADOW`` is in the row itself.
(_CALLS, _BLOCKED, _RELEASED, _EXPIRED, _INPUT, _CACHED, _CACHE_WRITE, _OUTPUT, _COST,
 _ESTIMATE) = (ROLLUP_METRICS.index(m) for m in (
     "calls", "blocked", "released", "expired", "input_tokens", "cached_input_tokens",
     "cache_write_tokens", "output_tokens", "cost_nano", "estimate_nano"))
_ROW_AT = tuple(2 + i for i in (_CALLS, _BLOCKED, _RELEASED, _EXPIRED, _INPUT, _CACHED,
                                 _CACHE_WRITE, _OUTPUT, _COST, _ESTIMATE))
"""The same positions in a table row (``(hour, group_id, *counts)``)."""
_SHADOW = 2 + ROLLUP_METRICS.index("shadow_blocked")
assert ROLLUP_METRICS[_SHADOW - 1] == "shadow_blocked_nano"  # read as r[_SHADOW + 1]


def _merge(first: dict[tuple[str, ...], tuple[Any, ...]],
           merged: dict[tuple[str, ...], list[int]], key: tuple[str, ...],
           r: tuple[Any, ...]) -> None:
    """Put row ``r`` under ``key``: kept as is if it is the first, else summed."""
    seen = first.setdefault(key, r)
    if seen is r:
        return
    acc = merged.get(key)
    if acc is None:
        acc = merged[key] = list(seen[2:])
    for i, x in enumerate(r[2:]):
        acc[i] += x


def time_series(
    records: Iterable[SpendRecord] | Iterable[Rollup],
    *,
    since: float,
    until: float,
    step: Literal["hour", "day"],
    tz: tzinfo = timezone.utc,
    key: str = "role",
) -> tuple[list[str], dict[str, list[int]]]:
    """Cost in nano-USD per ``step`` and per ``key`` value, zeros included.

    Returns the bucket labels (oldest first) and, per role (or model), one
    integer per bucket: what a spend-over-time chart draws. Given rollups,
    the hour that holds ``since`` counts in the first bucket.
    """
    label_of = _TimeLabels(tz, step)
    labels: list[str] = []
    index: dict[str, int] = {}
    t = since
    while t < until:
        label = _time_label(t, tz, step)
        if label not in index:
            index[label] = len(labels)
            labels.append(label)
        t += 900 if step == "hour" else 3600
    last = _time_label(until - 1e-6, tz, step)
    if until > since and last not in index:
        index[last] = len(labels)
        labels.append(last)
    series: dict[str, list[int]] = {}
    for r in records:
        if isinstance(r, Rollup):
            if not in_span(r.hour, since, until) or not r.cost_nano:
                continue
            # The hour's local label; an hour of a half-hour zone counts in
            # the bucket its start falls in.
            i = index.get(label_of(max(r.hour, since)))
            if i is None:
                continue
            name = str(getattr(r, key) or "")
            series.setdefault(name, [0] * len(labels))[i] += r.cost_nano
            continue
        if r.outcome not in _CHARGED or not since <= r.ts < until:
            continue
        i = index.get(label_of(r.ts))
        if i is None:
            continue
        name = str(getattr(r, key) or "")
        series.setdefault(name, [0] * len(labels))[i] += r.cost_nano
    return labels, series


def render_table(report: Report, *, title: str | None = None, limit: int | None = None,
                 width: int | None = None) -> Any:
    """A ``rich.table.Table`` of the report (rich is imported here, lazily).

    With ``width`` (the terminal's), optional columns (tokens, avg/call,
    blocked, calls) are left out until the table fits, so keys and money
    are never cut.
    """
    from rich.table import Table

    rows = report.rows if limit is None else report.rows[:limit]
    t = report.total
    cells: dict[str, list[str]] = {}
    for i, k in enumerate(report.by):
        first = ["total"] if i == 0 else []
        cells[k] = first + [short_hour(r.key[i]) if k == "hour" else r.key[i] for r in rows]
    stats = {
        "calls": [str(t.calls), *(str(r.calls) for r in rows)],
        "blocked": [str(t.blocked), *(str(r.blocked) for r in rows)],
        "in tok": [f"{t.input_tokens:,}", *(f"{r.input_tokens:,}" for r in rows)],
        "out tok": [f"{t.output_tokens:,}", *(f"{r.output_tokens:,}" for r in rows)],
        "cost": [fmt_usd(t.cost), *(fmt_usd(r.cost) for r in rows)],
        "avg/call": [fmt_usd(t.avg_cost), *(fmt_usd(r.avg_cost) for r in rows)],
        "share": ["100%" if t.cost_nano else "", *(f"{report.share(r)}%" for r in rows)],
    }
    cells.update(stats)
    shown = list(cells) if width is None else fit_columns(
        cells, width, ["in tok", "out tok", "avg/call", "blocked", "calls"])
    table = Table(title=title, title_justify="left", show_footer=True)
    for name in shown:
        values = cells[name]
        if name in stats:
            money_column(table, name, values, footer=values[0],
                         style="green" if name == "cost" else None)
        else:
            footer = values[0] if name == report.by[0] else ""
            body = values[1:] if name == report.by[0] else values
            timed = name in ("hour", "day")  # names fold onto more lines; times never
            table.add_column(name, footer=footer, no_wrap=timed, overflow="fold",
                             min_width=len(values[-1]) if timed else None,
                             style="bold" if name == report.by[0] else None)
            cells[name] = [footer, *body]
    for i in range(len(rows)):
        table.add_row(*(cells[name][i + 1] for name in shown))
    return table


# -- price sources (issue 10: every row says which source priced it) -----------


_SOURCE_LABELS = {"override": "config"}


@dataclass(frozen=True, slots=True)
class PriceSource:
    """Which source priced ``model`` and under what name.

    ``source`` is ``config`` (a ``prices:`` entry of the budget YAML),
    ``genai-prices`` or ``litellm`` (``crew_budget.pricing``'s order), or
    ``unpriced`` when no source knows the name any more (``error`` says why):
    a bill is only checkable against the invoice when one knows which price
    list was used and which entry of it matched the name the agent sent.
    ``provider`` is the price list's provider id (genai-prices' own ids).
    """

    model: str
    source: str
    priced_as: str
    provider: str | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        """``genai-prices (anthropic)``, ``config``, ``litellm``."""
        if self.source == "genai-prices" and self.provider:
            return f"genai-prices ({self.provider})"
        return self.source

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"model": self.model, "price_source": self.label,
                                "source": self.source, "priced_as": self.priced_as,
                                "provider": self.provider}
        if self.error is not None:
            data["error"] = self.error
        return data


def price_sources(models: Iterable[str], prices: Any, *,
                  cache: Path | None = None) -> dict[str, PriceSource]:
    """Resolve each model as the guard does (``prices`` is its ``PriceBook``).

    The name is the one the ledger recorded (with its provider prefix, when
    the agent used one), resolved without a provider hint: rollups do not
    keep one. Sorted by model name. ``cache``: a file of names resolved
    before (``PriceBook.priced_as``; the CLI passes
    ``crew_budget.pricing.names_cache_path()``), so a report on known models
    loads no price list.
    """
    from crew_budget.errors import CrewBudgetError

    out: dict[str, PriceSource] = {}
    for model in sorted(set(models)):
        if not model:
            continue
        try:
            source, name, provider = prices.priced_as(model, cache=cache)
        except CrewBudgetError as exc:
            out[model] = PriceSource(model, "unpriced", "", None, str(exc))
            continue
        out[model] = PriceSource(model, _SOURCE_LABELS.get(source, source), name,
                                 None if source == "override" else provider)
    return out


def render_price_sources(sources: Iterable[PriceSource], *, title: str) -> Any:
    """A borderless ``rich`` table: model, price source, priced as."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("model", "price source", "priced as"):
        table.add_column(name, overflow="fold")
    for p in sources:
        table.add_row(p.model, p.label, p.priced_as or f"- ({p.error})")
    return table


def scope_models(scope: str, rollups: Iterable[Rollup], since: float,
                 until: float) -> list[str]:
    """The models a budget scope's calls used in ``[since, until)``, from rollups.

    ``scope`` as ``Guard.status`` names it: ``role:<r>``, ``crew:<c>``,
    ``global``, ``model:<m>``, ``model:<m>@role:<r>`` (a model key matches
    the model exactly or without its provider prefix), optionally followed
    by `` (no budget)``.
    """
    parts = [p.partition(":") for p in scope.split(" (", 1)[0].split("@")]
    found: set[str] = set()
    for r in rollups:
        if not (r.calls or r.blocked) or not in_span(r.hour, since, until):
            continue
        ok = True
        for kind, _, value in parts:
            if kind == "role":
                ok = r.role == value
            elif kind == "crew":
                ok = r.crew == value
            elif kind == "model":
                ok = value in (r.model, r.model.split("/", 1)[-1])
            if not ok:
                break
        if ok:
            found.add(r.model)
    return sorted(found)
@dataclass(slots=True)
class ShadowSummary:
    """What shadow mode let through (``on_exceed: shadow`` / ``mode: shadow``):
    charged calls the limits would have blocked, and their cost, per role.

    The dollars are what those calls cost: what enforcing the limits would
    have saved, and the measure of how far off a budget is before anyone
    enforces it.
    """

    calls: int = 0
    cost_nano: int = 0
    by_role: dict[str, list[int]] = field(default_factory=dict)
    """role -> [calls, cost_nano]."""

    def add(self, role: str, calls: int, cost_nano: int) -> None:
        self.calls += calls
        self.cost_nano += cost_nano
        slot = self.by_role.setdefault(role, [0, 0])
        slot[0] += calls
        slot[1] += cost_nano

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls, "cost_usd": str(from_nano(self.cost_nano)),
            "by_role": [{"role": role, "calls": n, "cost_usd": str(from_nano(c))}
                        for role, (n, c) in self._rows()],
        }

    def _rows(self) -> list[tuple[str, list[int]]]:
        return sorted(self.by_role.items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))

    def text(self) -> str:
        """One line for the terminal: ``shadow mode: 3 calls ($0.0012) would ...``."""
        roles = ", ".join(f"{role} {n} ({fmt_usd(from_nano(c))})" for role, (n, c) in self._rows())
        return (f"shadow mode: {self.calls} call{'s' if self.calls != 1 else ''} "
                f"({fmt_usd(from_nano(self.cost_nano))}) would have been blocked and were "
                f"sent anyway: {roles}")


def shadow_summary(
    data: Iterable[SpendRecord] | Iterable[Rollup] | RollupTable,
    *,
    since: float | None = None,
    until: float | None = None,
) -> ShadowSummary:
    """The shadow-blocked calls of ``data`` in ``[since, until)``: from rollups'
    ``shadow_blocked`` counts, or from records charged with the guard's mark."""
    out = ShadowSummary()
    if isinstance(data, RollupTable):
        for row in data.rows:
            if row[_SHADOW] and (not data.per_hour or in_span(row[0], since, until)):
                out.add(data.groups[row[1]][1], row[_SHADOW], row[_SHADOW + 1])
        return out
    for r in data:
        if isinstance(r, Rollup):
            if r.shadow_blocked and in_span(r.hour, since, until):
                out.add(r.role, r.shadow_blocked, r.shadow_blocked_nano)
        elif (r.outcome in _CHARGED and SHADOW_KEY in r.metadata
              and (since is None or r.ts >= since) and (until is None or r.ts < until)):
            out.add(r.role, 1, r.cost_nano)
    return out
