"""``crew-budget status`` / ``watch`` through typer's runner and as a subprocess."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crew_budget.cli import app
from crew_budget.windows import span
from tests.cli.conftest import Setup, cli_executable, spend, subprocess_env


def test_status_shows_every_scope_and_window_with_money_bar_and_reset(
    runner: CliRunner, spent: Setup
) -> None:
    result = runner.invoke(app, ["status", "--ledger", spent.url])
    assert result.exit_code == 0, result.output
    budgets = result.stdout.split("estimate margins")[0]  # the margins table follows
    lines = {line.split("│")[1].strip() + " " + line.split("│")[2].strip(): line
             for line in budgets.splitlines() if line.startswith("│")}
    assert set(lines) == {"role:researcher hour", "role:researcher day", "role:writer day",
                          "crew:team day"}
    # $0.14 of the researcher's $1.00 day: 14 %, one bar cell of ten.
    day = lines["role:researcher day"]
    assert "$1.00" in day and "$0.14" in day and "$0.86" in day and "█░░░░░░░░░  14%" in day
    assert "$0.21" in lines["crew:team day"] and "$4.79" in lines["crew:team day"]
    assert "in " in day and "(" in day  # "in 6h 12m (11-26 00:00)"


def test_status_json_is_exact_and_filterable_by_role(runner: CliRunner, spent: Setup) -> None:
    result = runner.invoke(app, ["status", "--ledger", spent.url, "--role", "writer",
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["scope"], r["window"]) for r in rows] == [("role:writer", "day"),
                                                         ("crew:team", "day")]
    writer = rows[0]
    assert (writer["limit_usd"], writer["spent_usd"], writer["remaining_usd"]) == (
        "2", "0.07", "1.93")
    assert writer["used_pct"] == "3.5"
    assert writer["period"] == span("day", time.time(), timezone.utc).period


def test_status_reads_budgets_yaml_from_the_working_directory_or_the_env(
    runner: CliRunner, spent: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ./budgets.yaml is picked up without --config (the fixture chdir'ed there).
    assert runner.invoke(app, ["status", "--ledger", spent.url]).exit_code == 0
    other = spent.dir / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    empty = runner.invoke(app, ["status", "--ledger", spent.url])
    assert empty.exit_code == 1
    assert "no budgets configured in the empty default config" in empty.stderr
    env = runner.invoke(app, ["status", "--ledger", spent.url],
                        env={"CREW_BUDGET_CONFIG": str(spent.config)})
    assert env.exit_code == 0 and "role:researcher" in env.stdout


def test_status_errors_are_one_clear_line_with_distinct_exit_codes(
    runner: CliRunner, spent: Setup, tmp_path: Path
) -> None:
    bad_url = runner.invoke(app, ["status", "--ledger", "postgres://db/x"])
    assert bad_url.exit_code == 2
    assert bad_url.stderr.startswith("crew-budget status: error: ledger URL 'postgres://db/x' "
                                     "has unsupported scheme")
    down = runner.invoke(app, ["status", "--ledger", "redis://127.0.0.1:1/0"])
    assert down.exit_code == 3
    assert "ledger redis://127.0.0.1:1/0 is unreachable" in down.stderr
    assert "start it or pass the right --ledger URL" in down.stderr
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where a directory should be")
    not_there = runner.invoke(app, ["status", "--ledger", f"sqlite:///{blocked}/ledger.db"])
    assert not_there.exit_code == 3
    assert not_there.stderr == (f"crew-budget status: error: no ledger at {blocked}/ledger.db: "
                                "check --ledger, or run a guarded call first to create it\n")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all, " * 100)
    unopenable = runner.invoke(app, ["status", "--ledger", f"sqlite:///{garbage}"])
    assert unopenable.exit_code == 3
    assert unopenable.stderr.startswith(
        f"crew-budget status: error: ledger sqlite:///{garbage} is unreachable (cannot read the "
        "ledger file: file is not a database)")
    unknown = runner.invoke(app, ["status", "--ledger", spent.url, "--role", "reseacher"])
    assert unknown.exit_code == 2
    assert "role 'reseacher' has no budget in budgets.yaml (known roles: researcher, writer)" in (
        unknown.stderr)
    broken = spent.dir / "broken.yaml"
    broken.write_text("roles: {r: {daily: -5}}\n")
    config_error = runner.invoke(app, ["status", "--config", str(broken)])
    assert config_error.exit_code == 2
    assert "roles.r.daily: budget -5 is negative" in config_error.stderr
    for r in (bad_url, down, not_there, unopenable, unknown, config_error):
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stdout == ""


def test_watch_draws_the_status_and_the_latest_calls(runner: CliRunner, spent: Setup) -> None:
    guard = spent.guard()
    spend(guard, "writer", 1, completion=100)  # the newest call: $0.001
    result = runner.invoke(app, ["watch", "--ledger", spent.url, "--interval", "0.1",
                                 "--iterations", "2"])
    assert result.exit_code == 0, result.output
    assert "crew-budget watch" in result.stdout
    assert "latest 10 calls (24h)" in result.stdout
    calls = [line for line in result.stdout.splitlines() if "settled" in line]
    assert len(calls) == 10
    assert "writer" in calls[0] and "$0.001" in calls[0]


def test_status_as_a_subprocess(spent: Setup) -> None:
    proc = subprocess.run(
        [*cli_executable(), "status", "--format", "json", "--ledger", spent.url],
        cwd=spent.dir, env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {(r["scope"], r["window"]): r for r in json.loads(proc.stdout)}
    assert rows[("role:researcher", "day")]["spent_usd"] == "0.14"
    assert rows[("crew:team", "day")]["spent_usd"] == "0.21"
    down = subprocess.run(
        [*cli_executable(), "status", "--ledger", "redis://127.0.0.1:1/0"],
        cwd=spent.dir, env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )
    assert down.returncode == 3
    assert "is unreachable" in down.stderr and down.stdout == ""
