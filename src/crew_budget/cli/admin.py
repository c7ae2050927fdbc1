"""``crew-budget validate`` and ``crew-budget reset``.

``validate`` checks a budget file the way the library will load it and says
what it found (or the first mistake, with its key path and fix). A file that
budgets nothing (empty, or no limits at all) or that would refuse every call
(no roles, no ``default_role``) is a mistake too. ``--crew module:attr``
also checks a CrewAI crew: every agent's role must match a budget, the check
``BudgetCallback.attach`` makes before the first call. ``reset``
zeroes a role's (or the crew's, or the global) spend in the current window
after confirmation; the ledger records the reset, with who and why, so the
spend history keeps it (``crew-budget report --by outcome`` shows it).
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from crew_budget.cli.common import (
    EXIT_CONFIG,
    EXIT_EMPTY,
    EXIT_LEDGER,
    ConfigOption,
    LedgerOption,
    config_path,
    fail,
    fmt_usd,
    ledger_name,
    load_cli_config,
    open_guard,
)

if TYPE_CHECKING:
    from crew_budget.config import BudgetConfig

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``validate`` and ``reset`` to the ``crew-budget`` app."""
    app.command("validate")(validate)
    app.command("reset")(reset)


def validate(
    path: Annotated[Path | None, typer.Argument(
        dir_okay=False, show_default=False,
        help="Budget YAML (default: $CREW_BUDGET_CONFIG, else ./budgets.yaml).")] = None,
    crew: Annotated[str | None, typer.Option(
        "--crew", metavar="MODULE:ATTR",
        help="Also check a CrewAI crew (or a function returning one), e.g. myapp.crew:crew: "
             "every agent's role must match a budget.")] = None,
) -> None:
    """Check a budget YAML file and summarise it; exit 2 on the first mistake."""
    from crew_budget.errors import ConfigError
    from crew_budget.redact import redact_text, redact_url

    resolved = config_path(path)
    if resolved is None:
        fail("validate", "no budget file given, CREW_BUDGET_CONFIG is not set and there is "
             "no ./budgets.yaml; run "
             "`crew-budget validate path/to/budgets.yaml`", EXIT_CONFIG)
    cfg, source = load_cli_config("validate", resolved)
    if not cfg.has_limits():
        fail("validate", f"{source}: sets no budget at all (no roles:, default_role:, crew: "
             "or global:), so it would limit nothing; add at least one", EXIT_CONFIG)
    if not cfg.roles and cfg.default_role is None and cfg.unknown_roles == "refuse":
        fail("validate", f"{source}: lists no roles: and no default_role:, so every call "
             "would be refused as an unknown role; add roles:, a default_role:, or "
             "unknown_roles: allow to charge every call to the crew/global budgets only",
             EXIT_CONFIG)
    crew_lines = _check_crew(cfg, crew) if crew is not None else []
    lines = [f"{source}: OK"]
    for name, budget in sorted(cfg.roles.items()):
        lines.append(f"  role {name}: {_limits(budget)}"
                     + (f", max_output_tokens {budget.max_output_tokens}"
                        if budget.max_output_tokens else "")
                     + (f", aliases {', '.join(budget.aliases)}" if budget.aliases else ""))
    if cfg.default_role is not None:
        lines.append(f"  default_role: {_limits(cfg.default_role)}")
    if cfg.crew is not None:
        lines.append(f"  crew {cfg.crew.name}: {_limits(cfg.crew)}")
    if cfg.global_limits is not None:
        lines.append(f"  global: {_limits(cfg.global_limits)}")
    for name, price in sorted(cfg.prices.items()):
        lines.append(f"  price {name}: ${price.input_per_million}/M in, "
                     f"${price.output_per_million}/M out")
    if cfg.default_role is not None:
        lines.append("  roles not listed: charged to default_role (one shared budget)")
    elif cfg.unknown_roles == "allow":
        lines.append("  roles not listed: allowed, charged to crew/global budgets only "
                     "(unknown_roles: allow)")
    else:
        lines.append("  roles not listed: refused (UnknownRoleError)")
    lines.extend(crew_lines)
    try:
        url = cfg.ledger_url()
    except ValueError as exc:
        fail("validate", f"CREW_BUDGET_LEDGER: {exc}", EXIT_CONFIG)
    lines.append(f"  ledger: {redact_url(url)}  timezone: {cfg.timezone}  "
                 f"fail_open: {cfg.fail_open}")
    warnings: list[str] = []
    if cfg.alerts is not None:
        from crew_budget.alerts.sinks import build_sinks

        a = cfg.alerts
        sinks = ", ".join(s.type for s in a.sinks) or "none"
        lines.append(f"  alerts: thresholds {'/'.join(map(str, a.thresholds))}%, anomalies "
                     f"{'on' if a.anomalies.enabled else 'off'}, sinks: {sinks}")
        # Sinks that need the runtime environment (an importable callable, a
        # password in an environment variable) are checked here, but only
        # warned about: this machine may not be the one that runs the agents.
        try:
            build_sinks(a.sinks)
        except ConfigError as exc:
            warnings.append(str(exc))
    for line in lines:
        typer.echo(line)
    for warning in warnings:
        typer.echo(f"crew-budget validate: warning: {redact_text(warning)}", err=True)


def _check_crew(cfg: BudgetConfig, spec: str) -> list[str]:
    """Import ``module:attr`` and check every agent role of that crew against ``cfg``."""
    import importlib
    import sys

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        fail("validate", f"--crew {spec!r}: write MODULE:ATTR, e.g. myapp.crew:crew",
             EXIT_CONFIG)
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: modules in the current directory
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        if callable(obj) and not hasattr(obj, "agents"):
            obj = obj()
    except Exception as exc:
        fail("validate", f"--crew {spec}: cannot load it ({type(exc).__name__}: {exc}); "
             "check the module path and attribute name", EXIT_CONFIG)
    if not hasattr(obj, "agents"):
        fail("validate", f"--crew {spec}: is a {type(obj).__name__}, not a CrewAI Crew (or a "
             "function returning one)", EXIT_CONFIG)
    try:
        from crew_budget.crewai._roles import check_crew_roles, crew_roles
    except ImportError as exc:
        fail("validate", f"--crew needs CrewAI ({exc}); pip install 'crew-budget[crewai]'",
             EXIT_CONFIG)
    from crew_budget.errors import UnknownRoleError

    try:
        check_crew_roles(cfg, obj)
    except UnknownRoleError as exc:
        fail("validate", f"--crew {spec}: {exc}", EXIT_CONFIG)
    seen: dict[str, str] = {}
    for role, _llm in crew_roles(obj):
        if role not in seen:
            try:
                seen[role] = cfg.resolve_role(role)
            except UnknownRoleError:  # a BudgetLLM with inline limits adds its role
                seen[role] = f"{role} (inline limits)"
    pairs = ", ".join(f"{role} -> {charged}" if role != charged else role
                      for role, charged in seen.items())
    return [f"  crew {spec}: {len(seen)} role(s) budgeted: {pairs}"]


def _limits(limits: object) -> str:
    parts = [f"{name} {fmt_usd(value)}" for name in ("hourly", "daily", "monthly")
             if (value := getattr(limits, name)) is not None]
    # Token and call limits, in counts: "input_tokens daily 2,000,000".
    for unit in ("input_tokens", "output_tokens", "calls"):
        counts = getattr(limits, unit, None)
        if counts is not None:
            parts.extend(f"{unit} {name} {value:,}"
                         for name in ("hourly", "daily", "monthly", "per_run")
                         if (value := getattr(counts, name)) is not None)
    return ", ".join(parts) or "no limits"


def reset(
    config: ConfigOption = None,
    ledger: LedgerOption = None,
    role: Annotated[str | None, typer.Option("--role", "-r", help="Role to reset.")] = None,
    crew: Annotated[bool, typer.Option("--crew", help="Reset the crew budget.")] = False,
    global_: Annotated[bool, typer.Option("--global", help="Reset the global budget.")] = False,
    window: Annotated[str | None, typer.Option(
        "--window", "-w", help="Only this window: hour, day or month (default: all).")] = None,
    reason: Annotated[str | None, typer.Option(
        "--reason", help="Why (kept in the spend record).")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Zero a budget's spend in its current window (recorded in the ledger)."""
    from crew_budget.errors import LedgerUnavailable

    if window is not None and window not in ("hour", "day", "month"):
        raise typer.BadParameter("use hour, day or month", param_hint="--window")
    if sum((role is not None, crew, global_)) != 1:
        fail("reset", "name exactly one budget: --role NAME, --crew or --global", EXIT_CONFIG)
    guard, source = open_guard("reset", config, ledger)
    cfg = guard.config
    if role is not None:
        from crew_budget.config import DEFAULT_ROLE, normalize_role

        key = cfg.match_role(role)
        if key is None and cfg.default_role is not None and normalize_role(role) == DEFAULT_ROLE:
            key = DEFAULT_ROLE
        if key is None:
            known = ", ".join(sorted(cfg.roles)) or "none"
            close = cfg.closest_role(role)
            hint = f"; closest match: {close!r}" if close else ""
            fail("reset", f"role {role!r} has no budget in {source} (known roles: {known}"
                 f"{hint}); roles not listed share default_role: reset it with "
                 "--role default_role", EXIT_CONFIG)
        role = key
        scope = f"role:{role}"
    elif crew:
        if cfg.crew is None:
            fail("reset", f"{source} has no crew: budget", EXIT_CONFIG)
        scope = f"crew:{cfg.crew.name}"
    else:
        if cfg.global_limits is None:
            fail("reset", f"{source} has no global: budget", EXIT_CONFIG)
        scope = "global"
    buckets = [b for b in guard.buckets(role) if b.scope == scope
               and (window is None or b.window == window)]
    if not buckets:
        fail("reset", f"{scope} has no {window or ''} budget window in {source}".replace(
            "  ", " "), EXIT_EMPTY)
    try:
        states = guard.ledger.status(buckets)
    except LedgerUnavailable as exc:
        fail("reset", f"ledger {ledger_name(guard)} is unreachable ({exc.reason})", EXIT_LEDGER)
    from crew_budget.money import from_nano

    typer.echo(f"About to reset in {ledger_name(guard)}:")
    for st in states:
        typer.echo(f"  {scope} {st.bucket.window} {st.bucket.period}: "
                   f"{fmt_usd(from_nano(st.spent_nano))} spent -> $0.00")
    if not yes:
        typer.confirm("Reset these budgets?", abort=True)
    why = reason or "manual reset"
    who = _user()
    for st in states:
        try:
            guard.ledger.reset(st.bucket, reason=f"{why} (by {who} via crew-budget reset)")
        except LedgerUnavailable as exc:
            fail("reset", f"ledger {ledger_name(guard)} is unreachable ({exc.reason})",
                 EXIT_LEDGER)
        typer.echo(f"reset {scope} {st.bucket.window} {st.bucket.period} "
                   f"(was {fmt_usd(from_nano(st.spent_nano))})")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown user"
