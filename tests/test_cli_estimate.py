"""``crew-budget estimate`` and ``crew-budget cost``, in process and as the console script.

Expected prompt tokens come from the cookbook reference implementation in
tests/test_estimate.py (not from the estimator); dollars are token counts
times the per-token prices genai-prices ships (gpt-4o-mini input 1.5e-07,
cached 7.5e-08, output 6e-07; claude-sonnet-4-5 input 3e-06, cache read
3e-07, cache write 3.75e-06, output 1.5e-05; the same in litellm's map),
asserted against the price book below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from crew_budget.cli import app
from crew_budget.pricing import PriceBook
from tests.test_estimate import num_tokens_from_messages

MINI_IN, MINI_CACHED, MINI_OUT = Decimal("1.5E-7"), Decimal("7.5E-8"), Decimal("6E-7")
SONNET_IN, SONNET_READ, SONNET_WRITE, SONNET_OUT = (
    Decimal("0.000003"), Decimal("3E-7"), Decimal("0.00000375"), Decimal("0.000015"))
CLI = Path(sys.executable).parent / "crew-budget"

MESSAGES = [
    {"role": "system", "content": "You are a careful research assistant."},
    {"role": "user", "content": "List three causes of runaway LLM agent spend."},
]
OPENAI_BODY = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 150}
ANTHROPIC_BODY = {"model": "claude-sonnet-4-5", "system": "Be brief.", "max_tokens": 300,
                  "messages": [{"role": "user", "content": [
                      {"type": "text", "text": "Why cap output tokens?"}]}]}


@pytest.fixture(autouse=True)
def _clean_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No budgets.yaml or $CREW_BUDGET_CONFIG leaks in from the developer's machine."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CREW_BUDGET_CONFIG", raising=False)


def run(args: list[str], stdin: str) -> Any:
    return CliRunner().invoke(app, args, input=stdin)


def lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_prices_are_genai_prices() -> None:
    book = PriceBook()
    assert book.get("gpt-4o-mini").source == book.get("claude-sonnet-4-5").source == (
        "genai-prices")
    mini, sonnet = book.get("gpt-4o-mini"), book.get("claude-sonnet-4-5")
    assert (mini.input, mini.cached_input, mini.output) == (MINI_IN, MINI_CACHED, MINI_OUT)
    assert (sonnet.input, sonnet.cached_input, sonnet.cache_write, sonnet.output) == (
        SONNET_IN, SONNET_READ, SONNET_WRITE, SONNET_OUT)


# -- estimate -------------------------------------------------------------------


def test_estimate_openai_request() -> None:
    result = run(["estimate"], json.dumps(OPENAI_BODY))
    assert result.exit_code == 0, result.stderr
    [out] = lines(result.stdout)
    prompt = num_tokens_from_messages(MESSAGES, "gpt-4o-mini")
    assert out == {
        "model": "gpt-4o-mini",
        "prompt_tokens": prompt,
        "output_tokens_reserved": 150,
        "estimated_usd": out["estimated_usd"],
        "price_source": "genai-prices",
        "priced_as": "gpt-4o-mini",
    }
    assert Decimal(out["estimated_usd"]) == prompt * MINI_IN + 150 * MINI_OUT
    assert "E" not in out["estimated_usd"]  # plain decimal string, not 1.2E-5


def test_estimate_json_lines_one_result_per_request_in_order() -> None:
    body2 = {**OPENAI_BODY, "max_completion_tokens": 40}
    stdin = "\n".join(json.dumps(b) for b in (OPENAI_BODY, ANTHROPIC_BODY, body2)) + "\n\n"
    result = run(["estimate"], stdin)
    assert result.exit_code == 0, result.stderr
    out = lines(result.stdout)
    assert [o["model"] for o in out] == ["gpt-4o-mini", "claude-sonnet-4-5", "gpt-4o-mini"]
    assert [o["output_tokens_reserved"] for o in out] == [150, 300, 40]
    claude = out[1]
    assert Decimal(claude["estimated_usd"]) == (
        claude["prompt_tokens"] * SONNET_IN + 300 * SONNET_OUT)
    # "Be brief." + "Why cap output tokens?" and Claude's framing: a few dozen.
    assert 10 <= claude["prompt_tokens"] <= 40


def test_estimate_reserves_the_roles_cap_when_the_request_has_none(tmp_path: Path) -> None:
    cfg = tmp_path / "budgets.yaml"
    cfg.write_text("roles:\n  researcher: {daily: 5, max_output_tokens: 256}\n"
                   "prices:\n  my-model: {input_per_million: 1, output_per_million: 2, "
                   "tokenizer: cl100k_base}\n")
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    out = lines(run(["estimate", "--config", str(cfg), "--role", "researcher"],
                    json.dumps(body)).stdout)
    assert out[0]["output_tokens_reserved"] == 256
    out = lines(run(["estimate", "--config", str(cfg)], json.dumps(body)).stdout)
    assert out[0]["output_tokens_reserved"] == 4096  # default_max_output_tokens
    # A configured price for a model litellm does not know; ./budgets.yaml is
    # found without --config.
    result = run(["estimate"], json.dumps({"model": "my-model", "messages": MESSAGES}))
    assert result.exit_code == 0, result.stderr
    [mine] = lines(result.stdout)
    assert Decimal(mine["estimated_usd"]) == (
        mine["prompt_tokens"] * Decimal("0.000001") + 4096 * Decimal("0.000002"))


def test_estimate_responses_api_body() -> None:
    body = {"model": "gpt-4o-mini", "instructions": "You are a careful research assistant.",
            "input": "List three causes of runaway LLM agent spend.", "max_output_tokens": 99}
    [out] = lines(run(["estimate"], json.dumps(body)).stdout)
    assert out["output_tokens_reserved"] == 99
    assert out["prompt_tokens"] == num_tokens_from_messages(MESSAGES, "gpt-4o-mini")


@pytest.mark.parametrize(
    ("stdin", "code", "needle"),
    [
        (json.dumps({**OPENAI_BODY, "model": "gpt-nonexistent-9"}), 2, "gpt-nonexistent-9"),
        ('{"model": "gpt-4o-mini", "messages": [', 2, "not valid JSON"),
        (json.dumps({"model": "gpt-4o-mini", "messages": []}), 2, "no messages"),
        (json.dumps({"messages": MESSAGES}), 2, "names no model"),
        (json.dumps({**OPENAI_BODY, "max_tokens": -5}), 2, "positive integer"),
        (json.dumps([1, 2]), 2, "not an object"),
        ("   \n", 2, "stdin is empty"),
    ],
    ids=["unknown-model", "malformed", "no-messages", "no-model", "bad-max-tokens", "array",
         "empty"],
)
def test_estimate_errors_are_one_clear_line(stdin: str, code: int, needle: str) -> None:
    result = run(["estimate"], stdin)
    assert result.exit_code == code
    assert result.stdout == ""  # nothing half-printed
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("crew-budget estimate: error: ")
    assert needle in err


def test_a_failing_json_lines_request_prints_an_error_in_its_place_and_the_batch_goes_on(
) -> None:
    """One bad line (bad JSON, no messages, an unpriced model) no longer loses
    the batch: each prints {"error": ...} where its result would be."""
    stdin = "\n".join([
        json.dumps(OPENAI_BODY),
        "{oops",
        json.dumps({**OPENAI_BODY, "model": "gpt-nonexistent-9"}),
        "",
        json.dumps(ANTHROPIC_BODY),
        json.dumps({"model": "gpt-4o-mini", "messages": []}),
    ]) + "\n"
    result = run(["estimate"], stdin)
    assert result.exit_code == 1
    out = lines(result.stdout)
    assert len(out) == 5  # one per non-empty line, in order
    assert out[0]["prompt_tokens"] == num_tokens_from_messages(MESSAGES, "gpt-4o-mini")
    assert out[1]["line"] == 2 and "line 2 is not valid JSON" in out[1]["error"]
    assert out[2]["line"] == 3 and "no price known for model 'gpt-nonexistent-9'" in (
        out[2]["error"])
    assert out[3]["output_tokens_reserved"] == 300 and out[3]["priced_as"] == "claude-sonnet-4-5"
    assert out[4] == {"error": 'request on line 6 has no messages; it needs a non-empty '
                               '"messages" list (OpenAI chat completions or Anthropic messages '
                               'format)', "line": 6}
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("crew-budget estimate: error: 3 of 5 requests failed")
    assert "first, line 2" in err


def test_estimate_provider_and_base_url_hints() -> None:
    """Names priced only by one provider's list need the hint; with it, that
    list prices them (genai-prices groq llama-3.1-8b-instant: $0.05 / $0.08 per M)."""
    body = {"model": "llama-3.1-8b-instant", "messages": MESSAGES, "max_tokens": 100}
    bare = run(["estimate"], json.dumps(body))
    assert bare.exit_code == 2
    assert "groq/llama-3.1-8b-instant" in bare.stderr  # the suggestion says how to write it
    for args in (["--provider", "groq"], ["--base-url", "https://api.groq.com/openai/v1"]):
        result = run(["estimate", *args], json.dumps(body))
        assert result.exit_code == 0, result.stderr
        [out] = lines(result.stdout)
        assert (out["price_source"], out["priced_as"]) == ("genai-prices", "llama-3.1-8b-instant")
        assert Decimal(out["estimated_usd"]) == (
            out["prompt_tokens"] * Decimal("5E-8") + 100 * Decimal("8E-8"))


def test_estimate_request_service_tier_prices_the_reservation() -> None:
    body = {"model": "gpt-5", "messages": MESSAGES, "max_completion_tokens": 1000}
    [standard] = lines(run(["estimate"], json.dumps(body)).stdout)
    [flex] = lines(run(["estimate"], json.dumps({**body, "service_tier": "flex"})).stdout)
    # gpt-5 standard $1.25 in / $10 out per M; flex $0.625 / $5 (genai-prices).
    assert Decimal(standard["estimated_usd"]) == (
        standard["prompt_tokens"] * Decimal("0.00000125") + 1000 * Decimal("0.00001"))
    assert Decimal(flex["estimated_usd"]) == (
        flex["prompt_tokens"] * Decimal("0.000000625") + 1000 * Decimal("0.000005"))


def test_estimate_unknown_model_names_the_fix() -> None:
    result = run(["estimate"], json.dumps({**OPENAI_BODY, "model": "gpt-nonexistent-9"}))
    assert "prices:" in result.stderr


def test_estimate_bad_config_is_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("roles:\n  x: {daily: -1}\n")
    result = run(["estimate", "--config", str(cfg)], json.dumps(OPENAI_BODY))
    assert result.exit_code == 2
    assert "negative" in result.stderr


# -- cost -----------------------------------------------------------------------


def test_cost_openai_usage_with_cache() -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 200,
             "prompt_tokens_details": {"cached_tokens": 400}}
    result = run(["cost", "--model", "gpt-4o-mini"], json.dumps(usage))
    assert result.exit_code == 0, result.stderr
    [out] = lines(result.stdout)
    # 600 x 1.5e-07 + 400 x 7.5e-08 + 200 x 6e-07 = 0.00009 + 0.00003 + 0.00012
    assert out == {"model": "gpt-4o-mini", "cost_usd": "0.00024", "input_tokens": 600,
                   "cached_input_tokens": 400, "cache_write_tokens": 0, "output_tokens": 200,
                   "reasoning_tokens": 0, "price_source": "genai-prices",
                   "priced_as": "gpt-4o-mini"}


def test_cost_gemini_long_context_tier_and_provider_hint() -> None:
    usage = {"promptTokenCount": 300_000, "candidatesTokenCount": 100}
    [out] = lines(run(["cost", "-m", "gemini-2.5-pro"], json.dumps(usage)).stdout)
    assert out["cost_usd"] == "0.7515"  # 300,000 x $2.50/M + 100 x $15/M (> 200k tier)
    result = run(["cost", "-m", "llama-3.1-8b-instant", "--provider", "groq"],
                 '{"prompt_tokens": 1000, "completion_tokens": 100}')
    assert json.loads(result.stdout)["cost_usd"] == "0.000058"  # 1000 x 0.05/M + 100 x 0.08/M


def test_cost_anthropic_response_takes_model_from_json() -> None:
    response = {"model": "claude-sonnet-4-5", "type": "message",
                "usage": {"input_tokens": 50, "cache_read_input_tokens": 1000,
                          "cache_creation_input_tokens": 200, "output_tokens": 100}}
    [out] = lines(run(["cost"], json.dumps(response)).stdout)
    # 50 x 3e-06 + 1000 x 3e-07 + 200 x 3.75e-06 + 100 x 1.5e-05
    assert Decimal(out["cost_usd"]) == Decimal("0.00015") + Decimal("0.0003") + Decimal(
        "0.00075") + Decimal("0.0015")
    assert (out["input_tokens"], out["cached_input_tokens"], out["cache_write_tokens"]) == (
        50, 1000, 200)


@pytest.mark.parametrize(
    ("args", "stdin", "code", "needle"),
    [
        (["--model", "gpt-4o-mini"], '{"foo": 1}', 2, "no token counts"),
        (["--model", "gpt-4o-mini"], "{nope", 2, "not valid JSON"),
        (["--model", "gpt-nonexistent-9"], '{"prompt_tokens": 5, "completion_tokens": 1}', 2,
         "gpt-nonexistent-9"),
        ([], '{"prompt_tokens": 5}', 2, "--model"),
        (["--model", "gpt-4o-mini"], '{"prompt_tokens": -3}', 2, "non-negative"),
    ],
    ids=["no-counts", "malformed", "unknown-model", "no-model", "negative"],
)
def test_cost_errors_are_one_clear_line(args: list[str], stdin: str, code: int,
                                        needle: str) -> None:
    result = run(["cost", *args], stdin)
    assert result.exit_code == code
    assert result.stdout == ""
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("crew-budget cost: error: ")
    assert needle in err


# -- the installed console script ---------------------------------------------


def _script(args: list[str], stdin: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CREW_BUDGET_CONFIG"}
    return subprocess.run([str(CLI), *args], input=stdin, capture_output=True, text=True,
                          timeout=60, env=env)


def test_console_script_estimate_and_cost() -> None:
    assert CLI.is_file()
    proc = _script(["estimate"], json.dumps(OPENAI_BODY) + "\n" + json.dumps(ANTHROPIC_BODY))
    assert proc.returncode == 0, proc.stderr
    out = lines(proc.stdout)
    assert out[0]["prompt_tokens"] == num_tokens_from_messages(MESSAGES, "gpt-4o-mini")
    assert out[1]["output_tokens_reserved"] == 300
    proc = _script(["cost", "-m", "gpt-4o-mini"],
                   '{"prompt_tokens": 1000, "completion_tokens": 10}')
    assert proc.returncode == 0, proc.stderr
    # 1000 x 1.5e-07 + 10 x 6e-07
    assert json.loads(proc.stdout)["cost_usd"] == "0.000156"


def test_console_script_error_exit_code_and_stderr() -> None:
    proc = _script(["estimate"], '{"model": "gpt-4o-mini"}')
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "no messages" in proc.stderr
