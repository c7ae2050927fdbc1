"""``crew-budget report``: table, CSV, JSON and HTML from the ledger's spend records.

Spend in the fixture ledger (see conftest): researcher 20 x $0.007 = $0.14,
writer 10 x $0.007 = $0.07, all on model ``m``.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import time
from datetime import datetime, timezone

from typer.testing import CliRunner

from crew_budget import Guard
from crew_budget.cli import app
from crew_budget.ledger import SpendRecord
from tests.cli.conftest import Setup, cli_executable, spend, subprocess_env


def test_table_by_role_model_hour_puts_the_costliest_first(
    runner: CliRunner, spent: Setup
) -> None:
    result = runner.invoke(app, ["report", "--ledger", spent.url, "--by", "role,model,hour"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    hour = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:00")
    assert "researcher" in rows[0] and hour in rows[0] and "$0.14" in rows[0]
    assert "66.7%" in rows[0]
    assert "writer" in rows[1] and "$0.07" in rows[1] and "33.3%" in rows[1]
    assert "spend by role, model, hour - the last 7d" in result.stdout
    assert "$0.21" in result.stdout  # the footer total


def test_csv_and_json_formats(runner: CliRunner, spent: Setup) -> None:
    as_csv = runner.invoke(app, ["report", "--ledger", spent.url, "--format", "csv"])
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [(r["role"], r["model"], r["calls"], r["cost_usd"]) for r in rows] == [
        ("researcher", "m", "20", "0.14"), ("writer", "m", "10", "0.07")]
    as_json = runner.invoke(app, ["report", "--ledger", spent.url, "--format", "json",
                                  "--by", "role", "--role", "writer"])
    data = json.loads(as_json.stdout)
    assert data["total"]["cost_usd"] == "0.07"
    assert data["rows"] == [{
        "role": "writer", "calls": 10, "blocked": 0, "released": 0, "expired": 0,
        "input_tokens": 30, "output_tokens": 7000, "cost_usd": "0.07",
        # reserved 1000 tokens x $10/M = $0.01 per call
        "estimate_usd": "0.1", "avg_cost_usd": "0.007", "share_pct": "100.0"}]


def test_html_report_is_written(runner: CliRunner, spent: Setup) -> None:
    target = spent.dir / "report.html"
    result = runner.invoke(app, ["report", "--ledger", spent.url, "--since", "24h",
                                 "--html", str(target), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert f"wrote {target} (30 spend records)" in result.stderr
    page = target.read_text()
    assert page.count('<figure data-role="') == 2 and "<svg" in page
    assert json.loads(result.stdout)["total"]["calls"] == 30


def test_yesterday_and_iso_windows_read_only_their_records(
    runner: CliRunner, spent: Setup
) -> None:
    now = time.time()
    guard = Guard(str(spent.config), spent.url)
    # A $3 call recorded 30 hours ago, i.e. yesterday or the day before.
    guard.ledger.append_record(SpendRecord(ts=now - 30 * 3600, reservation_id="",
                                           outcome="unguarded", role="writer", model="big",
                                           cost_nano=3_000_000_000))
    day = datetime.fromtimestamp(now - 30 * 3600, timezone.utc).strftime("%Y-%m-%d")
    result = runner.invoke(app, ["report", "--ledger", spent.url, "--since", day,
                                 "--until", datetime.fromtimestamp(now - 3600 * 29, timezone.utc)
                                 .isoformat(), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["total"]["cost_usd"] == "3" and data["rows"][0]["model"] == "big"
    week = json.loads(runner.invoke(app, ["report", "--ledger", spent.url, "--format",
                                          "json"]).stdout)
    assert week["total"]["cost_usd"] == "3.21"
    last_hour = json.loads(runner.invoke(app, ["report", "--ledger", spent.url, "--since",
                                               "1h", "--format", "json"]).stdout)
    assert last_hour["total"]["cost_usd"] == "0.21"


def test_empty_window_and_bad_options_are_clear(runner: CliRunner, spent: Setup) -> None:
    empty = runner.invoke(app, ["report", "--ledger", spent.url, "--role", "nobody"])
    assert empty.exit_code == 1
    assert empty.stderr.strip() == (
        f"crew-budget report: error: no spend records for role 'nobody' in the last 7d in "
        f"ledger {spent.url}; widen --since, or check --ledger points at the ledger your "
        "agents use")
    missing = runner.invoke(app, ["report", "--ledger", f"sqlite:///{spent.dir / 'new.db'}",
                                  "--since", "yesterday"])
    assert missing.exit_code == 3
    assert missing.stderr.strip() == (
        f"crew-budget report: error: no ledger at {spent.dir / 'new.db'}: check --ledger, or "
        "run a guarded call first to create it")
    assert not (spent.dir / "new.db").exists()
    Guard(str(spent.config), f"sqlite:///{spent.dir / 'new.db'}").close()  # made by a guard
    fresh = runner.invoke(app, ["report", "--ledger", f"sqlite:///{spent.dir / 'new.db'}",
                                "--since", "yesterday"])
    assert fresh.exit_code == 1
    assert "no spend records in yesterday in ledger" in fresh.stderr
    bad_by = runner.invoke(app, ["report", "--ledger", spent.url, "--by", "role,agent"])
    assert bad_by.exit_code == 2
    assert "cannot group by 'agent'" in bad_by.output
    bad_since = runner.invoke(app, ["report", "--ledger", spent.url, "--since", "last week"])
    assert bad_since.exit_code == 2
    assert "is not a time; use a duration" in bad_since.output


def test_report_as_a_subprocess(spent: Setup) -> None:
    proc = subprocess.run(
        [*cli_executable(), "report", "--ledger", spent.url, "--by", "role", "--format", "csv"],
        cwd=spent.dir, env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].startswith("researcher,20,0,0,0,60,14000,0.14,")


def test_html_by_hour_over_the_default_week_draws_hourly_bars_with_limits(
    runner: CliRunner, spent: Setup
) -> None:
    target = spent.dir / "hourly.html"
    result = runner.invoke(app, ["report", "--ledger", spent.url, "--by", "role,hour",
                                 "--html", str(target), "--format", "json"])
    assert result.exit_code == 0, result.output
    page = target.read_text()
    assert "Spend over time per role (per hour)" in page
    researcher = page.split('<figure data-role="researcher"')[1].split("</figure>")[0]
    # $0.14 in one hour against a $0.50/hour limit: named, but off the $0.14 scale.
    assert "$0.14 in 20 calls; hourly limit $0.50 (above this scale)" in researcher
    assert researcher.count("<rect") == 1
    hour = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:00")
    assert f"<title>{hour}: $0.14</title>" in researcher
    writer = page.split('<figure data-role="writer"')[1].split("</figure>")[0]
    assert "limit" not in writer  # the writer has a daily budget only
    daily = runner.invoke(app, ["report", "--ledger", spent.url, "--by", "role,day",
                                "--html", str(target), "--format", "json"])
    assert daily.exit_code == 0, daily.output
    page = target.read_text()
    assert "(per day)" in page and 'data-limit="1000000000"' not in page
    assert "daily limit $1.00 (above this scale)" in page


def test_report_reads_rollups_with_no_records_kept(runner: CliRunner, setup: Setup) -> None:
    # records_retention_days: 0 keeps no raw record; the report, by role,
    # model and hour, still shows every call and every nano-dollar.
    setup.config.write_text(setup.config.read_text() + "records_retention_days: 0\n")
    guard = setup.guard()
    spend(guard, "researcher", 20)
    spend(guard, "writer", 10)
    assert guard.ledger.records() == []
    guard.close()
    result = runner.invoke(app, ["report", "--config", str(setup.config), "--ledger", setup.url,
                                 "--by", "role,model,hour", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["source"] == "rollups" and data["records"] == 30
    assert [(r["role"], r["calls"], r["cost_usd"]) for r in data["rows"]] == [
        ("researcher", 20, "0.14"), ("writer", 10, "0.07")]
    assert data["total"]["cost_usd"] == "0.21"
    by_run = runner.invoke(app, ["report", "--config", str(setup.config), "--ledger", setup.url,
                                 "--by", "run"])
    assert by_run.exit_code == 2
    assert ("--by run needs raw spend records, and ledger" in by_run.stderr
            and "keeps none (records_retention_days: 0); group by role, model, crew, scope, "
            "hour or day (hourly rollups), or set records_retention_days"
            in " ".join(by_run.stderr.split()))


def test_report_by_run_says_it_reads_records(runner: CliRunner, spent: Setup) -> None:
    result = runner.invoke(app, ["report", "--config", str(spent.config), "--ledger", spent.url,
                                 "--by", "run,role", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert ("crew-budget report: --by run reads raw spend records, which this ledger keeps "
            "90 days (other keys read hourly rollups, kept 400 days)") in " ".join(
                result.stderr.split())
    data = json.loads(result.stdout)
    assert data["source"] == "records" and data["records_retention_days"] == 90
    assert [(r["role"], r["cost_usd"]) for r in data["rows"]] == [
        ("researcher", "0.14"), ("writer", "0.07")]
