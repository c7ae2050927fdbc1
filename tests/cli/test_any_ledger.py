"""Every ledger-reading command against every persistent backend (SQLite, Redis).

Same spend as the other CLI tests: researcher 20 x $0.007, writer 10 x $0.007.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from crew_budget import Guard
from crew_budget.cli import app
from tests.cli.conftest import Setup, spend


@pytest.fixture(params=["sqlite", "redis"])
def ledger_url(request: pytest.FixtureRequest, setup: Setup) -> str:
    if request.param == "sqlite":
        return setup.url
    return str(request.getfixturevalue("redis_url"))


def test_every_command_on_every_backend(runner: CliRunner, setup: Setup, ledger_url: str) -> None:
    guard = Guard(str(setup.config), ledger_url)
    spend(guard, "researcher", 20)
    spend(guard, "writer", 10)

    status = runner.invoke(app, ["status", "--ledger", ledger_url, "--format", "json"])
    assert status.exit_code == 0, status.output
    rows = {(r["scope"], r["window"]): r["spent_usd"] for r in json.loads(status.stdout)}
    assert rows == {("role:researcher", "hour"): "0.14", ("role:researcher", "day"): "0.14",
                    ("role:writer", "day"): "0.07", ("crew:team", "day"): "0.21"}

    report = runner.invoke(app, ["report", "--ledger", ledger_url, "--format", "json",
                                 "--by", "role"])
    assert report.exit_code == 0, report.output
    assert [(r["role"], r["cost_usd"]) for r in json.loads(report.stdout)["rows"]] == [
        ("researcher", "0.14"), ("writer", "0.07")]

    metrics = runner.invoke(app, ["metrics", "--once", "--ledger", ledger_url])
    assert metrics.exit_code == 0, metrics.output
    assert ('crew_budget_calls_total{outcome="allowed",role="writer"} 10.0'
            in metrics.stdout)

    watch = runner.invoke(app, ["watch", "--ledger", ledger_url, "--iterations", "1"])
    assert watch.exit_code == 0, watch.output
    assert "role:researcher" in watch.stdout

    reset = runner.invoke(app, ["reset", "--role", "writer", "--yes", "--ledger", ledger_url])
    assert reset.exit_code == 0, reset.output
    after = {(s.scope, s.window): str(s.spent) for s in guard.status()}
    assert after[("role:writer", "day")] == "0"
    assert after[("crew:team", "day")] == "0.21"
    resets = [r for r in guard.ledger.records() if r.outcome == "reset"]
    assert [(r.scope, r.cost_nano) for r in resets] == [("role:writer", -70_000_000)]
    guard.close()
