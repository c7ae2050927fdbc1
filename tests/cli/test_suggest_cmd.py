"""``crew-budget suggest`` and ``crew-budget report --what-if``, run as the real
installed binary over a SQLite ledger filled through preflight and settle.

The history and its dollars are those of tests/test_suggest.py (ten UTC days
from 2026-11-01: researcher 21 gpt-4o calls at $0.003, $0.00018 each on
gpt-4o-mini; writer 5 gpt-4o-mini calls at $0.0006 and one blocked call).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from crew_budget.config import BudgetConfig
from tests.cli.conftest import cli_executable, subprocess_env
from tests.test_suggest import fill, sqlite_guard

SINCE, UNTIL = "2026-11-01T00:00:00+00:00", "2026-11-11T00:00:00+00:00"


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("suggest")
    guard, at = sqlite_guard(path)
    fill(guard, at)
    return f"sqlite:///{path / 'ledger.db'}"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli_executable(), *args], capture_output=True, text=True,
                          env=subprocess_env(), timeout=120, check=False)


def test_suggest_prints_yaml_ready_to_paste(ledger: str, tmp_path: Path) -> None:
    done = cli("suggest", "--ledger", ledger, "--since", SINCE, "--until", UNTIL)
    assert done.returncode == 0, done.stderr
    data = yaml.safe_load(done.stdout)
    assert data == {
        "global": {"daily": "0.02", "hourly": "0.012"},
        "crew": {"name": "pair", "daily": "0.02", "hourly": "0.012"},
        "roles": {"researcher": {"daily": "0.019", "hourly": "0.012"},
                  "writer": {"daily": "0.00075"}},
    }
    assert ('    daily: "0.00075"  # p95 $0.0006/day, peak $0.0006 on 2026-11-06, 1 blocked '
            'call, 5 days of data (too short to trust)') in done.stdout
    assert "# WARNING: fewer than 7 days of history for role writer" in done.stdout
    # Pasted as is, it is a budget file `validate` accepts.
    target = tmp_path / "budgets.yaml"
    target.write_text(done.stdout)
    assert BudgetConfig.model_validate(yaml.safe_load(target.read_text())).roles[
        "writer"].daily is not None
    checked = cli("validate", str(target))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_suggest_json_and_headroom(ledger: str) -> None:
    done = cli("suggest", "--ledger", ledger, "--since", SINCE, "--until", UNTIL,
               "--headroom", "1.5", "--format", "json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["headroom"] == "1.5"
    [researcher, writer] = data["roles"]
    # 0.015 x 1.5 = 0.0225 -> 0.023; peak hour 0.009 x 1.5 = 0.0135 -> 0.014
    assert (researcher["name"], researcher["daily"], researcher["hourly"],
            researcher["days"], researcher["calls"]) == ("researcher", "0.023", "0.014", 10, 21)
    assert (writer["daily"], writer["blocked"], writer["too_short"]) == ("0.0009", 1, True)


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--headroom", "0.9"], 2, "'0.9' is not a number from 1 to 100"),
    (["--headroom", "lots"], 2, "'lots' is not a number from 1 to 100"),
    (["--format", "toml"], 2, "use yaml or json"),
])
def test_suggest_refuses_bad_options(ledger: str, args: list[str], code: int,
                                     message: str) -> None:
    done = cli("suggest", "--ledger", ledger, *args)
    assert done.returncode == code
    assert message in done.stderr


def test_suggest_on_a_period_without_calls(ledger: str) -> None:
    done = cli("suggest", "--ledger", ledger, "--since", "2026-10-01", "--until", "2026-10-20")
    assert done.returncode == 1
    assert "crew-budget suggest: error: no calls in since 2026-10-01" in done.stderr
    assert "nothing to suggest from; widen --since" in done.stderr


def test_report_what_if_json(ledger: str) -> None:
    done = cli("report", "--ledger", ledger, "--since", SINCE, "--until", UNTIL,
               "--format", "json", "--what-if", "gpt-4o=gpt-4o-mini",
               "--what-if", "o3=o4-mini")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["total"]["cost_usd"] == "0.066"  # the report itself is unchanged
    assert data["what_if"] == {
        "substitutions": ["gpt-4o=gpt-4o-mini", "o3=o4-mini"],
        "rows": [{"role": "researcher", "model": "gpt-4o", "substitute": "gpt-4o-mini",
                  "calls": 21, "input_tokens": 21000, "output_tokens": 2100,
                  "cost_usd": "0.063", "repriced_usd": "0.063", "what_if_usd": "0.00378",
                  "saving_usd": "0.05922", "saving_pct": "94.0"}],
        "total": {"calls": 21, "input_tokens": 21000, "output_tokens": 2100,
                  "cost_usd": "0.063", "repriced_usd": "0.063", "what_if_usd": "0.00378",
                  "saving_usd": "0.05922", "saving_pct": "94.0"},
        "unmatched": ["o3=o4-mini"],
    }


def test_report_what_if_table(ledger: str) -> None:
    done = cli("report", "--ledger", ledger, "--since", SINCE, "--until", UNTIL,
               "--what-if", "gpt-4o=gpt-4o-mini", "--what-if", "o3=o4-mini")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "what if gpt-4o=gpt-4o-mini, o3=o4-mini - since" in out
    [row] = [line for line in out.splitlines()
             if line.startswith("│ researcher") and "gpt-4o-mini" in line]
    cells = [c.strip() for c in row.strip("│").split("│")]
    assert cells == ["researcher", "gpt-4o", "gpt-4o-mini", "21", "$0.063", "$0.063",
                     "$0.00378", "$0.05922", "94.0%"]
    assert "what if o3=o4-mini: no calls to o3 in since" in out


def test_report_what_if_with_an_unknown_substitute(ledger: str) -> None:
    done = cli("report", "--ledger", ledger, "--since", SINCE, "--until", UNTIL,
               "--what-if", "gpt-4o=gpt-4o-mimi")
    assert done.returncode == 2
    assert done.stderr.startswith("crew-budget report: error: --what-if: no price known for "
                                  "model 'gpt-4o-mimi'. Did you mean: gpt-4o-mini")


@pytest.mark.parametrize(("args", "message"), [
    (["--what-if", "gpt-4o"], "--what-if 'gpt-4o' is not MODEL=SUBSTITUTE"),
    (["--what-if", "a=a"], "substitutes a model for itself"),
    (["--what-if", "a=b", "--format", "csv"], "--what-if prints a table or JSON"),
])
def test_report_what_if_usage_errors(ledger: str, args: list[str], message: str) -> None:
    done = cli("report", "--ledger", ledger, *args)
    assert done.returncode == 2
    assert message in " ".join(done.stderr.split())



def test_report_what_if_in_the_html_page(ledger: str, tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    done = cli("report", "--ledger", ledger, "--since", SINCE, "--until", UNTIL,
               "--what-if", "gpt-4o=gpt-4o-mini", "--html", str(target), "--format", "json")
    assert done.returncode == 0, done.stderr
    page = target.read_text()
    assert page.count('<h2 id="what-if">What if gpt-4o=gpt-4o-mini</h2>') == 1
    assert page.index('id="what-if"') < page.index("</body></html>")
    assert ('<tr><td class="k">researcher</td><td class="k">gpt-4o</td><td class="k">'
            "gpt-4o-mini</td><td>21</td><td>$0.063</td><td>$0.063</td><td>$0.00378</td>"
            "<td>$0.05922</td><td>94.0%</td></tr>") in page


def test_suggest_and_what_if_on_redis(redis_url: str) -> None:
    """The same commands on a Redis ledger (dated by Redis TIME: one day of
    history): 3 researcher calls at $0.003 and the writer's $0.0006."""
    from crew_budget import BudgetExceeded, Guard
    from tests.test_suggest import CONFIG, MSG, R_USAGE, W_USAGE

    guard = Guard(CONFIG, redis_url, start_alerts=False)
    for _ in range(3):
        guard.settle(guard.preflight("researcher", "gpt-4o", MSG, max_tokens=200), R_USAGE)
    guard.settle(guard.preflight("writer", "gpt-4o-mini", MSG, max_tokens=600), W_USAGE)
    with pytest.raises(BudgetExceeded):
        guard.preflight("writer", "gpt-4o-mini", MSG, max_tokens=1000)
    done = cli("suggest", "--ledger", redis_url, "--since", "2h", "--format", "json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert [(r["name"], r["calls"], r["blocked"], r["cost_usd"], r["daily"], r["days"])
            for r in data["roles"]] == [("researcher", 3, 0, "0.009", "0.012", 1),
                                        ("writer", 1, 1, "0.0006", "0.00075", 1)]
    report = cli("report", "--ledger", redis_url, "--since", "2h", "--format", "json",
                 "--what-if", "gpt-4o=gpt-4o-mini")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["what_if"]["total"] == {
        "calls": 3, "input_tokens": 3000, "output_tokens": 300, "cost_usd": "0.009",
        "repriced_usd": "0.009", "what_if_usd": "0.00054", "saving_usd": "0.00846",
        "saving_pct": "94.0"}
