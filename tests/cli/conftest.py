"""A budget file and a SQLite ledger with known spend, for the CLI tests.

Output-only price: model ``m`` costs $10 per million output tokens, so a call
settling 700 completion tokens costs 700 * 10 / 1e6 = $0.007. The fixture
makes 20 researcher calls ($0.14) and 10 writer calls ($0.07), total $0.21.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crew_budget import Guard

BUDGETS = """\
roles:
  researcher: {daily: 1, hourly: "0.50"}
  writer: {daily: 2}
crew: {name: team, daily: 5}
prices:
  m: {input_per_million: 0, output_per_million: 10}
"""


@dataclass
class Setup:
    dir: Path
    config: Path
    url: str

    def guard(self) -> Guard:
        return Guard(str(self.config), self.url)


def spend(guard: Guard, role: str, calls: int, completion: int = 700) -> None:
    for _ in range(calls):
        ticket = guard.preflight(role, "m", [{"role": "user", "content": "x"}], max_tokens=1000)
        guard.settle(ticket, {"prompt_tokens": 3, "completion_tokens": completion})


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CREW_BUDGET_CONFIG", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    config = tmp_path / "budgets.yaml"
    config.write_text(BUDGETS)
    return Setup(tmp_path, config, f"sqlite:///{tmp_path / 'ledger.db'}")


@pytest.fixture
def spent(setup: Setup) -> Setup:
    guard = setup.guard()
    spend(guard, "researcher", 20)
    spend(guard, "writer", 10)
    guard.close()
    return setup


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def cli_executable() -> list[str]:
    """The installed console script (what users run)."""
    script = Path(sys.executable).with_name("crew-budget")
    assert script.exists(), f"{script} missing: pip install -e . installs it"
    return [str(script)]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREW_BUDGET_")}
    env.update({"COLUMNS": "200", **extra})
    return env
