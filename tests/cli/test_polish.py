"""The CLI reads at a glance: whole money at 80 columns, one money format,
``--version``, clean flag help, exit 2 for usage errors, ISO hours with their
UTC offset, and ``watch`` that ends cleanly on SIGTERM with its last frame."""

from __future__ import annotations

import csv
import io
import re
import signal
import subprocess
from decimal import Decimal

import pytest
from typer.testing import CliRunner

import crew_budget
from crew_budget.cli import app
from crew_budget.cli.common import fmt_usd
from tests.cli.conftest import Setup, cli_executable, spend, subprocess_env

WIDE = """\
roles:
  researcher: {daily: 1, hourly: "0.50"}
  senior-research-analyst: {daily: 250000, monthly: 999999}
  writer: {daily: 2}
crew: {name: research-team, daily: 279500}
prices:
  m: {input_per_million: 0, output_per_million: 10}
"""
# A dollar amount as the CLI prints it, and anything that looks like a cut one.
MONEY = re.compile(r"-?\$[0-9][0-9,]*(?:\.[0-9]+)?")


@pytest.mark.parametrize(("amount", "shown"), [
    ("0", "$0.00"), ("1.74", "$1.74"), ("279500", "$279,500.00"), ("0.9603", "$0.9603"),
    ("0.96034", "$0.9603"), ("0.0000612", "$0.0000612"), ("0.5", "$0.50"), ("0.007", "$0.007"),
    ("0.123456", "$0.1235"), ("0.99996", "$1.00"), ("-0.01", "-$0.01"),
    ("0.000000001", "$0.000000001"),
])
def test_one_money_format(amount: str, shown: str) -> None:
    assert fmt_usd(Decimal(amount)) == shown
    assert fmt_usd(None) == "-"


@pytest.fixture
def wide(setup: Setup) -> Setup:
    setup.config.write_text(WIDE)
    guard = setup.guard()
    spend(guard, "researcher", 20)               # $0.14
    spend(guard, "writer", 10)                   # $0.07
    spend(guard, "senior-research-analyst", 3)   # $0.021
    guard.close()
    return setup


def _run(setup: Setup, *args: str, columns: str = "80") -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*cli_executable(), *args, "--ledger", setup.url], cwd=setup.dir,
                          env=subprocess_env(COLUMNS=columns), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_money_is_never_cut_at_80_columns(wide: Setup) -> None:
    status = _run(wide, "status").stdout
    assert max(len(line) for line in status.splitlines()) <= 80
    assert "…" not in status
    amounts = MONEY.findall(status)
    for expected in ("$0.50", "$0.14", "$0.36", "$1.00", "$0.86", "$250,000.00", "$0.021",
                     "$249,999.98", "$999,999.00", "$999,998.98", "$2.00", "$0.07", "$1.93",
                     "$279,500.00", "$0.231", "$279,499.77"):
        assert expected in amounts, (expected, status)
    # Every "$" starts a whole amount: nothing like "$1…" or "$279,5" at a cell's edge.
    assert status.count("$") == len(amounts)
    assert all(re.fullmatch(r"-?\$(\d{1,3}(,\d{3})*\.\d\d|0\.\d+)", a) for a in amounts), amounts
    report = _run(wide, "report", "--by", "role,model,hour").stdout
    assert max(len(line) for line in report.splitlines()) <= 80
    assert "…" not in report
    money = MONEY.findall(report)
    assert report.count("$") == len(money)
    assert {"$0.14", "$0.07", "$0.021", "$0.231"} <= set(money), report
    assert "senior-research-analyst" in report.replace("│", "").replace(" ", "").replace(
        "\n", "") or "senior-resea" in report


def test_version_and_flag_help(runner: CliRunner) -> None:
    proc = subprocess.run([*cli_executable(), "--version"], capture_output=True, text=True,
                          env=subprocess_env(), timeout=60, check=False)
    assert (proc.returncode, proc.stdout) == (0, f"crew-budget {crew_budget.__version__}\n")
    for command in ("reset", "demo", "metrics", "report", "status", "watch", "validate"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.stdout, result.stdout
    reset = runner.invoke(app, ["reset", "--help"], env={"COLUMNS": "80"}).stdout
    assert re.search(r"^\s+-y, --yes\s+Do not ask for confirmation\.$", reset, re.M), reset
    assert re.search(r"^\s+--crew\s+Reset the crew budget\.$", reset, re.M), reset


def test_usage_errors_exit_2(runner: CliRunner, spent: Setup) -> None:
    for args, needle in ((["report", "--format", "xml"], "use table, csv or json"),
                         (["status", "--no-such-option"], "No such option"),
                         (["nosuchcommand"], "No such command")):
        result = runner.invoke(app, [*args, "--ledger", spent.url])
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output
    bad_json = subprocess.run([*cli_executable(), "estimate"], input="{oops",
                              capture_output=True, text=True, env=subprocess_env(), timeout=60,
                              check=False)
    assert bad_json.returncode == 2 and "not valid JSON" in bad_json.stderr
    unknown = runner.invoke(app, ["reset", "--role", "nosuchrole", "--yes", "--ledger",
                                  spent.url])
    assert unknown.exit_code == 2
    assert "role 'nosuchrole' has no budget" in unknown.stderr


def test_csv_and_json_hours_carry_their_utc_offset(runner: CliRunner, spent: Setup) -> None:
    as_csv = runner.invoke(app, ["report", "--ledger", spent.url, "--by", "role,hour",
                                 "--format", "csv"])
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["role"] for r in rows] == ["researcher", "writer"]
    for row in rows:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:00:00\+00:00", row["hour"]), row
    spent.config.write_text(spent.config.read_text() + "timezone: Asia/Kathmandu\n")
    as_json = runner.invoke(app, ["report", "--ledger", spent.url, "--by", "hour",
                                  "--format", "json"])
    data = __import__("json").loads(as_json.stdout)
    (row,) = data["rows"]
    assert row["hour"].endswith("+05:45") and row["cost_usd"] == "0.21"
    assert data["since"].endswith("+05:45")


def test_watch_in_a_pipe_prints_its_last_frame_on_sigterm(spent: Setup) -> None:
    proc = subprocess.Popen([*cli_executable(), "watch", "--ledger", spent.url,
                             "--interval", "0.2"], cwd=spent.dir, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # printed once the SIGTERM handler is in place
        assert line.startswith("crew-budget watch: refreshing every 0.2s"), line
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "crew-budget watch" in out and "latest 10 calls (24h)" in out
    day = next(line for line in out.splitlines() if "role:researcher" in line and "day" in line)
    assert "$1.00" in day and "$0.14" in day and "$0.86" in day
    assert err == ""


def test_status_lists_every_role_that_spent_so_roles_add_up_to_the_crew(
    runner: CliRunner, setup: Setup
) -> None:
    setup.config.write_text(setup.config.read_text() + "unknown_roles: allow\n")
    guard = setup.guard()
    spend(guard, "researcher", 1)   # $0.007
    spend(guard, "intern", 2)       # $0.014, no role budget: crew only
    spend(guard, "auditor", 1)      # $0.007
    guard.close()
    result = runner.invoke(app, ["status", "--ledger", setup.url, "--format", "json"])
    assert result.exit_code == 0, result.output
    day = {r["scope"]: r for r in __import__("json").loads(result.stdout) if r["window"] == "day"}
    assert {k: v["spent_usd"] for k, v in day.items()} == {
        "role:researcher": "0.007", "role:writer": "0", "crew:team": "0.028",
        "role:auditor (no budget)": "0.007", "role:intern (no budget)": "0.014"}
    assert day["role:intern (no budget)"]["limit_usd"] is None
    roles = sum(Decimal(v["spent_usd"]) for k, v in day.items() if k.startswith("role:"))
    assert roles == Decimal(day["crew:team"]["spent_usd"])
    table = runner.invoke(app, ["status", "--ledger", setup.url]).stdout
    intern = next(line for line in table.splitlines() if "role:intern (no budget)" in line)
    assert "$0.014" in intern and " - " in intern
