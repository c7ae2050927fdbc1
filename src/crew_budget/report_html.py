"""A self-contained HTML spend report: inline SVG charts, no scripts, no network.

One file you can mail or attach to a ticket: a summary (total, the costliest
role/model/hour), a spend-over-time bar chart per role, a per-model
breakdown (bars and table) and the role x model table. Charts are SVG drawn
here in Python, so the page renders offline, in any browser, forever.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime, timezone, tzinfo
from decimal import Decimal
from typing import Literal

from crew_budget.ledger.base import SpendRecord
from crew_budget.report import build_report, fmt_usd, time_series

__all__ = ["MODEL_COLORS", "ROLE_COLORS", "render_html"]

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


def _bar_chart(labels: Sequence[str], values: Sequence[int], color: str, title: str,
               width: int = 540, height: int = 220) -> str:
    """Vertical bars (nano-USD values) with a y axis in dollars."""
    left, right, top, bottom = 64, 10, 10, 38
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(values, default=0)
    n = max(len(values), 1)
    slot = plot_w / n
    bar_w = max(slot * 0.8, 1.0)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">']
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#e5e7eb"/>')
        amount = _usd(int(peak * frac)) if peak else "$0"
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(amount)}</text>')
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        if value <= 0 or peak <= 0:
            continue
        h = plot_h * value / peak  # pixels, not money
        x = left + i * slot + (slot - bar_w) / 2
        parts.append(f'<rect x="{x:.2f}" y="{top + plot_h - h:.2f}" width="{bar_w:.2f}" '
                     f'height="{h:.2f}" fill="{color}"><title>{_e(label)}: '
                     f'{_e(_usd(value))}</title></rect>')
    step = max(1, len(labels) // 6)
    for i in range(0, len(labels), step):
        x = left + i * slot + slot / 2
        parts.append(f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle">'
                     f'{_e(_short(labels[i]))}</text>')
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" '
                 f'y2="{top + plot_h}" stroke="#9ca3af"/></svg>')
    return "".join(parts)


def _short(label: str) -> str:
    # "2026-11-25 14:00" -> "11-25 14h"; "2026-11-25" -> "11-25"
    date, _, hour = label.partition(" ")
    return f"{date[5:]} {hour[:2]}h" if hour else date[5:]


def _hbar_chart(items: Sequence[tuple[str, int]], colors: Sequence[str], title: str,
                width: int = 540) -> str:
    """Horizontal bars, one per (name, nano-USD)."""
    row_h, left, right = 26, 170, 90
    height = row_h * len(items) + 10
    peak = max((v for _, v in items), default=0)
    plot_w = width - left - right
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">']
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


def render_html(
    records: Sequence[SpendRecord],
    *,
    since: float,
    until: float,
    tz: tzinfo = timezone.utc,
    title: str = "crew-budget spend report",
) -> str:
    """The whole page as one string (UTF-8, no external resources)."""
    by_role = build_report(records, ("role",), since=since, until=until, tz=tz)
    by_model = build_report(records, ("model",), since=since, until=until, tz=tz)
    by_rm = build_report(records, ("role", "model"), since=since, until=until, tz=tz)
    by_rmh = build_report(records, ("role", "model", "hour"), since=since, until=until, tz=tz)
    step: Literal["hour", "day"] = "hour" if until - since <= 3 * 86400 else "day"
    labels, series = time_series(records, since=since, until=until, step=step, tz=tz)
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
                   f"{_e(hour)}<b>{_e(fmt_usd(top.cost))}</b></div>")
    out.append("</div>")

    out.append(f"<h2>Spend over time per role (per {step})</h2><div class=\"grid\">")
    for i, row in enumerate(by_role.rows):
        (role,) = row.key
        values = series.get(role, [0] * len(labels))
        color = ROLE_COLORS[i % len(ROLE_COLORS)]
        out.append(f'<figure data-role="{_e(role)}"><figcaption>role {_e(role)}: '
                   f"{_e(fmt_usd(row.cost))} in {row.calls} calls</figcaption>"
                   f"{_bar_chart(labels, values, color, f'spend of role {role} per {step}')}"
                   "</figure>")
    if not by_role.rows:
        out.append("<p>No spend records in this period.</p>")
    out.append("</div>")

    out.append("<h2>Per-model breakdown</h2>")
    items = [(row.key[0], row.cost_nano) for row in by_model.rows]
    out.append(f'<figure data-chart="models">{_hbar_chart(items, MODEL_COLORS, "cost per model")}'
               "</figure>")
    out.append("<table><tr><th>model</th><th>calls</th><th>in tok</th><th>out tok</th>"
               "<th>cost</th><th>avg/call</th><th>share</th></tr>")
    for row in by_model.rows:
        out.append(f'<tr><td class="k">{_e(row.key[0])}</td><td>{row.calls}</td>'
                   f"<td>{row.input_tokens:,}</td><td>{row.output_tokens:,}</td>"
                   f"<td>{_e(fmt_usd(row.cost))}</td><td>{_e(fmt_usd(row.avg_cost))}</td>"
                   f"<td>{by_model.share(row)}%</td></tr>")
    out.append("</table>")

    out.append('<h2>Role x model</h2><table><tr><th>role</th><th class="k">model</th>'
               "<th>calls</th><th>blocked</th><th>cost</th><th>share</th></tr>")
    for row in by_rm.rows:
        out.append(f'<tr><td class="k">{_e(row.key[0])}</td><td class="k">{_e(row.key[1])}</td>'
                   f"<td>{row.calls}</td><td>{row.blocked}</td><td>{_e(fmt_usd(row.cost))}</td>"
                   f"<td>{by_rm.share(row)}%</td></tr>")
    out.append("</table></body></html>\n")
    return "".join(out)
