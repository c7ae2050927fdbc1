"""Shadow mode's would-be blocks, shown where budgets are read: rollups, ``report``
(table, JSON, HTML), ``status``, Prometheus metrics and the dashboard data.

``mode: shadow`` with researcher ``daily: "0.005"``; each researcher call is
gpt-4o with 1000 prompt tokens (400 cached) and 100 out: $0.003 (genai-prices:
$2.50 / $1.25 cached / $10 per million, pinned in tests/test_suggest.py), and
reserves ~$0.002 (``max_tokens=200``). So the first call fits, and the next
three would each have been blocked ($0.003 spent + ~$0.002 > $0.005, and
more after): 3 shadow-blocked calls, $0.009, all sent. A fourth would-be
block is released (the provider was never reached): not counted.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from crew_budget import Guard
from crew_budget.ledger.base import SHADOW_KEY
from crew_budget.metrics import register_metrics
from crew_budget.report import build_report, shadow_summary
from tests.cli.conftest import cli_executable, subprocess_env
from tests.test_metrics import samples

CONFIG: dict[str, Any] = {
    "mode": "shadow",
    "roles": {"researcher": {"daily": "0.005"}, "writer": {"daily": 1}},
}
MSG = [{"role": "user", "content": "Summarise the findings."}]
USAGE = {"prompt_tokens": 1000, "completion_tokens": 100,
         "prompt_tokens_details": {"cached_tokens": 400}}
EXPECTED = {"calls": 3, "cost_usd": "0.009",
            "by_role": [{"role": "researcher", "calls": 3, "cost_usd": "0.009"}]}


def traffic(guard: Guard) -> None:
    for _ in range(4):
        t = guard.preflight("researcher", "gpt-4o", MSG, max_tokens=200)
        guard.settle(t, USAGE)
    t = guard.preflight("researcher", "gpt-4o", MSG, max_tokens=200)
    assert SHADOW_KEY in t.metadata
    guard.release(t)
    t = guard.preflight("writer", "gpt-4o", MSG, max_tokens=200)
    guard.settle(t, USAGE)  # a writer call well within its budget: no shadow


@pytest.fixture(params=["sqlite", "redis"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def test_rollups_reports_and_metrics_count_the_would_be_blocks(ledger_url: str) -> None:
    guard = Guard(CONFIG, ledger_url, start_alerts=False)
    calls_registry, ledger_registry = CollectorRegistry(), CollectorRegistry()
    register_metrics(guard, calls_registry)
    register_metrics(guard, ledger_registry, source="ledger", since=guard.ledger.now() - 1)
    traffic(guard)
    assert guard.counters["shadow_blocked"] == 4  # the released one was flagged too
    rollups = guard.ledger.rollups()
    assert sum(r.shadow_blocked for r in rollups) == 3
    assert sum(r.shadow_blocked_nano for r in rollups) == 9_000_000
    assert sum(r.cost_nano for r in rollups) == 15_000_000  # 5 calls charged, none blocked
    assert sum(r.blocked for r in rollups) == 0
    assert shadow_summary(rollups).to_dict() == EXPECTED
    assert shadow_summary(guard.ledger.records()).to_dict() == EXPECTED  # the same from records
    report = build_report(rollups, ["role"])
    report.shadow = shadow_summary(rollups)
    assert json.loads(report.to_json())["shadow_blocked"] == EXPECTED
    for registry in (calls_registry, ledger_registry):
        got = samples(registry)
        who = (("role", "researcher"),)
        assert got[("crew_budget_shadow_blocked_total", who)] == 3
        assert got[("crew_budget_shadow_blocked_usd_total", who)] == 0.009
        assert ("crew_budget_shadow_blocked_total", (("role", "writer"),)) not in got


def test_a_caller_cannot_forge_the_shadow_mark(tmp_path: Path) -> None:
    guard = Guard({"roles": {"r": {"daily": 1}}}, f"sqlite:///{tmp_path / 'l.db'}",
                  start_alerts=False)
    t = guard.preflight("r", "gpt-4o", MSG, max_tokens=200, metadata={SHADOW_KEY: "fake|day"})
    guard.settle(t, USAGE)
    [record] = guard.ledger.records()
    assert SHADOW_KEY not in record.metadata
    assert sum(r.shadow_blocked for r in guard.ledger.rollups()) == 0


def test_the_dashboard_data_shows_them(tmp_path: Path) -> None:
    from crew_budget.serve.data import snapshot

    guard = Guard(CONFIG, f"sqlite:///{tmp_path / 'l.db'}", start_alerts=False)
    traffic(guard)
    assert snapshot(guard).to_dict()["shadow_blocked"] == EXPECTED


@pytest.fixture(scope="module")
def cli_ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    path = tmp_path_factory.mktemp("shadow")
    config = path / "budgets.yaml"
    config.write_text("mode: shadow\nroles:\n  researcher: {daily: \"0.005\"}\n"
                      "  writer: {daily: 1}\n")
    url = f"sqlite:///{path / 'ledger.db'}"
    traffic(Guard(str(config), url, start_alerts=False))
    return url, config


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli_executable(), *args], capture_output=True, text=True,
                          env=subprocess_env(), timeout=120, check=False)


LINE = ("shadow mode: 3 calls ($0.009) would have been blocked and were sent anyway: "
        "researcher 3 ($0.009)")


def test_report_shows_them_in_the_table_json_and_html(cli_ledger: tuple[str, Path],
                                                      tmp_path: Path) -> None:
    url, config = cli_ledger
    table = cli("report", "--config", str(config), "--ledger", url)
    assert table.returncode == 0, table.stderr
    assert LINE in table.stdout
    as_json = cli("report", "--config", str(config), "--ledger", url, "--format", "json",
                  "--html", str(tmp_path / "r.html"))
    assert json.loads(as_json.stdout)["shadow_blocked"] == EXPECTED
    assert f'<p data-shadow="3">{LINE}</p>' in (tmp_path / "r.html").read_text()
    by_outcome = cli("report", "--config", str(config), "--ledger", url, "--format", "json",
                     "--by", "outcome")  # read from raw records: the same numbers
    assert json.loads(by_outcome.stdout)["shadow_blocked"] == EXPECTED


def test_status_shows_todays(cli_ledger: tuple[str, Path]) -> None:
    url, config = cli_ledger
    done = cli("status", "--config", str(config), "--ledger", url)
    assert done.returncode == 0, done.stderr
    assert f"today: {LINE}" in done.stdout
    only_writer = cli("status", "--config", str(config), "--ledger", url, "--role", "writer")
    assert "shadow mode" not in only_writer.stdout



def test_export_of_rollups_carries_them(cli_ledger: tuple[str, Path]) -> None:
    url, config = cli_ledger
    done = cli("export", "--config", str(config), "--ledger", url, "--kind", "rollups",
               "--since", "2d", "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    shadow = [(r["role"], r["shadow_blocked"], r["shadow_blocked_usd"], r["shadow_blocked_nano"])
              for r in rows if r["shadow_blocked"]]
    assert shadow == [("researcher", 3, "0.009000000", 9_000_000)]  # export's 9 decimals
