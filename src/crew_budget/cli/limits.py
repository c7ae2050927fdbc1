"""``crew-budget set``, ``pause`` and ``resume``: change a role's limits live.

The YAML stays the baseline. These commands write *overrides* into the
ledger (``Guard.set_limits``, ``pause``, ``resume``), with who ran them
(user@host), when, why and until when; every process guarding calls on
that ledger applies them on its next call, without a restart (each
reserve carries the overrides version its limits were built with, and the
ledger refuses a stale one before writing anything). Each change is also
an ``override`` spend record, so ``report`` and ``export`` show it. Only an
operator's command (or the same API) writes overrides, never an LLM
request (invariant 8).

Exit codes as the other commands: 2 for a bad option, role or amount, 3 when
the ledger cannot be reached.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated

import typer

from crew_budget.cli.common import (
    EXIT_CONFIG,
    EXIT_LEDGER,
    ConfigOption,
    LedgerOption,
    fail,
    fmt_usd,
    ledger_name,
    open_guard,
)

if TYPE_CHECKING:
    from crew_budget.guard import Guard
    from crew_budget.ledger import Override

__all__ = ["describe", "parse_until", "register"]


def register(app: typer.Typer) -> None:
    """Add ``set``, ``pause`` and ``resume`` to the ``crew-budget`` app."""
    app.command("set")(set_limits)
    app.command("pause")(pause)
    app.command("resume")(resume)


RoleArg = Annotated[str, typer.Option("--role", "-r", metavar="ROLE",
                                      help="The role (as in roles: of the YAML).")]
UntilOption = Annotated[str | None, typer.Option(
    "--until", metavar="TIME",
    help="When the override ends: a duration from now (30m, 2h, 1d, 1w) or an ISO time "
         "(2026-12-01T18:00, in the config's timezone unless it says). Default: until changed.")]
ReasonOption = Annotated[str, typer.Option(
    "--reason", metavar="TEXT", help="Why (kept in the ledger with who and when).")]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|min|h|d|w)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_until(text: str, now: float, tz: object) -> float:
    """``--until``: a duration from ``now`` or an ISO date/time; Unix seconds."""
    match = _DURATION.match(text)
    if match:
        return now + float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a time; use a duration (30m, 2h, 1d, 1w) or an ISO time such "
            "as 2026-12-01T18:00", param_hint="--until") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)  # type: ignore[arg-type]
    return value.timestamp()


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(o: Override) -> str:
    """One override as people read it: ``daily $10.00`` or ``paused``."""
    from crew_budget.money import from_nano

    if o.kind == "paused" or o.limit_nano is None:
        return "paused"
    return f"{o.kind} {fmt_usd(from_nano(o.limit_nano))}"


def _guard(command: str, config: ConfigOption, ledger: LedgerOption) -> Guard:
    guard, _source = open_guard(command, config, ledger)
    return guard


def _apply(command: str, guard: Guard, action: Callable[[], object]) -> None:
    """Run one write, turning our errors into the CLI's exit codes."""
    from crew_budget.errors import ConfigError, LedgerError, LedgerUnavailable, UnknownRoleError

    try:
        action()
    except (ConfigError, UnknownRoleError) as exc:
        fail(command, str(exc), EXIT_CONFIG)
    except LedgerUnavailable as exc:
        fail(command, f"ledger {ledger_name(guard)} is unreachable ({exc.reason}); nothing "
             "was changed", EXIT_LEDGER)
    except LedgerError as exc:
        fail(command, str(exc), EXIT_LEDGER)


def _report(guard: Guard, role: str, what: str) -> None:
    mine = [o for o in guard.overrides() if o.role == role]
    typer.echo(f"{what} on ledger {ledger_name(guard)}; every process applies it on its "
               "next call.")
    for o in mine:
        until = f", until {_when(o.until)}" if o.until is not None else ""
        why = f": {o.reason}" if o.reason else ""
        typer.echo(f"  role {o.role}: {describe(o)} (by {o.who} at {_when(o.set_at)}{until})"
                   f"{why}")
    if not mine:
        typer.echo(f"  role {role}: no live limits; the YAML's apply")


def _role(command: str, guard: Guard, role: str) -> str:
    from crew_budget.errors import ConfigError, UnknownRoleError

    try:
        return guard.live_role(role)
    except (ConfigError, UnknownRoleError) as exc:
        fail(command, str(exc), EXIT_CONFIG)


def _until(guard: Guard, until: str | None) -> float | None:
    from crew_budget.windows import get_tz

    if until is None:
        return None
    return parse_until(until, guard.ledger.now(), get_tz(guard.config.timezone))


def set_limits(
    role: RoleArg,
    hourly: Annotated[str | None, typer.Option("--hourly", metavar="USD",
                                               help="USD per hour.")] = None,
    daily: Annotated[str | None, typer.Option("--daily", metavar="USD",
                                               help="USD per day.")] = None,
    monthly: Annotated[str | None, typer.Option("--monthly", metavar="USD",
                                               help="USD per month.")] = None,
    until: UntilOption = None,
    reason: ReasonOption = "",
    clear: Annotated[bool, typer.Option(
        "--clear", help="Drop the role's live limits: the YAML's apply again.")] = False,
    config: ConfigOption = None,
    ledger: LedgerOption = None,
) -> None:
    """Replace a role's hourly/daily/monthly limit live (looser or tighter than the YAML)."""
    guard = _guard("set", config, ledger)
    name = _role("set", guard, role)
    if clear:
        if hourly or daily or monthly or until:
            fail("set", "--clear takes no limits or --until; run it alone", EXIT_CONFIG)
        _apply("set", guard, lambda: guard.clear_limits(name, reason=reason))
        _report(guard, name, f"cleared the live limits of role {name}")
        return
    if hourly is None and daily is None and monthly is None:
        fail("set", "give at least one of --hourly, --daily, --monthly (USD), or --clear",
             EXIT_CONFIG)
    end = _until(guard, until)
    _apply("set", guard, lambda: guard.set_limits(
        name, hourly_usd=hourly, daily_usd=daily, monthly_usd=monthly, until=end,
        reason=reason))
    _report(guard, name, f"set live limits of role {name}")


def pause(
    role: RoleArg,
    until: UntilOption = None,
    reason: ReasonOption = "",
    config: ConfigOption = None,
    ledger: LedgerOption = None,
) -> None:
    """Refuse every call of a role, in every process, until `resume` (or --until)."""
    guard = _guard("pause", config, ledger)
    name = _role("pause", guard, role)
    end = _until(guard, until)
    _apply("pause", guard, lambda: guard.pause(name, until=end, reason=reason))
    _report(guard, name, f"paused role {name}")


def resume(
    role: RoleArg,
    reason: ReasonOption = "",
    config: ConfigOption = None,
    ledger: LedgerOption = None,
) -> None:
    """Lift a pause: the role's calls run again from their next try."""
    guard = _guard("resume", config, ledger)
    name = _role("resume", guard, role)
    _apply("resume", guard, lambda: guard.resume(name, reason=reason))
    _report(guard, name, f"resumed role {name}")
