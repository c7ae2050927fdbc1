"""``crew-budget report``: who spent what, on which model, when.

Reads the ledger's hourly rollups for a window (``--since 7d``, ``today``,
``yesterday``, an ISO date) and groups them (``--by role,model,hour``): the
cost grows with roles x models x hours, not with calls, and a window
selects the whole hours it overlaps. Grouping by ``outcome``, ``run`` or
``task`` needs the raw spend records instead, which the ledger keeps only
``records_retention_days`` (7 by default on Redis): the report says so.
Output: a table (default), ``--format csv|json`` for scripts, and/or
``--html report.html``, a self-contained page with charts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from crew_budget.cli.common import (
    EXIT_CONFIG,
    EXIT_EMPTY,
    EXIT_LEDGER,
    ConfigOption,
    LedgerOption,
    console,
    fail,
    ledger_name,
    open_guard,
    parse_span,
)

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``report`` to the ``crew-budget`` app."""
    app.command("report")(report)


def report(
    config: ConfigOption = None,
    ledger: LedgerOption = None,
    since: Annotated[str, typer.Option(
        "--since", "-s", help="Start: 30m, 24h, 7d, 2w, today, yesterday or an ISO date/time."
    )] = "7d",
    until: Annotated[str | None, typer.Option(
        "--until", help="End (exclusive), ISO date/time. Default: now.")] = None,
    by: Annotated[str, typer.Option(
        "--by", "-b", help="Group by a comma-separated list of role, model, crew, hour, day, "
        "outcome, scope, run, task.")] = "role,model",
    format: Annotated[str, typer.Option(
        "--format", "-f", help="table, csv or json (to stdout).")] = "table",
    html: Annotated[Path | None, typer.Option(
        "--html", dir_okay=False, help="Also write a self-contained HTML report here.")] = None,
    role: Annotated[str | None, typer.Option("--role", "-r", help="Only this role.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only this model.")] = None,
    top: Annotated[int | None, typer.Option("--top", min=1,
                                            help="Only the N costliest rows.")] = None,
    sort: Annotated[str, typer.Option("--sort", help="cost (largest first) or key.")] = "cost",
) -> None:
    """Spend by role, model, hour, ...: table, CSV, JSON and an HTML page with charts."""
    from crew_budget.errors import LedgerUnavailable
    from crew_budget.ledger.base import Rollup, SpendRecord
    from crew_budget.report import build_report, needs_records, parse_by, render_table
    from crew_budget.windows import get_tz

    if format not in ("table", "csv", "json"):
        raise typer.BadParameter("use table, csv or json", param_hint="--format")
    if sort not in ("cost", "key"):
        raise typer.BadParameter("use cost or key", param_hint="--sort")
    try:
        keys = parse_by(by)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--by") from None
    guard, _source = open_guard("report", config, ledger)
    tz = get_tz(guard.config.timezone)
    span = parse_span(since, until, guard.ledger.now(), tz)
    if span.until <= span.since:
        fail("report", f"the window {span.label} is empty (--until is not after --since)",
             EXIT_CONFIG)
    record_keys = needs_records(keys)
    kept = guard.ledger.records_retention_days
    if record_keys and kept == 0:
        fail("report", f"--by {','.join(record_keys)} needs raw spend records, and ledger "
             f"{ledger_name(guard)} keeps none (records_retention_days: 0); group by role, "
             "model, crew, scope, hour or day (hourly rollups), or set records_retention_days",
             EXIT_CONFIG)
    data: list[SpendRecord] | list[Rollup]
    try:
        if record_keys:
            data = guard.ledger.records(since=span.since, until=span.until)
            resets: list[SpendRecord] = []
        else:
            data = guard.ledger.rollups(since=span.since, until=span.until)
            resets = guard.ledger.resets(since=span.since, until=span.until)
    except LedgerUnavailable as exc:
        fail("report", f"ledger {ledger_name(guard)} is unreachable ({exc.reason})", EXIT_LEDGER)
    if role is not None:
        data = [r for r in data if r.role == role]  # type: ignore[assignment]
        resets = [r for r in resets if r.role == role]
    if model is not None:
        data = [r for r in data if r.model == model]  # type: ignore[assignment]
        resets = [r for r in resets if r.model == model]
    if not data and not resets:
        what = "".join(f" for {k} {v!r}" for k, v in (("role", role), ("model", model)) if v)
        fail("report", f"no spend records{what} in {span.label} in ledger {ledger_name(guard)}; "
             "widen --since, or check --ledger points at the ledger your agents use",
             EXIT_EMPTY)
    result = build_report(data, keys, since=span.since, until=span.until, tz=tz,
                          sort="cost" if sort == "cost" else "key", resets=resets)
    if record_keys:
        result.records_retention_days = kept
        how_long = "" if kept is None else f", which this ledger keeps {kept:g} days"
        typer.echo(f"crew-budget report: --by {','.join(record_keys)} reads raw spend records"
                   f"{how_long} (other keys read hourly rollups, kept 400 days)", err=True)
    if top is not None:
        result.rows = result.rows[:top]
    if html is not None:
        from crew_budget.report_html import render_html

        try:
            step: Literal["hour", "day"] | None = (
                "hour" if "hour" in keys else "day" if "day" in keys else None)
            html.write_text(render_html(data, since=span.since, until=span.until, tz=tz,
                                        step=step, config=guard.config), encoding="utf-8")
        except OSError as exc:
            fail("report", f"cannot write {html}: {exc.strerror}", EXIT_CONFIG)
        typer.echo(f"crew-budget report: wrote {html} ({result.records} spend records)",
                   err=True)
    if format == "csv":
        typer.echo(result.to_csv(), nl=False)
    elif format == "json":
        typer.echo(result.to_json())
    else:
        title = f"spend by {', '.join(keys)} - {span.label} - {ledger_name(guard)}"
        out = console()
        out.print(render_table(result, title=title, width=out.width))
