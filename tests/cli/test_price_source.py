"""Every status and report row says which price source priced it and under what name.

Resolved against the real price data shipped in the installed packages (no
network): ``anthropic/claude-sonnet-4-20250514`` is genai-prices' Anthropic
entry ``claude-sonnet-4-0``; ``m`` is the budget YAML's ``prices:`` entry
(``config``); ``ai21.j2-mid-v1`` (a Bedrock id) is only in litellm's map.
"""

from __future__ import annotations

import csv
import io
import json

from typer.testing import CliRunner

from crew_budget.cli import app
from crew_budget.pricing import PriceBook
from crew_budget.report import PriceSource, price_sources
from tests.cli.conftest import Setup

CLAUDE = "anthropic/claude-sonnet-4-20250514"
LITELLM_ONLY = "ai21.j2-mid-v1"
EXPECTED = [  # sorted by model name
    {"model": LITELLM_ONLY, "price_source": "litellm", "priced_as": LITELLM_ONLY},
    {"model": CLAUDE, "price_source": "genai-prices (anthropic)", "priced_as": "claude-sonnet-4-0"},
    {"model": "m", "price_source": "config", "priced_as": "m"},
]


def _spend_three_models(setup: Setup) -> None:
    guard = setup.guard()
    for model in ("m", CLAUDE, LITELLM_ONLY):
        ticket = guard.preflight("researcher", model, [{"role": "user", "content": "x"}],
                                 max_tokens=10)
        guard.settle(ticket, {"prompt_tokens": 3, "completion_tokens": 5})
    ticket = guard.preflight("writer", "m", [{"role": "user", "content": "x"}], max_tokens=10)
    guard.settle(ticket, {"prompt_tokens": 3, "completion_tokens": 5})
    guard.close()


def test_price_sources_from_the_shipped_data() -> None:
    book = PriceBook({"m": {"input_per_million": 0, "output_per_million": 10}})
    found = price_sources([CLAUDE, LITELLM_ONLY, "m", "gpt-4o-mini", "no-such-model-xyz"], book)
    assert found[CLAUDE] == PriceSource(CLAUDE, "genai-prices", "claude-sonnet-4-0", "anthropic")
    assert found["gpt-4o-mini"].label == "genai-prices (openai)"
    assert found[LITELLM_ONLY] == PriceSource(LITELLM_ONLY, "litellm", LITELLM_ONLY, "bedrock")
    assert found["m"] == PriceSource("m", "config", "m", None)
    # A recorded model no source prices (any more): said plainly, not hidden.
    unknown = found["no-such-model-xyz"]
    assert (unknown.source, unknown.priced_as) == ("unpriced", "")
    assert unknown.error is not None and "no-such-model-xyz" in unknown.error
    assert list(found) == sorted(found)


def test_status_json_lists_each_rows_models_with_their_price_source(
    runner: CliRunner, setup: Setup
) -> None:
    _spend_three_models(setup)
    result = runner.invoke(app, ["status", "--ledger", setup.url, "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {(r["scope"], r["window"]): r for r in json.loads(result.stdout)}
    assert rows[("role:researcher", "day")]["models"] == EXPECTED
    assert rows[("role:researcher", "hour")]["models"] == EXPECTED
    assert rows[("role:writer", "day")]["models"] == [EXPECTED[2]]
    assert rows[("crew:team", "day")]["models"] == EXPECTED


def test_status_table_prints_the_models_and_what_priced_them(
    runner: CliRunner, setup: Setup
) -> None:
    _spend_three_models(setup)
    result = runner.invoke(app, ["status", "--ledger", setup.url])
    assert result.exit_code == 0, result.output
    assert "models in these windows, and what priced them" in result.stdout
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert f"{CLAUDE} genai-prices (anthropic) claude-sonnet-4-0" in lines
    assert f"{LITELLM_ONLY} litellm {LITELLM_ONLY}" in lines
    assert "m config m" in lines


def test_report_rows_json_csv_and_table_say_what_priced_them(
    runner: CliRunner, setup: Setup
) -> None:
    _spend_three_models(setup)
    as_json = runner.invoke(app, ["report", "--ledger", setup.url, "--format", "json",
                                  "--by", "model", "--sort", "key"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert [(r["model"], r["price_source"], r["priced_as"]) for r in data["rows"]] == [
        (e["model"], e["price_source"], e["priced_as"]) for e in EXPECTED]
    assert [(p["model"], p["source"], p["provider"]) for p in data["prices"]] == [
        (LITELLM_ONLY, "litellm", "bedrock"), (CLAUDE, "genai-prices", "anthropic"),
        ("m", "config", None)]
    # Grouped without the model, rows keep their columns; the models are listed once.
    by_role = json.loads(runner.invoke(app, ["report", "--ledger", setup.url, "--format",
                                             "json", "--by", "role"]).stdout)
    assert all("price_source" not in r for r in by_role["rows"])
    assert [p["model"] for p in by_role["prices"]] == [e["model"] for e in EXPECTED]
    as_csv = runner.invoke(app, ["report", "--ledger", setup.url, "--format", "csv",
                                 "--by", "role,model", "--sort", "key"])
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [(r["role"], r["model"], r["price_source"], r["priced_as"]) for r in rows] == [
        ("researcher", LITELLM_ONLY, "litellm", LITELLM_ONLY),
        ("researcher", CLAUDE, "genai-prices (anthropic)", "claude-sonnet-4-0"),
        ("researcher", "m", "config", "m"),
        ("writer", "m", "config", "m")]
    table = runner.invoke(app, ["report", "--ledger", setup.url])
    assert table.exit_code == 0, table.output
    assert "models in this report, and what priced them" in table.stdout
    lines = [" ".join(line.split()) for line in table.stdout.splitlines()]
    assert f"{CLAUDE} genai-prices (anthropic) claude-sonnet-4-0" in lines


def test_html_report_names_the_price_source_of_each_model(
    runner: CliRunner, setup: Setup
) -> None:
    _spend_three_models(setup)
    page_path = setup.dir / "report.html"
    result = runner.invoke(app, ["report", "--ledger", setup.url, "--html", str(page_path),
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    page = page_path.read_text()
    assert '<th class="k">price source</th><th class="k">priced as</th>' in page
    assert ('<td class="k">genai-prices (anthropic)</td><td class="k">claude-sonnet-4-0</td>'
            in page)
    assert '<td class="k">config</td><td class="k">m</td>' in page
