"""``crew-budget status`` and ``crew-budget watch``: every budget, right now.

``status`` prints every configured scope and window (role, crew, global x
hour, day, month) with its limit, spent, reserved and remaining dollars, a
progress bar and when the window resets. ``watch`` redraws that, plus the
latest calls, every ``--interval`` seconds until Ctrl-C.
"""

from __future__ import annotations

import json
import signal
import time
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
        rows = guard.status(role)
    except LedgerUnavailable as exc:
        fail(command, f"ledger {ledger_name(guard)} is unreachable ({exc.reason})", EXIT_LEDGER)
    if not rows:
        fail(command, f"no budgets configured in {source}; add limits under roles:, crew: or "
             "global: (see `crew-budget validate`)", EXIT_EMPTY)
    return rows


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


def status_table(rows: list[BudgetStatus], now: float, title: str | None = None) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    money = {name: [fmt_usd(getattr(r, name)) for r in rows]
             for name in ("limit", "spent", "reserved", "remaining")}
    table.add_column("scope", overflow="fold")
    table.add_column("window", no_wrap=True)
    table.add_column("period", overflow="fold")
    for name, values in money.items():
        money_column(table, name, values)
    table.add_column("used", no_wrap=True, min_width=15)
    table.add_column("resets", overflow="fold")
    for i, row in enumerate(rows):
        used = _used(row)
        colour = "red" if used >= 1 else "yellow" if used >= Decimal("0.8") else "green"
        pct = f"{(used * 100).quantize(Decimal('1'))}%"
        table.add_row(row.scope, row.window, row.period, *(v[i] for v in money.values()),
                      f"[{colour}]{bar(used)}[/{colour}] {pct:>4}", _resets_in(row, now))
    return table


def _json(rows: list[BudgetStatus]) -> str:
    return json.dumps([
        {"scope": r.scope, "window": r.window, "period": r.period,
         "limit_usd": None if r.limit is None else str(r.limit), "spent_usd": str(r.spent),
         "reserved_usd": str(r.reserved),
         "remaining_usd": None if r.remaining is None else str(r.remaining),
         "used_pct": str((_used(r) * 100).quantize(Decimal("0.1"))),
         "resets_at": r.resets_at.isoformat()}
        for r in rows
    ], indent=2)


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
    if format == "json":
        typer.echo(_json(rows))
        return
    now = guard.ledger.now()
    title = f"crew-budget status - {ledger_name(guard)} - {_stamp(now, guard)}"
    console().print(status_table(rows, now, title))


def _stamp(now: float, guard: Guard) -> str:
    from crew_budget.windows import get_tz

    return datetime.fromtimestamp(now, get_tz(guard.config.timezone)).strftime(
        "%Y-%m-%d %H:%M:%S %Z")


def _recent_table(guard: Guard, now: float, limit: int = 10) -> Any:
    from rich.table import Table

    from crew_budget.money import from_nano
    from crew_budget.windows import get_tz

    tz = get_tz(guard.config.timezone)
    records = [r for r in guard.ledger.records(since=now - 86400) if r.outcome != "reset"]
    shown = records[-limit:][::-1]
    costs = [fmt_usd(from_nano(r.cost_nano)) for r in shown]
    table = Table(title=f"latest {limit} calls (24h)", title_justify="left")
    table.add_column("time", no_wrap=True)
    for name in ("role", "model", "outcome"):
        table.add_column(name, overflow="fold")
    money_column(table, "cost", costs)
    for r, cost in zip(shown, costs, strict=True):
        table.add_row(datetime.fromtimestamp(r.ts, tz).strftime("%H:%M:%S"), r.role, r.model,
                      r.outcome, cost)
    return table


class _Stop(Exception):
    """SIGTERM arrived: leave the refresh loop and print the last frame."""


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
        return Group(status_table(rows, now, title), _recent_table(guard, now))

    def _terminate(*_: Any) -> None:
        raise _Stop

    # A supervisor (or `timeout`) stops watch with SIGTERM: exit 0 like
    # Ctrl-C, and let Live print its last frame, which is all a pipe ever sees.
    previous = signal.signal(signal.SIGTERM, _terminate)
    count = 0
    try:
        with Live(frame(), console=out, auto_refresh=False,
                  transient=False) as live:
            try:
                while iterations is None or count < iterations - 1:
                    time.sleep(interval)
                    try:
                        live.update(frame(), refresh=True)
                    except LedgerUnavailable as exc:  # keep watching; say so on screen
                        live.update(f"[red]ledger unreachable: {exc.reason}; retrying...[/red]",
                                    refresh=True)
                    count += 1
            except (KeyboardInterrupt, _Stop):
                pass
    finally:
        signal.signal(signal.SIGTERM, previous)
