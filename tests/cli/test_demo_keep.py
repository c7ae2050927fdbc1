"""``crew-budget demo --keep``: the demo's spend can be read right afterwards
with ``status`` and ``report`` (the default demo deletes its ledger).

Dollars from the cassette (see tests/crewai/test_demo.py): router $0.0000174,
researcher five calls $0.010365, blocked once; crew total $0.0103824.
"""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from tests.cli.conftest import cli_executable, subprocess_env

pytestmark = pytest.mark.slow

ROUTER, RESEARCHER = Decimal("0.0000174"), Decimal("0.010365")


def _cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    offline = subprocess_env(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
                             NO_PROXY="", **env)
    offline.pop("OPENAI_API_KEY", None)
    return subprocess.run([*cli_executable(), *args], cwd=cwd, env=offline, capture_output=True,
                          text=True, timeout=300, check=False)


def test_demo_keep_leaves_a_ledger_status_and_report_can_read(tmp_path: Path) -> None:
    demo = _cli(tmp_path, "demo", "--keep")
    assert demo.returncode == 0, demo.stderr[-3000:]
    kept = tmp_path / "crew-budget-demo"
    assert "Stopped: crew.kickoff() raised CrewBudgetExceeded" in demo.stdout
    assert f"ledger: sqlite:///{kept.resolve() / 'ledger.db'}" in demo.stdout
    assert "CREW_BUDGET_CONFIG=crew-budget-demo/budgets.yaml crew-budget status" in demo.stdout
    env = {"CREW_BUDGET_CONFIG": "crew-budget-demo/budgets.yaml"}
    status = _cli(tmp_path, "status", "--format", "json", **env)
    assert status.returncode == 0, status.stderr
    day = {r["scope"]: Decimal(r["spent_usd"]) for r in json.loads(status.stdout)
           if r["window"] == "day"}
    assert day == {"role:router": ROUTER, "role:researcher": RESEARCHER,
                   "role:writer": Decimal(0), "crew:research-demo": ROUTER + RESEARCHER}
    report = _cli(tmp_path, "report", "--by", "role", "--format", "json", **env)
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert Decimal(data["total"]["cost_usd"]) == ROUTER + RESEARCHER
    assert {r["role"]: (r["calls"], r["blocked"]) for r in data["rows"]} == {
        "researcher": (5, 1), "router": (1, 0)}
    # A second --keep run would start over an exhausted budget: refused, nothing touched.
    again = _cli(tmp_path, "demo", "--keep")
    assert again.returncode == 2
    assert again.stderr.strip() == (
        "crew-budget demo: error: ./crew-budget-demo exists from an earlier run; delete it "
        "(rm -r crew-budget-demo) or run the demo from another directory")
    both = _cli(tmp_path, "demo", "--keep", "--ledger", "memory://")
    assert both.returncode == 2 and "pass one or the other" in both.stderr
