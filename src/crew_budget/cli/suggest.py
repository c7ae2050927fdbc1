"""``crew-budget suggest``: a budget YAML from what each role has spent.

Reads the ledger's hourly rollups of the period (``--since 30d``): cost
grows with roles x models x hours, not with calls, and rollups are kept 400
days whatever the raw records' retention. Prints, per role, per crew and
for everything, a ``daily`` limit (p95 day x ``--headroom``, rounded up)
and an ``hourly`` one (peak hour x headroom, when below daily), each with
the p95, the peak day, the blocked calls and the days of data it rests
on; ``crew_budget.suggest`` explains the arithmetic. ``--format json``
for scripts.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated

import typer

from crew_budget.cli.common import (
    EXIT_CONFIG,
    EXIT_EMPTY,
    EXIT_LEDGER,
    ConfigOption,
    LedgerOption,
    fail,
    ledger_name,
    open_guard,
    parse_span,
)

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``suggest`` to the ``crew-budget`` app."""
    app.command("suggest")(suggest)


def suggest(
    config: ConfigOption = None,
    ledger: LedgerOption = None,
    since: Annotated[str, typer.Option(
        "--since", "-s", help="History to read: 30d, 2w, 7d, or an ISO date/time.")] = "30d",
    until: Annotated[str | None, typer.Option(
        "--until", help="End (exclusive), ISO date/time. Default: now.")] = None,
    headroom: Annotated[str, typer.Option(
        "--headroom", help="Multiply the p95 day and the peak hour by this (1 to 100).")
    ] = "1.25",
    format: Annotated[str, typer.Option(
        "--format", "-f", help="yaml (ready to paste) or json.")] = "yaml",
) -> None:
    """Suggest per-role budgets from history: p95 daily spend x headroom, ready to paste."""
    from crew_budget.errors import LedgerUnavailable
    from crew_budget.suggest import suggest as build
    from crew_budget.windows import get_tz

    if format not in ("yaml", "json"):
        raise typer.BadParameter("use yaml or json", param_hint="--format")
    try:
        factor = Decimal(headroom.strip())
    except InvalidOperation:
        factor = Decimal("NaN")
    if not factor.is_finite() or not Decimal(1) <= factor <= Decimal(100):
        raise typer.BadParameter(f"{headroom!r} is not a number from 1 to 100 (1.25 = 25% "
                                 "above the p95 day)", param_hint="--headroom")
    guard, _source = open_guard("suggest", config, ledger)
    tz = get_tz(guard.config.timezone)
    span = parse_span(since, until, guard.ledger.now(), tz)
    if span.until <= span.since:
        fail("suggest", f"the window {span.label} is empty (--until is not after --since)",
             EXIT_CONFIG)
    try:
        rollups = guard.ledger.rollups(since=span.since, until=span.until)
    except LedgerUnavailable as exc:
        fail("suggest", f"ledger {ledger_name(guard)} is unreachable ({exc.reason})",
             EXIT_LEDGER)
    if not any(r.calls or r.blocked for r in rollups):
        fail("suggest", f"no calls in {span.label} in ledger {ledger_name(guard)}: nothing to "
             "suggest from; widen --since, or check --ledger points at the ledger your "
             "agents use", EXIT_EMPTY)
    result = build(rollups, since=span.since, until=span.until, tz=tz, headroom=factor)
    if format == "json":
        import json

        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(result.to_yaml(), nl=False)
