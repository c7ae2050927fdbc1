"""``crew-budget status`` and ``crew-budget watch``: every budget, right now.

``status`` prints every configured scope and window (role, crew, global x
hour, day, month) with its limit, spent, reserved and remaining dollars, a
progress bar and when the window resets. ``watch`` redraws that, plus the
latest calls, every ``--interval`` seconds until Ctrl-C.
"""

from __future__ import annotations

import json
import signal
import threading
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

import typer

from crew_budget.cli.common import (
    EXIT_CONFIG,
    EXIT_EMPTY,
    EXIT_LEDGER,
    ConfigOption,
    LedgerOption,
    bar,
    console,
    fail,
    fit_columns,
    fmt_usd,
    ledger_name,
    money_column,
    open_guard,
)

if TYPE_CHECKING:
    from crew_budget.guard import BudgetStatus, Guard

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``status`` and ``watch`` to the ``crew-budget`` app."""
    app.command("status")(status)
    app.command("watch")(watch)


RoleOption = Annotated[
    str | None, typer.Option("--role", "-r", help="Only this role (and its crew/global budgets).")
]


def _rows(guard: Guard, role: str | None, command: str, source: str) -> list[BudgetStatus]:
    from crew_budget.errors import LedgerUnavailable

    if role is not None and guard.config.role_budget(role) is None:
        known = ", ".join(sorted(guard.config.roles)) or "none"
        fail(command, f"role {role!r} has no budget in {source} (known roles: {known}); "
             "check the spelling or add it under roles:", EXIT_CONFIG)
    try:
        guard.refresh_overrides()  # live limits (crew-budget set/pause): the limits in force
        rows = guard.status(role)
        if role is None and guard.config.unknown_roles == "allow":
            rows += _unbudgeted(guard)
    except LedgerUnavailable as exc:
        fail(command, f"ledger {ledger_name(guard)} is unreachable ({exc.reason})", EXIT_LEDGER)
    if not rows:
        fail(command, f"no budgets configured in {source}; add limits under roles:, crew: or "
             "global: (see `crew-budget validate`)", EXIT_EMPTY)
    return rows


def _unbudgeted(guard: Guard) -> list[BudgetStatus]:
    """Today's spend of roles with no role budget (``unknown_roles: allow``).

    They are charged to the crew and global budgets only, so no role bucket
    holds their spend; without these rows the listed roles would not add up
    to the crew's total. Read from today's hourly rollups (the hours the day
    overlaps), so the cost does not grow with the number of calls.
    """
    from crew_budget.config import DEFAULT_ROLE
    from crew_budget.guard import BudgetStatus
    from crew_budget.money import from_nano
    from crew_budget.windows import get_tz, span

    tz = get_tz(guard.config.timezone)
    day = span("day", guard.ledger.now(), tz)
    spent: dict[str, int] = {}
    for r in guard.ledger.rollups(since=day.starts_at, until=day.ends_at):
        if r.cost_nano and r.role != DEFAULT_ROLE and r.role not in guard.config.roles:
            spent[r.role] = spent.get(r.role, 0) + r.cost_nano
    return [BudgetStatus(scope=f"role:{name} (no budget)", window="day", period=day.period,
                         limit=None, spent=from_nano(nano), reserved=Decimal(0), remaining=None,
                         resets_at=datetime.fromtimestamp(day.ends_at, tz))
            for name, nano in sorted(spent.items())]


def _resets_in(row: BudgetStatus, now: float) -> str:
    seconds = max(row.resets_at.timestamp() - now, 0.0)
    minutes = int(seconds // 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    left = f"{days}d {hours}h" if days else f"{hours}h {minutes:02d}m" if hours else f"{minutes}m"
    return f"in {left} ({row.resets_at.strftime('%m-%d %H:%M')})"


def _used(row: BudgetStatus) -> Decimal:
    if not row.limit:
        return Decimal(0)
    return (row.spent + row.reserved) / row.limit


def status_table(rows: list[BudgetStatus], now: float, title: str | None = None,
                 width: int = 200) -> Any:
    """The status table, fitted to ``width`` columns.

    In a narrow terminal the less essential columns go first (period,
    resets, reserved, the bar); scope, window and the money columns always
    stay, whole: a cut ``$1…`` is worse than a missing column.
    """
    from rich.table import Table

    cells: dict[str, list[str]] = {
        "scope": [r.scope for r in rows],
        # A token or call limit says its unit beside the window; its amounts
        # are counts, not dollars.
        "window": [r.window if r.unit == "usd" else f"{r.window} {r.unit}" for r in rows],
        "period": [r.period for r in rows],
        "limit": [_amount(r, r.limit) for r in rows],
        "spent": [_amount(r, r.spent) for r in rows],
        "reserved": [_amount(r, r.reserved) for r in rows],
        "remaining": [_amount(r, r.remaining) for r in rows],
        "used": [f"{bar(_used(r))} {_pct(r):>4}" for r in rows],
        "resets": [_resets_in(r, now) for r in rows],
    }
    shown = fit_columns(cells, width, ["period", "resets", "reserved", "used"])
    if "used" not in shown:  # keep the percentage, drop the bar
        cells["used"] = [f"{_pct(r):>4}" for r in rows]
        shown.append("used")
    table = Table(title=title, title_justify="left")
    for name in shown:
        if name in ("limit", "spent", "reserved", "remaining"):
            money_column(table, name, cells[name])
        elif name in ("scope", "period", "resets"):  # may fold onto a second line
            table.add_column(name, overflow="fold")
        else:
            table.add_column(name, no_wrap=True, min_width=len(name))
    for i, row in enumerate(rows):
        used = _used(row)
        colour = "red" if used >= 1 else "yellow" if used >= Decimal("0.8") else "green"
        values = []
        for name in shown:
            value = cells[name][i]
            if name == "used":
                value = f"[{colour}]{value}[/{colour}]"
            values.append(value)
        table.add_row(*values)
    return table


def _amount(row: BudgetStatus, value: Decimal | None) -> str:
    """Dollars for a USD row; a whole count (``1,998,000``) for a token or call row."""
    if row.unit == "usd":
        return fmt_usd(value)
    return "-" if value is None else f"{int(value):,}"


def _pct(row: BudgetStatus) -> str:
    return f"{(_used(row) * 100).quantize(Decimal('1'))}%"


def _json(rows: list[BudgetStatus], models: list[list[dict[str, Any]]] | None = None) -> str:
    def row(i: int, r: BudgetStatus) -> dict[str, Any]:
        if r.unit == "usd":
            amounts: dict[str, Any] = {
                "limit_usd": None if r.limit is None else str(r.limit), "spent_usd": str(r.spent),
                "reserved_usd": str(r.reserved),
                "remaining_usd": None if r.remaining is None else str(r.remaining)}
        else:  # a token or call limit: whole counts, named by its unit
            amounts = {"unit": r.unit, "limit": None if r.limit is None else int(r.limit),
                       "spent": int(r.spent), "reserved": int(r.reserved),
                       "remaining": None if r.remaining is None else int(r.remaining)}
        return {"scope": r.scope, "window": r.window, "period": r.period, **amounts,
                "used_pct": str((_used(r) * 100).quantize(Decimal("0.1"))),
                "resets_at": r.resets_at.isoformat(),
                **({} if models is None else {"models": models[i]})}

    return json.dumps([row(i, r) for i, r in enumerate(rows)], indent=2)


def _row_models(guard: Guard, rows: list[BudgetStatus],
                now: float) -> tuple[list[list[dict[str, Any]]], list[Any]]:
    """Per status row, the models its calls used in the window and which price
    source priced each under what name; and every such model once.

    Read from the hourly rollups of the longest window shown (cost: roles x
    models x hours). A ledger that cannot answer leaves the lists empty.
    """
    from crew_budget.errors import LedgerUnavailable
    from crew_budget.pricing import names_cache_path
    from crew_budget.report import price_sources, scope_models
    from crew_budget.windows import get_tz, span

    tz = get_tz(guard.config.timezone)
    spans = {r.window: span(r.window, now, tz) for r in rows}
    if not spans:
        return [], []
    try:
        rollups = guard.ledger.rollups(since=min(s.starts_at for s in spans.values()),
                                       until=max(s.ends_at for s in spans.values()))
    except LedgerUnavailable:
        return [[] for _ in rows], []
    used = [scope_models(r.scope, rollups, spans[r.window].starts_at, spans[r.window].ends_at)
            for r in rows]
    sources = price_sources((m for names in used for m in names), guard.prices,
                            cache=names_cache_path())
    per_row = [[{"model": m, "price_source": sources[m].label,
                 "priced_as": sources[m].priced_as} for m in names if m in sources]
               for names in used]
    return per_row, list(sources.values())


def status(
    config: ConfigOption = None,
    ledger: LedgerOption = None,
    role: RoleOption = None,
    format: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
) -> None:
    """Every budget: limit, spent, reserved, remaining, a bar, and when it resets."""
    if format not in ("table", "json"):
        raise typer.BadParameter("use table or json", param_hint="--format")
    guard, source = open_guard("status", config, ledger)
    rows = _rows(guard, role, "status", source)
    now = guard.ledger.now()
    per_row, priced = _row_models(guard, rows, now)
    if format == "json":
        typer.echo(_json(rows, per_row))
        return
    title = f"crew-budget status - {ledger_name(guard)} - {_stamp(now, guard)}"
    out = console()
    out.print(status_table(rows, now, title, out.width))
    live = _overrides_table(guard, role)
    if live is not None:
        out.print(live)
    if priced:
        from crew_budget.report import render_price_sources

        out.print(render_price_sources(priced, title="models in these windows, and what "
                                       "priced them"))
    shadow = _shadow_today(guard, role, now)
    if shadow is not None:
        out.print(shadow)
    margins = _margins_table(guard)
    if margins is not None:
        out.print(margins)


def _shadow_today(guard: Guard, role: str | None, now: float) -> str | None:
    """Today's shadow-blocked calls (``mode: shadow`` / ``on_exceed: shadow``), from
    the hourly rollups of the local day; None when there are none."""
    from crew_budget.errors import LedgerUnavailable
    from crew_budget.report import shadow_summary
    from crew_budget.windows import get_tz, span

    start = span("day", now, get_tz(guard.config.timezone)).starts_at
    try:
        rollups = guard.ledger.rollups(since=start, until=now + 1)
    except LedgerUnavailable:
        return None
    if role is not None:
        name = guard.config.match_role(role) or role
        rollups = [r for r in rollups if r.role == name]
    summary = shadow_summary(rollups)
    return f"today: {summary.text()}" if summary.calls else None


def _margins_table(guard: Guard) -> Any:
    """Per model family: the estimate margin reserved above the estimate, and
    the settled calls it was learned from (``crew_budget.margin``); or None."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    views = guard.margins.views()
    if not views:
        return None
    cfg = guard.config.estimate_margin

    def pct(value: Decimal) -> str:
        return f"{(value * 100).normalize():f}"

    about = (f"estimate margins: p{pct(cfg.quantile)} of prompt under-estimation per model "
             f"family, capped at {pct(cfg.max)} %, used from {cfg.min_samples} settles")
    if not cfg.enabled:
        about += "; off (estimate_margin: {enabled: false})"
    table = Table()
    table.add_column("family", overflow="fold")
    table.add_column("margin in use", justify="right", no_wrap=True)
    table.add_column("learned", justify="right", no_wrap=True)
    table.add_column("samples", justify="right", no_wrap=True)
    for v in views:
        used = f"{float(v.margin) * 100:.1f} %" if v.active else "- (learning)"
        learned = f"{float(v.learned) * 100:.1f} %" + (" (capped)" if v.capped else "")
        table.add_row(v.family, used, learned, str(v.samples))
    return Group(Text(about), table)


def _overrides_table(guard: Guard, role: str | None) -> Any:
    """The live limits in force (crew-budget set/pause), who set them and why; or None."""
    from rich.table import Table

    from crew_budget.cli.limits import describe

    shown = [o for o in guard.overrides()
             if role is None or o.role == guard.config.match_role(role)]
    if not shown:
        return None
    table = Table(title="live limits (crew-budget set/pause; the YAML is the baseline)",
                  title_justify="left")
    for name in ("role", "override", "set by", "at", "until", "reason"):
        table.add_column(name, overflow="fold")
    for o in shown:
        table.add_row(o.role, describe(o), o.who, _utc(o.set_at),
                      "-" if o.until is None else _utc(o.until), o.reason or "-")
    return table


def _utc(ts: float) -> str:
    from datetime import timezone

    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _stamp(now: float, guard: Guard) -> str:
    from crew_budget.windows import get_tz

    return datetime.fromtimestamp(now, get_tz(guard.config.timezone)).strftime(
        "%Y-%m-%d %H:%M:%S %Z")


def _recent_table(guard: Guard, now: float, limit: int = 10) -> Any:
    from rich.table import Table

    from crew_budget.money import from_nano
    from crew_budget.windows import get_tz

    tz = get_tz(guard.config.timezone)
    # The last hour first: a busy ledger has its latest calls there, and a
    # day of raw records can be a million of them.
    records = [r for r in guard.ledger.records(since=now - 3600) if r.outcome != "reset"]
    if len(records) < limit:
        records = [r for r in guard.ledger.records(since=now - 86400) if r.outcome != "reset"]
    shown = records[-limit:][::-1]
    costs = [fmt_usd(from_nano(r.cost_nano)) for r in shown]
    title = f"latest {limit} calls (24h)"
    if guard.ledger.records_retention_days == 0:
        title += " - none shown: this ledger keeps no raw records (records_retention_days: 0)"
    table = Table(title=title, title_justify="left")
    table.add_column("time", no_wrap=True)
    for name in ("role", "model", "outcome"):
        table.add_column(name, overflow="fold")
    money_column(table, "cost", costs)
    for r, cost in zip(shown, costs, strict=True):
        table.add_row(datetime.fromtimestamp(r.ts, tz).strftime("%H:%M:%S"), r.role, r.model,
                      r.outcome, cost)
    return table


def watch(
    config: ConfigOption = None,
    ledger: LedgerOption = None,
    role: RoleOption = None,
    interval: Annotated[float, typer.Option("--interval", "-n", min=0.1,
                                            help="Seconds between refreshes.")] = 2.0,
    iterations: Annotated[int | None, typer.Option(
        "--iterations", hidden=True, help="Stop after N refreshes (for tests).")] = None,
) -> None:
    """Live view: the status table and the latest calls, refreshed until Ctrl-C."""
    from rich.console import Group
    from rich.live import Live

    from crew_budget.errors import LedgerUnavailable

    guard, source = open_guard("watch", config, ledger)
    out = console()

    def frame() -> Any:
        now = guard.ledger.now()
        rows = _rows(guard, role, "watch", source)
        title = f"crew-budget watch - {ledger_name(guard)} - {_stamp(now, guard)}"
        return Group(status_table(rows, now, title, out.width), _recent_table(guard, now))

    stop = threading.Event()

    def _terminate(*_: Any) -> None:
        stop.set()

    # A supervisor (or `timeout`) stops watch with SIGTERM: exit 0 like
    # Ctrl-C, and let Live print its last frame, which is all a pipe ever sees.
    previous = signal.signal(signal.SIGTERM, _terminate)
    if not out.is_terminal:  # a pipe sees only the last frame; say that it is running
        typer.echo(f"crew-budget watch: refreshing every {interval:g}s; the last frame is "
                   "printed when stopped (Ctrl-C or SIGTERM)", err=True)
    count = 0
    try:
        with Live(frame(), console=out, auto_refresh=False,
                  transient=False) as live:
            try:
                while (iterations is None or count < iterations - 1) and not stop.wait(
                        interval):
                    try:
                        live.update(frame(), refresh=True)
                    except LedgerUnavailable as exc:  # keep watching; say so on screen
                        live.update(f"[red]ledger unreachable: {exc.reason}; retrying...[/red]",
                                    refresh=True)
                    count += 1
            except KeyboardInterrupt:
                pass
    finally:
        signal.signal(signal.SIGTERM, previous)
