"""``crew-budget validate``: files that budget nothing, and ``--crew module:attr``."""

from __future__ import annotations

import subprocess
from decimal import Decimal

import pytest
from typer.testing import CliRunner

from crew_budget.cli import app
from tests.cli.conftest import Setup, cli_executable, spend, subprocess_env

CREW_MODULE = '''
from crewai import LLM, Agent, Crew, Task


def build() -> Crew:
    agents = [Agent(role=role, goal="g", backstory="b", llm=LLM(model="gpt-4o-mini"))
              for role in ("Senior Researcher", "writer", "Fact Checker")]
    return Crew(agents=agents, tasks=[Task(description="d", expected_output="o", agent=a)
                                      for a in agents])


crew = build()
'''


def error(result: object) -> str:
    return str(getattr(result, "stderr", "")).strip()


@pytest.mark.parametrize("text", ["", "\n\n", "# budgets go here\n", "---\n"])
def test_an_empty_file_is_an_error(runner: CliRunner, setup: Setup, text: str) -> None:
    setup.config.write_text(text)
    result = runner.invoke(app, ["validate", str(setup.config)])
    assert result.exit_code == 2
    assert error(result) == (
        f"crew-budget validate: error: {setup.config}: the file is empty (or only comments), "
        "which would mean no budgets at all; write at least one of roles:, default_role:, "
        "crew: or global: (see examples/budgets.yaml)")


def test_a_file_without_any_limit_or_role_is_an_error(runner: CliRunner, setup: Setup) -> None:
    setup.config.write_text("timezone: Europe/Berlin\n")
    result = runner.invoke(app, ["validate", str(setup.config)])
    assert result.exit_code == 2
    assert error(result) == (
        f"crew-budget validate: error: {setup.config}: sets no budget at all (no roles:, "
        "default_role:, crew: or global:), so it would limit nothing; add at least one")
    setup.config.write_text("crew: {name: team, daily: 5}\n")
    result = runner.invoke(app, ["validate", str(setup.config)])
    assert result.exit_code == 2
    assert "lists no roles: and no default_role:, so every call would be refused" in (
        error(result))
    setup.config.write_text("crew: {name: team, daily: 5}\nunknown_roles: allow\n")
    result = runner.invoke(app, ["validate", str(setup.config)])
    assert result.exit_code == 0, result.output
    assert ("  roles not listed: allowed, charged to crew/global budgets only "
            "(unknown_roles: allow)") in result.stdout.splitlines()


def test_validate_reports_aliases_and_the_unknown_role_policy(
    runner: CliRunner, setup: Setup
) -> None:
    setup.config.write_text("roles:\n  researcher: {daily: 1, aliases: [Senior Researcher]}\n")
    result = runner.invoke(app, ["validate", str(setup.config)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1] == "  role researcher: daily $1.00, aliases Senior Researcher"
    assert "  roles not listed: refused (UnknownRoleError)" in lines


def test_crew_option_lists_agent_roles_that_match_no_budget(
    runner: CliRunner, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # CrewAI's OpenAI class wants one to build
    (setup.dir / "crew_for_validate_a.py").write_text(CREW_MODULE)
    setup.config.write_text("roles:\n  researcher: {daily: 1}\n  writer: {daily: 1}\n")
    result = runner.invoke(app, ["validate", str(setup.config), "--crew",
                                 "crew_for_validate_a:crew"])
    assert result.exit_code == 2
    assert error(result).startswith(
        "crew-budget validate: error: --crew crew_for_validate_a:crew: this crew has agent "
        "roles that match no budget under roles: 'Senior Researcher' (closest: 'researcher'), "
        "'Fact Checker'; configured roles: researcher, writer. Nothing was attached")

    setup.config.write_text("roles:\n  researcher: {daily: 1, aliases: [senior researcher]}\n"
                            "  writer: {daily: 1}\n  fact checker: {daily: 1}\n")
    result = runner.invoke(app, ["validate", str(setup.config), "--crew",
                                 "crew_for_validate_a:build"])  # a function returning one
    assert result.exit_code == 0, result.output
    assert (
        "  crew crew_for_validate_a:build: 3 role(s) budgeted: Senior Researcher -> "
        "researcher, writer, Fact Checker -> fact checker") in result.stdout.splitlines()


@pytest.mark.parametrize(("spec", "message"), [
    ("nocolon", "--crew 'nocolon': write MODULE:ATTR, e.g. myapp.crew:crew"),
    ("no_such_module_xyz:crew", "--crew no_such_module_xyz:crew: cannot load it "
     "(ModuleNotFoundError: No module named 'no_such_module_xyz'); check the module path"),
    ("crew_for_validate_b:nope", "--crew crew_for_validate_b:nope: cannot load it "
     "(AttributeError: module 'crew_for_validate_b' has no attribute 'nope')"),
    ("crew_for_validate_b:NUMBER", "--crew crew_for_validate_b:NUMBER: is a int, not a CrewAI "
     "Crew (or a function returning one)"),
])
def test_crew_option_mistakes(
    runner: CliRunner, setup: Setup, spec: str, message: str
) -> None:
    (setup.dir / "crew_for_validate_b.py").write_text("NUMBER = 3\n")
    result = runner.invoke(app, ["validate", str(setup.config), "--crew", spec])
    assert result.exit_code == 2
    assert message in error(result)


def test_reset_resolves_the_role_name_like_a_call(runner: CliRunner, spent: Setup) -> None:
    result = runner.invoke(app, ["reset", "--role", " RESEARCHER", "--window", "day", "--yes",
                                 "--ledger", spent.url])
    assert result.exit_code == 0, result.output
    assert "reset role:researcher day" in result.stdout and "(was $0.14)" in result.stdout
    typo = runner.invoke(app, ["reset", "--role", "reseacher", "--yes", "--ledger", spent.url])
    assert typo.exit_code == 2
    assert "role 'reseacher' has no budget" in error(typo)
    assert "closest match: 'researcher'" in error(typo)


def test_validate_refuses_a_duplicate_key_from_the_installed_script(setup: Setup) -> None:
    setup.config.write_text("roles:\n  researcher: {daily: 1}\ncrew: {daily: 5}\n"
                            "roles:\n  writer: {daily: 2}\n")
    result = subprocess.run([*cli_executable(), "validate", str(setup.config)],
                            capture_output=True, text=True, env=subprocess_env(), check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"crew-budget validate: error: {setup.config}: roles: line 4: duplicate key 'roles' "
        "(first set on line 1); YAML would silently keep only the last one, so merge them "
        "into one entry")


def test_default_role_spend_is_one_scope_in_status(runner: CliRunner, setup: Setup) -> None:
    setup.config.write_text(setup.config.read_text() + "default_role: {daily: 1}\n")
    guard = setup.guard()
    spend(guard, "intern", 2)   # 2 x $0.007
    spend(guard, "auditor", 1)  # $0.007: the same budget, not a fresh one
    day = {s.scope: s.spent for s in guard.status() if s.window == "day"}
    guard.close()
    assert day == {"role:researcher": 0, "role:writer": 0, "role:default_role": Decimal("0.021"),
                   "crew:team": Decimal("0.021")}
    result = runner.invoke(app, ["status", "--ledger", setup.url, "--role", "intern"])
    assert result.exit_code == 0, result.output
    assert "role:default_role" in result.stdout and "role:intern" not in result.stdout
