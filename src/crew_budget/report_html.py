"""A self-contained HTML spend report: inline SVG charts, no scripts, no network.

One file you can mail or attach to a ticket: a summary (total, the costliest
role/model/hour), a spend-over-time bar chart per role, a per-model
breakdown (bars and table) and the role x model table. Charts are SVG drawn
here in Python, so the page renders offline, in any browser, forever.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone, tzinfo
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

from crew_budget.ledger.base import Rollup, SpendRecord, in_span
from crew_budget.report import PriceSource, build_report, fmt_usd, short_hour, time_series

if TYPE_CHECKING:
    from crew_budget.config import BudgetConfig

__all__ = ["BLOCKED_COLOR", "LIMIT_COLOR", "MODEL_COLORS", "ROLE_COLORS", "nice_scale",
           "render_html"]

#: Bar colours per role, in order of cost (the costliest role is blue).
ROLE_COLORS = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777",
               "#4d7c0f", "#9333ea", "#ea580c")
#: Bar colours per model in the breakdown chart.
MODEL_COLORS = ("#0f766e", "#b45309", "#6d28d9", "#be123c", "#1d4ed8", "#15803d", "#a21caf",
                "#c2410c")

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#111827;
background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#6b7280;margin:0 0 16px}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{border:1px solid #e5e7eb;border-radius:8px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:20px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:16px}
figure{margin:0;border:1px solid #e5e7eb;border-radius:8px;padding:8px}
figcaption{font-weight:600;margin:0 0 4px}
table{border-collapse:collapse;margin-top:8px}
th,td{padding:4px 10px;border-bottom:1px solid #e5e7eb;text-align:right}
th:first-child,td:first-child,.k{text-align:left}
svg text{font:11px system-ui,sans-serif;fill:#374151}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _usd(nano: int) -> str:
    return fmt_usd(Decimal(nano) / 10**9)


def nice_scale(peak_nano: int, ticks: int = 4) -> list[int]:
    """Round axis ticks (nano-USD) from 0 to at least ``peak_nano``.

    Steps are 1, 2, 2.5 or 5 times a power of ten, so the labels read
    ``$0.25 $0.50 $0.75 $1.00`` instead of ``$0.4801 $0.9603``. Integer
    arithmetic on nano-dollars: no float ever touches money here.
    """
    if peak_nano <= 0:
        return [0, 10_000_000]  # an empty chart still gets a $0.01 axis
    raw = -(-peak_nano // ticks)  # ceil
    power = 1
    while power * 10 <= raw:
        power *= 10
    for mult in (1, 2, 25, 5, 10):
        step = power * mult // 10 if mult == 25 else power * mult
        if step >= raw:
            break
    top = -(-peak_nano // step) * step
    return list(range(0, top + 1, step))


#: Marker colour for blocked calls (in no chart palette, so it never reads as spend).
BLOCKED_COLOR = "#000000"
#: Colour of the dashed budget line (dark slate: no role bar is drawn in it).
LIMIT_COLOR = "#334155"


def _bar_chart(labels: Sequence[str], values: Sequence[int], color: str, title: str,
               scale: Sequence[int], *, blocked: Sequence[int] = (),
               limit_nano: int | None = None, limit_name: str = "",
               width: int = 540, height: int = 230) -> str:
    """Vertical bars (nano-USD) on a shared y ``scale``, a dashed budget line
    and a black triangle under each bucket with blocked calls.

    The SVG scales to its panel (``width: 100%``); the margins leave room for
    the widest money tick and the last x label, so nothing is clipped.
    """
    left, right, top, bottom = 70, 46, 12, 42
    plot_w, plot_h = width - left - right, height - top - bottom
    ymax = scale[-1] if scale and scale[-1] > 0 else 1
    n = max(len(values), 1)
    slot = plot_w / n
    bar_w = max(slot * 0.8, 1.0)
    base = top + plot_h
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'width="100%" role="img" aria-label="{_e(title)}">']
    for tick in scale:
        y = base - plot_h * tick / ymax  # pixels, not money
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#e5e7eb"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{_e(_usd(tick))}</text>")
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        if value <= 0:
            continue
        h = plot_h * min(value, ymax) / ymax
        x = left + i * slot + (slot - bar_w) / 2
        parts.append(f'<rect x="{x:.2f}" y="{base - h:.2f}" width="{bar_w:.2f}" '
                     f'height="{h:.2f}" fill="{color}"><title>{_e(short_hour(label))}: '
                     f"{_e(_usd(value))}</title></rect>")
    for i, count in enumerate(blocked):
        if count <= 0:
            continue
        cx = left + i * slot + slot / 2
        parts.append(f'<path data-blocked="{count}" d="M{cx:.2f} {base + 1:.1f} '
                     f'l4.5 8 h-9 z" fill="{BLOCKED_COLOR}"><title>{_e(short_hour(labels[i]))}: '
                     f"{count} blocked call{'s' if count != 1 else ''}</title></path>")
    if limit_nano is not None and 0 < limit_nano <= ymax:
        y = base - plot_h * limit_nano / ymax
        parts.append(f'<line data-limit="{limit_nano}" x1="{left}" x2="{width - right}" '
                     f'y1="{y:.1f}" y2="{y:.1f}" stroke="{LIMIT_COLOR}" stroke-width="2" '
                     f'stroke-dasharray="6 4"><title>{_e(limit_name)}</title></line>')
        parts.append(f'<text x="{width - right + 3}" y="{y + 4:.1f}" '
                     f'style="fill:{LIMIT_COLOR}">limit</text>')
    every = max(1, -(-len(labels) // 6))
    shown = list(range(0, len(labels), every))
    for i in shown:
        x = left + i * slot + slot / 2
        parts.append(f'<text x="{x:.1f}" y="{base + 24}" text-anchor="middle">'
                     f"{_e(_short(labels[i]))}</text>")
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{base}" y2="{base}" '
                 f'stroke="#9ca3af"/></svg>')
    return "".join(parts)


def _short(label: str) -> str:
    # "2026-11-25T14:00:00+00:00" -> "11-25 14h"; "2026-11-25" -> "11-25"
    date, _, rest = label.partition("T")
    return f"{date[5:]} {rest[:2]}h" if rest else date[5:]


def _hbar_chart(items: Sequence[tuple[str, int]], colors: Sequence[str], title: str,
                width: int = 540) -> str:
    """Horizontal bars, one per (name, nano-USD)."""
    row_h, left, right = 26, 170, 90
    height = row_h * len(items) + 10
    peak = max((v for _, v in items), default=0)
    plot_w = width - left - right
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'width="100%" role="img" aria-label="{_e(title)}">']
    for i, (name, value) in enumerate(items):
        y = 5 + i * row_h
        w = plot_w * value / peak if peak else 0.0  # pixels, not money
        parts.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end">{_e(name[:28])}'
                     f'</text>')
        parts.append(f'<rect x="{left}" y="{y + 3}" width="{w:.2f}" height="{row_h - 8}" '
                     f'fill="{colors[i % len(colors)]}"><title>{_e(name)}: {_e(_usd(value))}'
                     f'</title></rect>')
        parts.append(f'<text x="{left + w + 6:.2f}" y="{y + 16}">{_e(_usd(value))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _blocked_series(records: Sequence[SpendRecord] | Sequence[Rollup], labels: Sequence[str],
                    *, since: float, until: float, step: Literal["hour", "day"],
                    tz: tzinfo) -> dict[str, list[int]]:
    """Blocked calls per role and bucket (the markers under the bars)."""
    from crew_budget.report import _TimeLabels

    index = {label: i for i, label in enumerate(labels)}
    label_of = _TimeLabels(tz, step)
    out: dict[str, list[int]] = {}
    for r in records:
        if isinstance(r, Rollup):  # hourly rollups (see crew_budget.report)
            if r.blocked and in_span(r.hour, since, until):
                i = index.get(label_of(max(r.hour, since)))
                if i is not None:
                    out.setdefault(r.role, [0] * len(labels))[i] += r.blocked
            continue
        if r.outcome != "blocked" or not since <= r.ts < until:
            continue
        i = index.get(label_of(r.ts))
        if i is not None:
            out.setdefault(r.role, [0] * len(labels))[i] += 1
    return out


def _role_limit(config: BudgetConfig | None, role: str,
                step: Literal["hour", "day"]) -> int | None:
    """The role's hourly or daily limit in nano-USD (its own or default_role's)."""
    if config is None:
        return None
    from crew_budget.money import to_nano

    key = config.match_role(role)
    budget = config.roles.get(key) if key is not None else config.default_role
    if budget is None:
        return None
    value = budget.hourly if step == "hour" else budget.daily
    return None if value is None else to_nano(value)


def render_html(
    records: Sequence[SpendRecord] | Sequence[Rollup],
    *,
    since: float,
    until: float,
    tz: tzinfo = timezone.utc,
    title: str = "crew-budget spend report",
    step: Literal["hour", "day"] | None = None,
    config: BudgetConfig | None = None,
    prices: Mapping[str, PriceSource] | None = None,
) -> str:
    """The whole page as one string (UTF-8, no external resources).

    With ``prices`` (``crew_budget.report.price_sources``), the per-model
    table says which source priced each model and under what name.

    ``records`` may be the ledger's hourly rollups (``Ledger.rollups``)
    instead: the page then costs what hours x roles x models cost.

    ``step`` is the bar width of the spend-over-time charts (default: hours
    for up to three days, else days). All role charts share one y scale, so
    bars compare across charts at a glance. With ``config``, each chart draws
    its role's limit for one ``step`` (the hourly or daily budget) as a
    dashed line; a limit far above the spend (more than twice the tallest
    bar) is named in the caption instead of flattening every bar.
    """
    by_role = build_report(records, ("role",), since=since, until=until, tz=tz)
    by_model = build_report(records, ("model",), since=since, until=until, tz=tz)
    by_rm = build_report(records, ("role", "model"), since=since, until=until, tz=tz)
    by_rmh = build_report(records, ("role", "model", "hour"), since=since, until=until, tz=tz)
    if step is None:
        step = "hour" if until - since <= 3 * 86400 else "day"
    labels, series = time_series(records, since=since, until=until, step=step, tz=tz)
    blocked = _blocked_series(records, labels, since=since, until=until, step=step, tz=tz)
    limits = {row.key[0]: _role_limit(config, row.key[0], step) for row in by_role.rows}
    peak = max((v for values in series.values() for v in values), default=0)
    near = [n for n in limits.values() if n is not None and n <= 2 * max(peak, 1)]
    scale = nice_scale(max([peak, *near]))
    total = by_role.total

    def when(ts: float) -> str:
        return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M")

    out = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{_e(title)}</h1>",
           f'<p class="sub">{_e(when(since))} to {_e(when(until))} ({_e(tz)}), '
           f"{by_role.records} spend records</p>",
           '<div class="cards">',
           f'<div class="card">total spend<b>{_e(fmt_usd(total.cost))}</b></div>',
           f'<div class="card">calls<b>{total.calls}</b></div>',
           f'<div class="card">blocked<b>{total.blocked}</b></div>']
    if by_rmh.rows:
        top = by_rmh.rows[0]
        role, model, hour = top.key
        out.append(f'<div class="card">costliest: role {_e(role)} on {_e(model)} at '
                   f"{_e(short_hour(hour))}<b>{_e(fmt_usd(top.cost))}</b></div>")
    out.append("</div>")

    out.append(f"<h2>Spend over time per role (per {step})</h2><div class=\"grid\">")
    window = "hourly" if step == "hour" else "daily"
    for i, row in enumerate(by_role.rows):
        (role,) = row.key
        values = series.get(role, [0] * len(labels))
        color = ROLE_COLORS[i % len(ROLE_COLORS)]
        limit = limits.get(role)
        note = ""
        if limit is not None:
            where = "dashed line" if limit <= scale[-1] else "above this scale"
            note = f"; {window} limit {fmt_usd(Decimal(limit) / 10**9)} ({where})"
        if row.blocked:
            note += f"; {row.blocked} blocked (&#9650;)"
        chart = _bar_chart(labels, values, color, f"spend of role {role} per {step}", scale,
                           blocked=blocked.get(role, ()), limit_nano=limit,
                           limit_name=f"{window} limit of role {role}")
        out.append(f'<figure data-role="{_e(role)}"><figcaption>role {_e(role)}: '
                   f"{_e(fmt_usd(row.cost))} in {row.calls} calls{note}</figcaption>"
                   f"{chart}</figure>")
    if not by_role.rows:
        out.append("<p>No spend records in this period.</p>")
    out.append("</div>")

    out.append("<h2>Per-model breakdown</h2>")
    items = [(row.key[0], row.cost_nano) for row in by_model.rows]
    out.append('<div class="grid"><figure data-chart="models">'
               f'{_hbar_chart(items, MODEL_COLORS, "cost per model")}</figure></div>')
    out.append("<table><tr><th>model</th><th>calls</th><th>in tok</th><th>out tok</th>"
               "<th>cost</th><th>avg/call</th><th>share</th>"
               + ('<th class="k">price source</th><th class="k">priced as</th>' if prices
                  else "") + "</tr>")
    for row in by_model.rows:
        out.append(f'<tr><td class="k">{_e(row.key[0])}</td><td>{row.calls}</td>'
                   f"<td>{row.input_tokens:,}</td><td>{row.output_tokens:,}</td>"
                   f"<td>{_e(fmt_usd(row.cost))}</td><td>{_e(fmt_usd(row.avg_cost))}</td>"
                   f"<td>{by_model.share(row)}%</td>{_price_cells(prices, row.key[0])}</tr>")
    out.append("</table>")

    out.append('<h2>Role x model</h2><table><tr><th>role</th><th class="k">model</th>'
               "<th>calls</th><th>blocked</th><th>cost</th><th>share</th></tr>")
    for row in by_rm.rows:
        out.append(f'<tr><td class="k">{_e(row.key[0])}</td><td class="k">{_e(row.key[1])}</td>'
                   f"<td>{row.calls}</td><td>{row.blocked}</td><td>{_e(fmt_usd(row.cost))}</td>"
                   f"<td>{by_rm.share(row)}%</td></tr>")
    out.append("</table></body></html>\n")
    return "".join(out)


def _price_cells(prices: Mapping[str, PriceSource] | None, model: str) -> str:
    """The price source and priced-as cells of a model row (none without ``prices``)."""
    if not prices:
        return ""
    found = prices.get(model)
    if found is None:
        return '<td class="k"></td><td class="k"></td>'
    return f'<td class="k">{_e(found.label)}</td><td class="k">{_e(found.priced_as)}</td>'
