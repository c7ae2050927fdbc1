"""``crew-budget validate`` and ``crew-budget reset``."""

from __future__ import annotations

import subprocess
from decimal import Decimal
from pathlib import Path

from typer.testing import CliRunner

from crew_budget.cli import app
from tests.cli.conftest import Setup, cli_executable, subprocess_env


def test_validate_summarises_a_good_file(runner: CliRunner, setup: Setup) -> None:
    setup.config.write_text(setup.config.read_text() + (
        "alerts:\n  thresholds: [80, 100]\n  sinks:\n"
        "    - {type: webhook, url: 'https://hooks.example.com/x', format: slack}\n"))
    result = runner.invoke(app, ["validate", str(setup.config)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:5] == [
        f"{setup.config}: OK",
        "  role researcher: hourly $0.50, daily $1.00",
        "  role writer: daily $2.00",
        "  crew team: daily $5.00",
        "  price m: $0/M in, $10/M out",
    ]
    assert "  alerts: thresholds 80/100%, anomalies on, sinks: webhook" in result.stdout
    assert result.stderr == ""


def test_validate_reports_the_first_mistake_with_path_and_fix(
    runner: CliRunner, setup: Setup
) -> None:
    bad = setup.dir / "bad.yaml"
    bad.write_text("roles:\n  researcher: {daily: 5, weekly: 20}\n")
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"crew-budget validate: error: {bad}: roles.researcher.weekly: unknown key 'weekly'; "
        "a role takes hourly, daily, monthly, per_run, max_output_tokens, aliases, models, "
        "on_exceed and exact_count")
    typo = setup.dir / "typo.yaml"
    typo.write_text("alerts:\n  sinks: [{type: webhook, url: 'http://x', formt: slack}]\n")
    result = runner.invoke(app, ["validate", str(typo)])
    assert result.exit_code == 2
    assert "alerts.sinks.0.webhook.formt: unknown key 'formt'; a webhook sink takes" in (
        result.stderr)
    missing = runner.invoke(app, ["validate", str(setup.dir / "nope.yaml")])
    assert missing.exit_code == 2 and "file not found" in missing.stderr


def test_validate_warns_about_sinks_this_machine_cannot_build(
    runner: CliRunner, setup: Setup
) -> None:
    setup.config.write_text(setup.config.read_text() + (
        "alerts:\n  sinks:\n    - {type: email, host: localhost, from: a@b.c, to: d@e.f,\n"
        "       username: u, password_env: CREW_TEST_NO_SUCH_VAR}\n"))
    result = runner.invoke(app, ["validate"])  # ./budgets.yaml
    assert result.exit_code == 0
    assert ("warning: alerts: alerts.sinks.0.password_env: environment variable "
            "CREW_TEST_NO_SUCH_VAR (the SMTP password) is not set") in result.stderr


def test_reset_asks_first_and_records_who_and_why(runner: CliRunner, spent: Setup) -> None:
    declined = runner.invoke(app, ["reset", "--role", "researcher", "--ledger", spent.url],
                             input="n\n")
    assert declined.exit_code == 1
    assert "role:researcher day" in declined.stdout and "$0.14 spent -> $0.00" in declined.stdout
    guard = spent.guard()
    day = {(s.scope, s.window): s for s in guard.status()}
    assert day[("role:researcher", "day")].spent == Decimal("0.14")  # nothing changed

    done = runner.invoke(app, ["reset", "--role", "researcher", "--window", "day",
                               "--reason", "runaway loop fixed", "--ledger", spent.url],
                         input="y\n")
    assert done.exit_code == 0, done.output
    assert "reset role:researcher day" in done.stdout and "(was $0.14)" in done.stdout
    after = {(s.scope, s.window): s for s in guard.status()}
    assert after[("role:researcher", "day")].spent == 0
    assert after[("role:researcher", "hour")].spent == Decimal("0.14")  # --window day only
    assert after[("crew:team", "day")].spent == Decimal("0.21")         # other scopes kept
    (record,) = [r for r in guard.ledger.records() if r.outcome == "reset"]
    assert record.scope == "role:researcher" and record.cost_nano == -140_000_000
    assert str(record.metadata["reason"]).startswith("runaway loop fixed (by ")


def test_reset_with_yes_for_scripts_and_its_errors(runner: CliRunner, spent: Setup) -> None:
    crew = runner.invoke(app, ["reset", "--crew", "--yes", "--ledger", spent.url])
    assert crew.exit_code == 0, crew.output
    assert {(s.scope, s.window): s.spent for s in spent.guard().status()}[
        ("crew:team", "day")] == 0
    unknown = runner.invoke(app, ["reset", "--role", "editor", "--yes", "--ledger", spent.url])
    assert unknown.exit_code == 2
    assert "role 'editor' has no budget in budgets.yaml (known roles: researcher, writer)" in (
        unknown.stderr)
    nothing = runner.invoke(app, ["reset", "--yes", "--ledger", spent.url])
    assert nothing.exit_code == 2 and "name exactly one budget" in nothing.stderr
    no_global = runner.invoke(app, ["reset", "--global", "--yes", "--ledger", spent.url])
    assert no_global.exit_code == 2 and "has no global: budget" in no_global.stderr


def test_reset_as_a_subprocess_shows_up_in_the_report(spent: Setup, tmp_path: Path) -> None:
    run = [*cli_executable(), "reset", "--role", "writer", "--yes", "--ledger", spent.url]
    proc = subprocess.run(run, cwd=spent.dir, env=subprocess_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = subprocess.run(
        [*cli_executable(), "report", "--by", "outcome", "--format", "json", "--ledger",
         spent.url], cwd=spent.dir, env=subprocess_env(), capture_output=True, text=True,
        timeout=60)
    assert '"cleared_usd": "0.07"' in report.stdout
