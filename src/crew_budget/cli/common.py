"""Shared plumbing of the ledger-reading commands: options, errors, time spans.

Every command takes ``--config`` and ``--ledger`` and fails the same way:
one line on stderr naming the problem and the fix, and an exit code scripts
can branch on:

====  =========================================================
 0    success
 1    nothing to show (no spend records in the window, no budgets)
 2    usage or configuration error (bad option or input, bad YAML, unknown
      key, bad ledger URL, unknown role)
 3    the ledger cannot be reached or opened, or does not exist
====  =========================================================

No command but ``demo`` creates a ledger: a ``--ledger`` path with no
ledger behind it is exit 3 naming the path, not a fresh empty ledger that
reports $0.00. The budget file is found in one order, shared with the
library and the LiteLLM proxy: ``--config``, then ``$CREW_BUDGET_CONFIG``,
then ``./budgets.yaml`` (``crew_budget.config.find_config``). Nothing
printed holds a secret: ledger URLs, other libraries' messages and config
errors pass through ``crew_budget.redact``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console

    from crew_budget.config import BudgetConfig
    from crew_budget.guard import Guard
    from crew_budget.ledger import Ledger
    from crew_budget.pricing import PriceBook

__all__ = [
    "EXIT_CONFIG",
    "EXIT_EMPTY",
    "EXIT_LEDGER",
    "Books",
    "ConfigOption",
    "LedgerOption",
    "Span",
    "bar",
    "console",
    "fail",
    "fit_columns",
    "fmt_usd",
    "ledger_name",
    "load_cli_config",
    "money_column",
    "open_books",
    "open_guard",
    "parse_span",
]

EXIT_EMPTY, EXIT_CONFIG, EXIT_LEDGER = 1, 2, 3

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", dir_okay=False, metavar="PATH",
        help="Budget YAML. Default: $CREW_BUDGET_CONFIG, else ./budgets.yaml if present, "
             "else no budgets.",
    ),
]
LedgerOption = Annotated[
    str | None,
    typer.Option(
        "--ledger", "-l", metavar="URL",
        help="Ledger URL (memory://, sqlite:///path.db, redis://host:6379/0). Default: "
             "$CREW_BUDGET_LEDGER, else the config's ledger:, else the embedded SQLite file.",
    ),
]


def fail(command: str, message: str, code: int) -> NoReturn:
    """One line on stderr, then exit with ``code``.

    The message is redacted here, the last stop before the terminal: it often
    quotes a ledger URL or another library's exception, either of which may
    hold a password.
    """
    from crew_budget.redact import redact_text

    typer.echo(f"crew-budget {command}: error: {redact_text(' '.join(message.split()))}",
               err=True)
    raise typer.Exit(code)


def config_path(path: Path | None) -> Path | None:
    """``--config``, else ``$CREW_BUDGET_CONFIG``, else ``./budgets.yaml`` if present.

    The one lookup order of ``crew_budget.config.find_config``, shared with the
    library and the LiteLLM proxy, so the CLI shows the limits they enforce.
    """
    from crew_budget.config import find_config

    return find_config(path)


def load_cli_config(command: str, path: Path | None) -> tuple[BudgetConfig, str]:
    """The configuration and a name for it (for messages), or exit 2."""
    from crew_budget.config import BudgetConfig, load_config
    from crew_budget.errors import ConfigError

    resolved = config_path(path)
    if resolved is None:
        return BudgetConfig(), "the empty default config (no budgets.yaml found)"
    try:
        return load_config(resolved), str(resolved)
    except ConfigError as exc:
        fail(command, str(exc), EXIT_CONFIG)


class Books:
    """What a command that only reads the books needs of a guard: the
    configuration, the ledger and the price book (made on first use).

    ``report`` runs on this instead of a ``Guard``: building one imports the
    estimator, the journal and the guard itself (~60 ms of a report's
    start-up) for nothing a report reads.
    """

    def __init__(self, config: BudgetConfig, ledger: Ledger) -> None:
        self.config, self.ledger = config, ledger
        self._prices: PriceBook | None = None

    @property
    def prices(self) -> PriceBook:
        """``PriceBook(config.prices)``: the prices a guard on this config uses."""
        if self._prices is None:
            from crew_budget.pricing import PriceBook

            self._prices = PriceBook(self.config.prices)
        return self._prices


def open_books(
    command: str, config: Path | None, ledger: str | None
) -> tuple[Books, str]:
    """``open_guard`` without the guard: the same lookups, checks, messages and exit
    codes, for commands that only read the ledger."""
    return _open(command, config, ledger, Books, create=False)


def open_guard(
    command: str, config: Path | None, ledger: str | None, *, create: bool = False
) -> tuple[Guard, str]:
    """A guard on the chosen ledger, checked reachable (exit 2 or 3 otherwise).

    ``create=False`` (the default; status, watch, report, metrics and reset
    all use it): a SQLite ledger that does not exist is exit 3 naming the
    path, and nothing is created on disk: a typo in ``--ledger`` must not
    look like a ledger with $0.00 spent. The
    alert manager is not started: reading the books must not send alerts.
    URLs in messages are redacted (no password).
    """
    def make(cfg: BudgetConfig, opened: Ledger) -> Guard:
        from crew_budget.guard import Guard

        return Guard(cfg, opened, start_alerts=False)

    return _open(command, config, ledger, make, create=create)


_T = TypeVar("_T", "Guard", Books)


def _open(
    command: str, config: Path | None, ledger: str | None,
    make: Callable[[BudgetConfig, Ledger], _T], *, create: bool
) -> tuple[_T, str]:
    """The chosen config and ledger, checked reachable, as ``make(config, ledger)``."""
    from crew_budget.config import check_ledger_url
    from crew_budget.errors import (
        ConfigError,
        CrewBudgetError,
        LedgerNotFound,
        LedgerUnavailable,
    )
    from crew_budget.ledger import open_ledger
    from crew_budget.redact import redact_url

    cfg, source = load_cli_config(command, config)
    try:
        if ledger is not None:
            check_ledger_url(ledger)
        url = ledger or cfg.ledger_url()
    except (ValueError, ConfigError) as exc:
        fail(command, str(exc) if ledger is not None else f"CREW_BUDGET_LEDGER: {exc}",
             EXIT_CONFIG)
    shown = redact_url(url)
    if ledger is not None:
        origin = "--ledger"
    elif os.environ.get("CREW_BUDGET_LEDGER"):
        origin = "CREW_BUDGET_LEDGER"
    elif cfg.ledger:
        origin = f"ledger: in {source}"
    else:
        origin = "the default ledger (set --ledger or CREW_BUDGET_LEDGER)"
    try:
        opened = open_ledger(url, namespace=cfg.namespace, retention_days=cfg.retention_days,
                             records_retention_days=cfg.records_retention_days, create=create)
        made = make(cfg, opened)
        # One cheap read (is it there, is it ours?), bounded on both sides: with
        # `since` alone SQLite walks the records table in commit order (5.7 s at
        # 10M records, bench/README.md); with both it seeks the ts index.
        opened.records(since=4e9, until=4e9 + 1)
    except LedgerNotFound as exc:
        fail(command, f"no ledger at {exc.path}: check {origin}, or run a guarded call "
             "first to create it", EXIT_LEDGER)
    except LedgerUnavailable as exc:
        fail(command, f"ledger {shown} is unreachable ({exc.reason}); start it or pass the "
             "right --ledger URL (or set CREW_BUDGET_LEDGER)", EXIT_LEDGER)
    except ModuleNotFoundError as exc:
        fail(command, f"ledger {shown} needs the {exc.name!r} package; install "
             "'crew-budget[redis]'", EXIT_LEDGER)
    except OSError as exc:
        fail(command, f"ledger {shown} cannot be opened ({exc}); check the path and its "
             "permissions, or pass another --ledger URL", EXIT_LEDGER)
    except ConfigError as exc:
        fail(command, str(exc), EXIT_CONFIG)
    except CrewBudgetError as exc:
        fail(command, f"ledger {shown}: {exc}", EXIT_LEDGER)
    except (TypeError, ValueError) as exc:  # redis-py: an option it does not know (?foo=1)
        fail(command, f"ledger URL {shown!r} was refused by its client ({exc}); check the "
             f"options after '?' in {origin}", EXIT_CONFIG)
    return made, source


def ledger_name(guard: Guard | Books) -> str:
    """The guard's ledger URL as it may be shown: without its password."""
    from crew_budget.redact import redact_url

    return redact_url(guard.ledger.url)


@dataclass(frozen=True, slots=True)
class Span:
    """A reporting window ``[since, until)`` and how to name it in messages."""

    since: float
    until: float
    label: str


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|min|h|d|w)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_span(since: str, until: str | None, now: float, tz: tzinfo) -> Span:
    """``7d``, ``24h``, ``30m``, ``2w``, ``today``, ``yesterday`` or an ISO date/time."""
    from crew_budget.windows import span

    today = span("day", now, tz).starts_at  # local midnight, DST-aware
    end = now if until is None else _instant(until, tz, "--until")
    text = since.strip().lower()
    if text == "today":
        return Span(today, end, "today")
    if text == "yesterday":
        start = span("day", today - 1, tz).starts_at
        return Span(start, end if until is not None else today, "yesterday")
    match = _DURATION.match(text)
    if match:
        amount = float(match.group(1))
        seconds = amount * _UNIT_SECONDS[match.group(2).lower()]
        return Span(end - seconds, end, f"the last {since.strip()}")
    start_ts = _instant(since, tz, "--since")
    return Span(start_ts, end, f"since {since.strip()}")


def _instant(text: str, tz: tzinfo, option: str) -> float:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a time; use a duration (30m, 24h, 7d, 2w), today, yesterday "
            "or an ISO date such as 2026-11-24 or 2026-11-24T09:00",
            param_hint=option,
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.timestamp()


_CENT = Decimal("0.01")


def fmt_usd(amount: Decimal | None) -> str:
    """The CLI's one money format: ``$1,234.56`` (cents) at a dollar and above,
    four significant digits below (``$0.9603``, ``$0.0000612``), ``$0.00`` for
    zero, ``-`` for no value.

    Every command prints money through here, so one column never mixes
    ``$1.74`` with ``$0.9603`` styles by accident. Rounding is for display
    only (``ROUND_HALF_EVEN`` on a ``Decimal``); JSON and CSV carry the
    exact amounts.
    """
    if amount is None:
        return "-"
    if amount == 0:
        return "$0.00"
    sign = "-" if amount < 0 else ""
    a = abs(amount)
    if a.quantize(_CENT) >= 1:
        return f"{sign}${a.quantize(_CENT):,}"
    # Four significant digits: the exponent of the 4th digit is adjusted() - 3.
    rounded = a.quantize(Decimal(1).scaleb(a.adjusted() - 3))
    if rounded >= 1:  # 0.99996 rounds up to a dollar
        return f"{sign}${rounded.quantize(_CENT):,}"
    text = f"{rounded.normalize():f}"
    decimals = len(text.partition(".")[2])
    if decimals < 2:
        text = f"{rounded.quantize(_CENT):f}"
    return f"{sign}${text}"


def fit_columns(columns: dict[str, list[str]], width: int, drop_order: list[str]) -> list[str]:
    """The column names to show in ``width`` terminal columns.

    Each column needs its widest cell (header included) plus rich's padding
    and border (3 characters). Optional columns are dropped in
    ``drop_order`` until the table fits; what remains is never squeezed, so
    a role name, an hour or an amount is never cut into pieces.
    """
    need = {name: max(len(name), *(len(v) for v in values)) + 3
            for name, values in columns.items()}
    shown = list(columns)
    for name in drop_order:
        if sum(need[n] for n in shown) + 1 <= width:
            break
        shown.remove(name)
    return shown


def money_column(table: Any, name: str, values: list[str], **kwargs: Any) -> None:
    """Add a right-aligned column that a narrow terminal may not cut.

    rich shrinks the widest columns first and cuts them with an ellipsis;
    a ``$1…`` is worse than a wrapped title, so a money column is as wide
    as its longest amount, always.
    """
    width = max([len(name), *(len(v) for v in values)])
    table.add_column(name, justify="right", no_wrap=True, min_width=width, **kwargs)


def bar(fraction: Decimal, width: int = 10) -> str:
    """``████████░░░░`` for 0..1 (clipped), in plain text so it survives pipes."""
    f = min(max(fraction, Decimal(0)), Decimal(1))
    full = int((f * width).to_integral_value(rounding="ROUND_FLOOR"))
    return "█" * full + "░" * (width - full)


def console(stderr: bool = False) -> Console:
    """A rich console for tables.

    Piped output (CI logs, ``| less``) is at least 120 columns wide so tables
    are not cut, unless ``$COLUMNS`` says otherwise: a width the user set is
    honoured, and money columns never shrink (see ``money_column``).
    """
    from rich.console import Console

    out = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not out.is_terminal and out.width < 120 and not os.environ.get("COLUMNS"):
        out.width = 120
    return out
