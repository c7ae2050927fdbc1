"""``crew-budget report``: who spent what, on which model, when.

Reads the ledger's hourly rollups for a window (``--since 7d``, ``today``,
``yesterday``, an ISO date) and groups them (``--by role,model,hour``): the
cost grows with roles x models x hours, not with calls, and a window
selects the whole hours it overlaps. Grouping by ``outcome``, ``run`` or
``task`` needs the raw spend records instead, which the ledger keeps only
``records_retention_days`` (7 by default on Redis): the report says so.
Output: a table (default), ``--format csv|json`` for scripts, and/or
``--html report.html``, a self-contained page with charts.

``--what-if gpt-4o=gpt-4o-mini`` (repeatable) also re-prices the span's
calls to a model at a substitute's prices (``crew_budget.whatif``: the
rollups' tokens through the settle's own pricing code) and shows the
saving per role and model: a second table, or ``what_if`` in the JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

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
    open_books,
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
    what_if: Annotated[list[str] | None, typer.Option(
        "--what-if", metavar="MODEL=SUBSTITUTE",
        help="Re-price calls to MODEL at SUBSTITUTE's prices and show the saving per role "
        "and model (repeatable), e.g. --what-if gpt-4o=gpt-4o-mini.")] = None,
) -> None:
    """Spend by role, model, hour, ...: table, CSV, JSON and an HTML page with charts."""
    from crew_budget.errors import LedgerUnavailable
    from crew_budget.ledger.base import Rollup, RollupTable, SpendRecord
    from crew_budget.pricing import names_cache_path
    from crew_budget.report import (
        build_report,
        needs_records,
        parse_by,
        price_sources,
        render_price_sources,
        render_table,
    )
    from crew_budget.windows import get_tz

    if format not in ("table", "csv", "json"):
        raise typer.BadParameter("use table, csv or json", param_hint="--format")
    if sort not in ("cost", "key"):
        raise typer.BadParameter("use cost or key", param_hint="--sort")
    try:
        keys = parse_by(by)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--by") from None
    substitutions = None
    if what_if:
        from crew_budget.errors import ConfigError
        from crew_budget.whatif import parse_substitutions

        if format == "csv":
            raise typer.BadParameter("--what-if prints a table or JSON; use --format table "
                                     "or json", param_hint="--format")
        try:
            substitutions = parse_substitutions(what_if)
        except ConfigError as exc:
            raise typer.BadParameter(exc.detail, param_hint="--what-if") from None
    # The books without a Guard: a report prices nothing and sends no alerts.
    guard, _source = open_books("report", config, ledger)
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
    table: RollupTable | None = None
    try:
        if record_keys:
            data = guard.ledger.records(since=span.since, until=span.until)
            resets: list[SpendRecord] = []
        elif html is None:
            # Rows, not a Rollup per group-hour: what the tables, CSV and JSON need.
            table = guard.ledger.rollup_table(since=span.since, until=span.until,
                                              per_hour="hour" in keys or "day" in keys)
            data = []
            resets = guard.ledger.resets(since=span.since, until=span.until)
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
    if table is not None and (role is not None or model is not None):
        table = _only(table, role, model)
    if not (data or (table is not None and table.rows)) and not resets:
        what = "".join(f" for {k} {v!r}" for k, v in (("role", role), ("model", model)) if v)
        fail("report", f"no spend records{what} in {span.label} in ledger {ledger_name(guard)}; "
             "widen --since, or check --ledger points at the ledger your agents use",
             EXIT_EMPTY)
    result = build_report(data if table is None else table, keys, since=span.since,
                          until=span.until, tz=tz, sort="cost" if sort == "cost" else "key",
                          resets=resets)
    models = ({r.model for r in data} if table is None
              else {table.groups[gid][2] for gid in {r[1] for r in table.rows}})
    result.prices = price_sources({m for m in models if m}, guard.prices,
                                  cache=names_cache_path())
    if record_keys:
        result.records_retention_days = kept
        how_long = "" if kept is None else f", which this ledger keeps {kept:g} days"
        typer.echo(f"crew-budget report: --by {','.join(record_keys)} reads raw spend records"
                   f"{how_long} (other keys read hourly rollups, kept 400 days)", err=True)
    from crew_budget.report import shadow_summary

    result.shadow = shadow_summary(data if table is None else table, since=span.since,
                                   until=span.until)
    whatif_result = None
    if substitutions is not None:
        whatif_result = _what_if(guard, substitutions, span.since, span.until, role, model)
        result.what_if = whatif_result.to_dict()
    if top is not None:
        result.rows = result.rows[:top]
    if html is not None:
        from crew_budget.report_html import render_html

        try:
            step: Literal["hour", "day"] | None = (
                "hour" if "hour" in keys else "day" if "day" in keys else None)
            page = render_html(data, since=span.since, until=span.until, tz=tz, step=step,
                               config=guard.config,
                               prices=result.prices)
            extra = ""
            if result.shadow.calls:
                from html import escape

                extra += (f'<p data-shadow="{result.shadow.calls}">'
                          f"{escape(result.shadow.text())}</p>")
            if whatif_result is not None:
                from crew_budget.whatif import to_html

                extra += to_html(whatif_result)
            end = page.rindex("</body>")
            page = page[:end] + extra + page[end:]
            html.write_text(page, encoding="utf-8")
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
        if result.prices:
            out.print(render_price_sources(result.prices.values(),
                                           title="models in this report, and what priced them"))
        if result.shadow.calls:
            out.print(result.shadow.text())
        if whatif_result is not None:
            _print_what_if(out, whatif_result, span.label)


def _only(table: Any, role: str | None, model: str | None) -> Any:
    """``table``'s rows of groups with that role and/or model (``--role``, ``--model``)."""
    from crew_budget.ledger.base import RollupTable

    groups = {gid: g for gid, g in table.groups.items()
              if (role is None or g[1] == role) and (model is None or g[2] == model)}
    return RollupTable(groups, [r for r in table.rows if r[1] in groups], table.per_hour)


def _what_if(guard: Any, substitutions: Any, since: float, until: float,
             role: str | None, model: str | None) -> Any:
    """The span re-priced per substitution, from rollups (whatever ``--by`` read)."""
    from crew_budget.errors import LedgerUnavailable, UnknownModelError
    from crew_budget.whatif import what_if

    try:
        rollups = guard.ledger.rollups(since=since, until=until)
    except LedgerUnavailable as exc:
        fail("report", f"ledger {ledger_name(guard)} is unreachable ({exc.reason})", EXIT_LEDGER)
    rollups = [r for r in rollups if (role is None or r.role == role)
               and (model is None or r.model == model)]
    try:
        return what_if(rollups, substitutions, guard.prices, since=since, until=until)
    except UnknownModelError as exc:
        fail("report", f"--what-if: {exc}", EXIT_CONFIG)


def _print_what_if(out: Any, result: Any, label: str) -> None:
    from crew_budget.whatif import render_table as render_what_if

    subs = ", ".join(str(s) for s in result.substitutions)
    if result.rows:
        out.print(render_what_if(result, title=f"what if {subs} - {label} (re-priced from "
                                 "the tokens of each role's calls)"))
    for s in result.unmatched:
        out.print(f"what if {s}: no calls to {s.original} in {label}")
