"""Commands that read the books never create a ledger.

``status --ledger sqlite:///missing/dir/typo.db`` used to create the file and
its directories, show $0.00 and exit 0: a typo looked like an empty budget.
Now every ledger command (status, watch, report, metrics, reset) exits 3
naming the path and the fix, and the filesystem is left exactly as it was.
``Guard(...)`` in library code still creates its ledger, as before.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crew_budget import Guard
from crew_budget.cli import app
from crew_budget.errors import LedgerNotFound
from crew_budget.ledger import open_ledger
from tests.cli.conftest import Setup, cli_executable, subprocess_env

COMMANDS = {
    "status": ["status"],
    "watch": ["watch", "--iterations", "1"],
    "report": ["report"],
    "metrics": ["metrics", "--once"],
    "reset": ["reset", "--role", "researcher", "--yes"],
}


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_missing_sqlite_ledger_is_exit_3_and_nothing_is_created(
    runner: CliRunner, setup: Setup, command: str
) -> None:
    before = tree(setup.dir)
    missing_file = setup.dir / "typo.db"
    missing_dir = setup.dir / "missing" / "dir" / "typo.db"
    for path in (missing_file, missing_dir):
        result = runner.invoke(app, [*COMMANDS[command], "--ledger", f"sqlite:///{path}"])
        assert result.exit_code == 3, result.output
        assert result.stdout == ""
        assert result.stderr == (
            f"crew-budget {command}: error: no ledger at {path}: check --ledger, or run a "
            "guarded call first to create it\n")
    assert tree(setup.dir) == before  # no file, no directory, no -wal/-shm


def test_the_fix_names_where_the_url_came_from(
    runner: CliRunner, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = tree(setup.dir)
    relative = "sqlite:///nowhere/typo.db"  # relative to the working directory
    env = runner.invoke(app, ["status"], env={"CREW_BUDGET_LEDGER": relative})
    assert env.exit_code == 3
    assert env.stderr == (f"crew-budget status: error: no ledger at {setup.dir}/nowhere/typo.db: "
                          "check CREW_BUDGET_LEDGER, or run a guarded call first to create it\n")
    setup.config.write_text(setup.config.read_text() + "ledger: sqlite:///nowhere/typo.db\n")
    in_file = runner.invoke(app, ["report"])
    assert in_file.exit_code == 3
    assert in_file.stderr == (
        f"crew-budget report: error: no ledger at {setup.dir}/nowhere/typo.db: check ledger: "
        "in budgets.yaml, or run a guarded call first to create it\n")
    monkeypatch.setenv("XDG_STATE_HOME", str(setup.dir / "state"))
    setup.config.write_text(setup.config.read_text().replace(
        "ledger: sqlite:///nowhere/typo.db\n", ""))
    default = runner.invoke(app, ["status"])
    assert default.exit_code == 3
    assert default.stderr == (
        f"crew-budget status: error: no ledger at {setup.dir}/state/crew-budget/ledger.db: check "
        "the default ledger (set --ledger or CREW_BUDGET_LEDGER), or run a guarded call first "
        "to create it\n")
    assert tree(setup.dir) == before


def test_a_file_that_is_not_a_ledger_is_refused_and_left_untouched(
    runner: CliRunner, setup: Setup
) -> None:
    other = setup.dir / "other-app.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
    before = other.read_bytes()
    result = runner.invoke(app, ["status", "--ledger", f"sqlite:///{other}"])
    assert result.exit_code == 3
    assert result.stderr.startswith(f"crew-budget status: error: no ledger at {other}: ")
    assert other.read_bytes() == before
    with sqlite3.connect(other) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    assert tables == ["notes"]


def test_an_existing_ledger_is_read_and_a_guard_still_creates_one(
    runner: CliRunner, spent: Setup
) -> None:
    ok = runner.invoke(app, ["status", "--ledger", spent.url, "--format", "json"])
    assert ok.exit_code == 0 and '"spent_usd": "0.14"' in ok.stdout
    fresh = spent.dir / "new" / "sub" / "ledger.db"
    guard = Guard(str(spent.config), f"sqlite:///{fresh}")  # library default: create
    guard.close()
    assert fresh.is_file()
    empty = runner.invoke(app, ["report", "--ledger", f"sqlite:///{fresh}"])
    assert empty.exit_code == 1  # exists, no spend yet: "nothing to show", not "no ledger"
    assert "no spend records in the last 7d" in empty.stderr


def test_open_ledger_create_false(tmp_path: Path) -> None:
    path = tmp_path / "d" / "x.db"
    with pytest.raises(LedgerNotFound) as info:
        open_ledger(f"sqlite:///{path}", create=False)
    assert info.value.path == str(path)
    assert not (tmp_path / "d").exists()
    open_ledger(f"sqlite:///{path}").close()  # the default creates it
    reopened = open_ledger(f"sqlite:///{path}", create=False)
    assert reopened.records() == []
    reopened.close()
    memory = open_ledger("memory://", create=False)  # nothing to create up front
    assert memory.records() == []


def test_missing_ledger_as_a_subprocess(setup: Setup) -> None:
    path = setup.dir / "missing" / "typo.db"
    proc = subprocess.run(
        [*cli_executable(), "status", "--ledger", f"sqlite:///{path}"],
        cwd=setup.dir, env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 3
    assert proc.stdout == ""
    assert proc.stderr == (f"crew-budget status: error: no ledger at {path}: check --ledger, or "
                           "run a guarded call first to create it\n")
    assert not (setup.dir / "missing").exists()
