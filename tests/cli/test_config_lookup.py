"""One config lookup order everywhere: the argument (``--config``), then
``$CREW_BUDGET_CONFIG``, then ``./budgets.yaml``.

Two files with different limits (the env file gives the researcher $7/day,
the working directory's $1/day) show which one each entry point picked.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crew_budget.cli import app
from crew_budget.config import find_config
from crew_budget.errors import ConfigError
from tests.cli.conftest import Setup

ENV_BUDGETS = "roles:\n  researcher: {daily: 7}\n"


@pytest.fixture
def env_file(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> Path:
    other = setup.dir / "deploy"
    other.mkdir()
    path = other / "budgets.yaml"
    path.write_text(ENV_BUDGETS)
    monkeypatch.setenv("CREW_BUDGET_CONFIG", str(path))
    return path


def test_find_config_order(setup: Setup, env_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = setup.dir / "explicit.yaml"
    assert find_config(explicit) == explicit                   # 1. the argument
    assert find_config(str(explicit)) == explicit
    assert find_config() == env_file                           # 2. the variable
    monkeypatch.delenv("CREW_BUDGET_CONFIG")
    assert find_config() == Path("budgets.yaml")               # 3. ./budgets.yaml
    monkeypatch.chdir(setup.dir / "deploy")
    (setup.dir / "deploy" / "budgets.yaml").unlink()
    assert find_config() is None
    # A named file that does not exist is returned, so loading it names it.
    monkeypatch.setenv("CREW_BUDGET_CONFIG", "/nonexistent/budgets.yaml")
    assert find_config() == Path("/nonexistent/budgets.yaml")


def _researcher_day_limit(runner: CliRunner, args: list[str]) -> str:
    result = runner.invoke(app, ["status", "--format", "json", *args])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    return next(r["limit_usd"] for r in rows
                if r["scope"] == "role:researcher" and r["window"] == "day")


def test_cli_prefers_the_variable_over_the_working_directory(
    runner: CliRunner, spent: Setup, env_file: Path
) -> None:
    # ./budgets.yaml ($1) is present, but the variable ($7) is what the proxy reads too.
    assert _researcher_day_limit(runner, ["--ledger", spent.url]) == "7"
    assert _researcher_day_limit(runner, ["--ledger", spent.url, "--config",
                                          str(spent.config)]) == "1"


def test_crewai_from_yaml_and_the_proxy_logger_use_the_same_order(
    setup: Setup, env_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crew_budget.crewai import BudgetCallback
    from crew_budget.litellm import BudgetLogger

    monkeypatch.setenv("CREW_BUDGET_LEDGER", "memory://")
    budget = BudgetCallback.from_yaml()
    assert budget.guard.config.roles["researcher"].daily == Decimal(7)
    assert BudgetCallback.from_yaml(setup.config).guard.config.roles[
        "researcher"].daily == Decimal(1)
    logger = BudgetLogger.from_env()
    assert logger.guard.config.roles["researcher"].daily == Decimal(7)
    monkeypatch.delenv("CREW_BUDGET_CONFIG")
    # No variable: the proxy falls back to ./budgets.yaml, like the CLI.
    assert BudgetLogger.from_env().guard.config.roles["researcher"].daily == Decimal(1)
    monkeypatch.chdir(setup.dir / "deploy")
    (setup.dir / "deploy" / "budgets.yaml").unlink()
    with pytest.raises(ConfigError) as err:
        BudgetCallback.from_yaml()
    assert str(err.value) == (
        "BudgetCallback.from_yaml: no budget file: pass BudgetCallback.from_yaml('budgets.yaml'), "
        "set CREW_BUDGET_CONFIG, or put a budgets.yaml in the working directory")
    with pytest.raises(ConfigError, match="CREW_BUDGET_CONFIG is not set and there is no "
                                          r"\./budgets\.yaml"):
        BudgetLogger.from_env()


def test_langchain_and_litellm_sdk_adapters_without_config_use_the_same_order(
    setup: Setup, env_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crew_budget.langchain import BudgetCallbackHandler
    from crew_budget.litellm import BudgetLogger

    monkeypatch.setenv("CREW_BUDGET_LEDGER", "memory://")
    assert BudgetCallbackHandler(role="researcher").guard.config.roles[
        "researcher"].daily == Decimal(7)
    assert BudgetLogger(role="researcher").guard.config.roles["researcher"].daily == Decimal(7)
    monkeypatch.delenv("CREW_BUDGET_CONFIG")               # ./budgets.yaml: $1
    assert BudgetCallbackHandler(role="researcher").guard.config.roles[
        "researcher"].daily == Decimal(1)
    monkeypatch.chdir(setup.dir / "deploy")                 # neither
    (setup.dir / "deploy" / "budgets.yaml").unlink()
    with pytest.raises(ConfigError, match=r"no budget given: .* set CREW_BUDGET_CONFIG"):
        BudgetCallbackHandler(role="researcher")
    with pytest.raises(ConfigError, match=r"no budget given: .* set CREW_BUDGET_CONFIG"):
        BudgetLogger(role="researcher")
