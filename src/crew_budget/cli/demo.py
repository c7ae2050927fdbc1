"""``crew-budget demo``: a three-agent CrewAI crew stopped by its budget, offline.

By default nothing leaves the machine: the crew's OpenAI traffic is replayed
from a recorded cassette (vcrpy), no API key is needed, and spend goes to a
fresh embedded SQLite ledger in a temporary directory, so every run tells the
same story and the demo never adds made-up spend to your real ledger. With
``--live`` (and ``OPENAI_API_KEY`` set) the same crew calls OpenAI for real
and records real spend in your default ledger (or ``--ledger``).

``--keep`` keeps the offline run's ledger and budgets in
``./crew-budget-demo/`` (a ``budgets.yaml`` whose ``ledger:`` names the kept
``ledger.db``), so ``CREW_BUDGET_CONFIG=crew-budget-demo/budgets.yaml
crew-budget status`` (or ``report``) shows what the demo spent.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["KEEP_DIR", "register"]

#: Where ``demo --keep`` leaves its ledger and budgets (in the working directory).
KEEP_DIR = "crew-budget-demo"


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the ``crew-budget`` app."""
    app.command("demo")(demo)


def demo(
    live: Annotated[
        bool, typer.Option("--live", help="Call OpenAI for real (needs OPENAI_API_KEY).")
    ] = False,
    ledger: Annotated[
        str | None,
        typer.Option("--ledger", help="Ledger URL (default: a temporary SQLite file offline, "
                     "your default ledger with --live)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show CrewAI's own output.")] = False,
    keep: Annotated[bool, typer.Option(
        "--keep", help=f"Keep the demo's ledger and budgets in ./{KEEP_DIR}/, so that "
        "`crew-budget status` and `report` can show them afterwards.")] = False,
) -> None:
    """Run a router/researcher/writer crew whose looping researcher hits its budget,
    then the same crew with a softer policy (on_exceed: end_task) for the researcher."""
    from rich.console import Console

    # Our own output goes to the real stdout; CrewAI's console chatter is muted
    # below unless --verbose. At least 100 columns, so the tables never wrap.
    console = Console(file=sys.stdout, highlight=False,
                      width=max(100, shutil.get_terminal_size((100, 24)).columns))
    if live and not os.environ.get("OPENAI_API_KEY"):
        console.print("[red]--live needs OPENAI_API_KEY[/red]; drop --live to replay offline.")
        raise typer.Exit(2)
    from crew_budget.cli.common import EXIT_CONFIG, EXIT_LEDGER, fail
    from crew_budget.config import check_ledger_url
    from crew_budget.errors import LedgerUnavailable
    from crew_budget.redact import redact_url

    if ledger is not None:
        try:
            check_ledger_url(ledger)
        except ValueError as exc:
            fail("demo", str(exc), EXIT_CONFIG)
    if keep and ledger is not None:
        fail("demo", "--keep keeps the demo's own ledger; with --ledger the spend already "
             "stays in that ledger: pass one or the other", EXIT_CONFIG)
    kept = _keep_dir(console) if keep else None
    _quiet_environment(verbose)
    with tempfile.TemporaryDirectory(prefix="crew-budget-demo-") as tmp:
        url = ledger or (None if live and kept is None else
                         f"sqlite:///{(kept or Path(tmp)).resolve() / 'ledger.db'}")
        try:
            code = _run(console, live=live, ledger_url=url, verbose=verbose)
        except LedgerUnavailable as exc:
            fail("demo", f"ledger {redact_url(exc.url)} is unreachable ({exc.reason}); start "
                 "it, or drop --ledger to use a fresh temporary ledger", EXIT_LEDGER)
    if kept is not None:
        config = kept / "budgets.yaml"
        console.print(f"\nKept: {config} and {kept / 'ledger.db'}. Try:\n"
                      f"  CREW_BUDGET_CONFIG={config} crew-budget status\n"
                      f"  CREW_BUDGET_CONFIG={config} crew-budget report --by role,model")
    raise typer.Exit(code)


def _keep_dir(console: Any) -> Path:
    """``./crew-budget-demo/`` with the demo's budgets.yaml (naming its ledger).

    A fresh directory each time: an earlier run's spend would exhaust the
    researcher's budget before the first call and spoil the story.
    """
    from crew_budget.cli.common import EXIT_CONFIG, fail
    from crew_budget.crewai.demo import BUDGETS_YAML

    target = Path(KEEP_DIR)
    if target.exists():
        fail("demo", f"./{KEEP_DIR} exists from an earlier run; delete it (rm -r {KEEP_DIR}) "
             "or run the demo from another directory", EXIT_CONFIG)
    target.mkdir()
    ledger = (target / "ledger.db").resolve()
    (target / "budgets.yaml").write_text(
        f"# crew-budget demo budgets (kept by `crew-budget demo --keep`)\n{BUDGETS_YAML}"
        f"ledger: sqlite:///{ledger}\n", encoding="utf-8")
    return target


def _quiet_environment(verbose: bool) -> None:
    # Offline means offline: no telemetry, no price-map or tokenizer downloads.
    for key, value in {
        "CREWAI_DISABLE_TELEMETRY": "true", "CREWAI_DISABLE_TRACKING": "true",
        "OTEL_SDK_DISABLED": "true", "CREWAI_TRACING_ENABLED": "false",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1",
    }.items():
        os.environ.setdefault(key, value)
    if not verbose:
        import logging

        # CrewAI logs our deliberate stop as a listener error; the demo says it better.
        for name in ("crewai", "root", "crewai.flow.runtime"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        logging.getLogger().setLevel(logging.CRITICAL)


def _run(console: Any, *, live: bool, ledger_url: str | None, verbose: bool) -> int:
    import yaml

    from crew_budget.config import load_config
    from crew_budget.crewai import BudgetCallback, CrewBudgetExceeded
    from crew_budget.crewai.demo import (
        BUDGETS_YAML,
        QUESTION,
        RESEARCHER_DAILY_USD,
        build_crew,
        replay,
    )
    from crew_budget.redact import redact_url

    config = load_config(yaml.safe_load(BUDGETS_YAML))
    budget = BudgetCallback(config, ledger_url)
    console.print("[bold]crew-budget demo[/bold]: router -> researcher -> writer "
                  f"({'live OpenAI' if live else 'offline replay, no API key needed'})")
    where = "" if live or ledger_url is None or "crew-budget-demo-" not in ledger_url else (
        " (a fresh file for this run, deleted afterwards)")
    console.print(f"ledger: {redact_url(budget.guard.ledger.url)}{where}")
    console.print("budgets: " + ", ".join(
        f"{role} ${limits.daily}/day" for role, limits in config.roles.items()
    ) + f", crew ${config.crew.daily if config.crew else '-'}/day; the researcher's "
        f"BudgetLLM also says ${RESEARCHER_DAILY_USD}/day (the stricter wins)\n")

    budget.guard.add_listener(_show_calls(console))
    crew = build_crew(budget, verbose=verbose)
    stopped: CrewBudgetExceeded | None = None
    chatter = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    try:
        with chatter:
            if live:
                crew.kickoff(inputs={"question": QUESTION})
            else:
                with replay():
                    crew.kickoff(inputs={"question": QUESTION})
    except CrewBudgetExceeded as exc:
        stopped = exc

    console.print()
    if stopped is not None:
        console.print(f"[bold]Stopped:[/bold] crew.kickoff() raised {type(stopped).__name__}")
        console.print(f"  role={stopped.role} scope={stopped.scope} window={stopped.window} "
                      f"limit=${stopped.limit:f} spent=${stopped.spent:f}")
        console.print(f"  {stopped}")
    else:
        console.print("[bold]The crew finished within its budgets.[/bold]")

    summary = budget.summary()
    _tables(console, summary, config)
    budget.guard.close()
    _soft_run(console, live=live, ledger_url=ledger_url, verbose=verbose)
    return 0


def _show_calls(console: Any, *, soft: bool = False) -> Any:
    """A guard listener printing each settled call and each block as it happens."""
    from crew_budget.guard import GuardEvent

    calls: dict[str, int] = {}
    ended = {role for role, policy in _soft_policy().items() if policy == "end_task"}

    def show(event: GuardEvent) -> None:
        if event.outcome == "settled":
            calls[event.role] = calls.get(event.role, 0) + 1
            console.print(f"  {event.role:<10} {event.model:<12} call {calls[event.role]:>2}  "
                          f"reserved ${event.estimate:<10f} charged ${event.cost:f}")
        elif event.outcome == "blocked" and event.error is not None:
            err = event.error
            what = ("[bold yellow]TASK ENDED[/bold yellow]" if soft and event.role in ended
                    else "[bold red]BLOCKED[/bold red]")
            console.print(f"  {event.role:<10} {event.model:<12} {what}  "
                          f"needs ~${err.estimate:f}, {err.scope} has ${err.limit - err.spent:f} "
                          "left: no request sent")

    return show


def _soft_policy() -> dict[str, str]:
    from crew_budget.crewai.demo import SOFT_POLICY

    return SOFT_POLICY


def _soft_run(console: Any, *, live: bool, ledger_url: str | None, verbose: bool) -> None:
    """The same crew again, with ``on_exceed: end_task`` for the researcher.

    Offline it starts from a fresh in-memory ledger, so it tells the same
    story every time; ``--live`` keeps using the ledger of the first run
    (where the researcher's budget is already spent: its task ends sooner).
    """
    from crew_budget.config import load_config
    from crew_budget.crewai import BudgetCallback
    from crew_budget.crewai.demo import (
        QUESTION,
        SOFT_CASSETTE,
        build_crew,
        find_cassette,
        replay,
        soft_budgets,
    )

    config = load_config(soft_budgets())
    policies = ", ".join(f"roles.{r}.on_exceed: {p}" for r, p in _soft_policy().items())
    console.print(f"\n[bold]Softer:[/bold] the same crew again with `{policies}` "
                  f"({'the same ledger' if live else 'a fresh in-memory ledger'}): the "
                  "researcher's task ends with a 'budget exhausted' answer, and the crew goes "
                  "on to the writer\n")
    budget = BudgetCallback(config, ledger_url if live else "memory://")
    budget.guard.add_listener(_show_calls(console, soft=True))
    crew = build_crew(budget, verbose=verbose)
    chatter = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with chatter:
        if live:
            output = crew.kickoff(inputs={"question": QUESTION})
        else:
            with replay(find_cassette(SOFT_CASSETTE)):
                output = crew.kickoff(inputs={"question": QUESTION})
    brief = str(output.raw).strip()
    console.print(f"\n[bold]The crew finished[/bold]: the writer's brief "
                  f"({len(brief.split())} words) begins: {brief[:120]!r}")
    _tables(console, budget.summary(), config)
    budget.guard.close()


def _tables(console: Any, summary: Any, config: Any) -> None:
    from rich.table import Table

    limits = Table(title="Budgets today")
    for column in ("scope", "limit", "spent", "left"):
        limits.add_column(column, justify="left" if column == "scope" else "right")
    for status in summary.limits:
        if status.window != "day":
            continue
        limits.add_row(status.scope, _usd(status.limit), _usd(status.spent),
                       _usd(status.remaining))
    console.print(limits)
    table = Table(title="Spend this run, per role and model")
    for column in ("role", "model", "calls", "blocked", "input tok", "output tok", "USD"):
        table.add_column(column, justify="left" if column in ("role", "model") else "right")
    seen = {row.role for row in summary.run}
    for row in summary.run:
        table.add_row(row.role, row.model, str(row.calls), str(row.blocked),
                      str(row.input_tokens), str(row.output_tokens), f"{row.cost:f}")
    for role in config.roles:
        if role not in seen:
            table.add_row(role, "-", "0", "0", "0", "0", "0")
    table.add_row("total", "", "", "", "", "", f"{summary.total('run'):f}", style="bold")
    console.print(table)


def _usd(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:f}"
