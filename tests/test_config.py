"""Configuration: exact money, and errors that name the file, key path and fix."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from crew_budget import BudgetConfig, ConfigError, load_config
from crew_budget.config import budgets_json_schema, default_ledger_url

SCHEMA = Path(__file__).resolve().parents[1] / "src" / "crew_budget" / "budgets.schema.json"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "budgets.yaml"
    path.write_text(text)
    return path


def test_full_example_loads(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            """
timezone: Europe/Berlin
ledger: redis://localhost:6379/0
fail_open: false
crew: {name: research, daily: 20, monthly: "300"}
global: {monthly: 1000}
roles:
  researcher: {daily: "5.00", hourly: 1, max_output_tokens: 1024}
  writer: {daily: 2.5}
default_role: {daily: 1}
prices:
  my-finetune: {input_per_million: 0.3, output_per_million: 1.2}
""",
        )
    )
    assert cfg.roles["researcher"].daily == Decimal(5)
    assert cfg.roles["writer"].daily == Decimal("2.5")
    assert cfg.crew is not None and cfg.crew.monthly == Decimal(300)
    assert cfg.global_limits is not None and cfg.global_limits.monthly == Decimal(1000)
    assert cfg.max_output_tokens("researcher") == 1024
    assert cfg.max_output_tokens("writer") == 4096
    assert cfg.role_budget("someone-else") == cfg.default_role


@pytest.mark.parametrize("spelling", ["5", "5.0", '"5.00"', "'5'"])
def test_money_spellings_are_the_same_five_dollars(tmp_path: Path, spelling: str) -> None:
    cfg = load_config(write(tmp_path, f"roles: {{r: {{daily: {spelling}}}}}"))
    assert cfg.roles["r"].daily == Decimal(5)


@pytest.mark.parametrize(
    ("yaml_text", "path", "fix"),
    [
        ("roles: {r: {daily: -1}}", "roles.r.daily", "is negative"),
        ("roles: {r: {daily: lots}}", "roles.r.daily", "is not a dollar amount (write e.g. 5"),
        ("roles: {r: {weekly: 5}}", "roles.r.weekly", "hourly, daily, monthly"),
        ("crew: {daily: 5, yearly: 9}", "crew.yearly", "use hourly, daily, monthly or per_run"),
        ("budgets: {}", "budgets", "known keys"),
        ("ledger: postgres://x/y", "ledger", "memory://, sqlite:///"),
        ("ledger: 'sqlite://'", "ledger", "names no file"),
        ("timezone: Mars/Olympus", "timezone", "IANA name"),
        ("prices: {m: {input_per_million: 1}}", "prices.m.output_per_million", "missing"),
        ("roles: {r: {max_output_tokens: 0}}", "roles.r.max_output_tokens",
         "greater than or equal to 1"),
    ],
)
def test_bad_input_names_file_key_path_and_fix(
    tmp_path: Path, yaml_text: str, path: str, fix: str
) -> None:
    file = write(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(file)
    message = str(info.value)
    assert str(file) in message
    assert info.value.path == path
    assert f": {path}: " in message
    assert fix in message


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    file = write(tmp_path, "roles:\n  r: {daily: 5\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+: not valid YAML"):
        load_config(file)


def test_top_level_must_be_a_mapping_and_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_ledger_url_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = load_config({"ledger": "memory://"})
    assert cfg.ledger_url() == "memory://"
    monkeypatch.setenv("CREW_BUDGET_LEDGER", "redis://h:6379/1")
    assert cfg.ledger_url() == "redis://h:6379/1"
    monkeypatch.delenv("CREW_BUDGET_LEDGER")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert BudgetConfig().ledger_url() == default_ledger_url()
    assert default_ledger_url() == f"sqlite:///{tmp_path}/crew-budget/ledger.db"


def test_code_limits_can_only_tighten_yaml_limits() -> None:
    cfg = load_config({"roles": {"r": {"daily": 5, "hourly": 1}}})
    tighter = cfg.with_role_limits("r", daily=3, hourly=2)
    assert tighter.roles["r"].daily == Decimal(3)  # code is stricter
    assert tighter.roles["r"].hourly == Decimal(1)  # YAML is stricter
    assert cfg.roles["r"].daily == Decimal(5)  # the original is untouched
    new = cfg.with_role_limits("other", monthly="9.99")
    assert new.roles["other"].monthly == Decimal("9.99")


def test_shipped_json_schema_matches_the_models() -> None:
    """Editors validate YAML against this file; it must not drift from the code."""
    assert json.loads(SCHEMA.read_text()) == budgets_json_schema()
