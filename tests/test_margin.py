"""The estimate margin (crew_budget.margin): learned per model family from
settles, stored in the ledger, capped, and enough to keep a limit whole."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from crew_budget import BudgetExceeded, Guard
from crew_budget.estimate import Estimator
from crew_budget.margin import margin_bin, model_family, quantile_bin

MODEL = "acme-model"
FAMILY = "openai/acme-model"
# $1 / $2 per million tokens: 1,000 and 2,000 nano-USD per token, exact.
PRICES = {MODEL: {"input_per_million": 1, "output_per_million": 2, "provider": "openai",
                  "tokenizer": "o200k_base"}}
OUT = 100  # max_tokens of every call, and what each call writes (no output slack)


def config(margin: dict[str, Any] | None = None, **roles: Any) -> dict[str, Any]:
    return {"prices": PRICES, "roles": roles or {"warm": {"daily": 1000}},
            "estimate_margin": margin or {}}


@pytest.mark.parametrize(("model", "provider", "price_provider", "family"), [
    ("claude-sonnet-4-20250514", None, "anthropic", "anthropic/claude-sonnet-4"),
    ("claude-sonnet-4-0", None, "anthropic", "anthropic/claude-sonnet-4"),
    ("anthropic/claude-sonnet-4-5-20250929", None, "anthropic", "anthropic/claude-sonnet-4-5"),
    ("claude-3-5-haiku-latest", None, "anthropic", "anthropic/claude-3-5-haiku"),
    ("gpt-4o-2024-08-06", None, "openai", "openai/gpt-4o"),
    ("gpt-4o-mini", None, "openai", "openai/gpt-4o-mini"),
    ("gpt-4-0613", None, "openai", "openai/gpt-4"),
    ("gpt-4.1-nano", "openai", "openai", "openai/gpt-4.1-nano"),
    ("bedrock/us.anthropic.claude-3-5-sonnet-20241022-v2:0", None, "anthropic",
     "aws/claude-3-5-sonnet"),  # genai-prices' provider id for Bedrock
    ("meta-llama/Llama-3.3-70B-Instruct-Turbo", "https://api.together.xyz/v1", "other",
     "together/llama-3.3-70b-instruct-turbo"),
    ("meta-llama/Llama-3.1-8B-Instruct", None, "other", "other/llama-3.1-8b-instruct"),
    ("openrouter/qwen/qwen3-vl-8b-instruct", None, "other", "openrouter/qwen3-vl-8b-instruct"),
    ("gemma3:4b", None, "other", "other/gemma3"),
    ("gemini-2.5-pro-preview-05-06", "gemini", "google", "google/gemini-2.5-pro"),
])
def test_a_model_family_is_the_provider_and_the_model_line(
        model: str, provider: str | None, price_provider: str, family: str) -> None:
    assert model_family(model, provider, price_provider) == family


def test_sample_bins_and_the_quantile_are_integer_exact() -> None:
    assert margin_bin(100, 90) == 0  # over-estimates count, as zero
    assert margin_bin(100, 100) == 0
    assert margin_bin(100, 101) == 2  # 1 % -> (0.5 %, 1 %]
    assert margin_bin(1000, 1001) == 1  # 0.1 % rounds up to the first 0.5 % bin
    assert margin_bin(100, 110) == 20
    assert margin_bin(100, 500) == 200  # 100 % and more share the last bin
    bins = {0: 10, 4: 5, 20: 4, 60: 1}  # 20 samples
    assert quantile_bin(bins, Decimal("0.95")) == 20  # rank 19 of 20
    assert quantile_bin(bins, Decimal("0.5")) == 0  # rank 10
    assert quantile_bin(bins, Decimal("0.51")) == 4  # rank 11
    assert quantile_bin(bins, Decimal("1")) == 60
    assert quantile_bin({}, Decimal("0.95")) == 0


def _messages_with_round_count(guard: Guard, multiple: int = 20) -> tuple[list[Any], int]:
    """A prompt whose raw count is a multiple of ``multiple`` (so 10 % of it is whole)."""
    price = guard.price(MODEL)
    for k in range(40, 200):
        messages = [{"role": "user", "content": "budget " * k}]
        raw = Estimator().count_prompt(MODEL, price, messages, calibrated=False)
        if raw % multiple == 0:
            return messages, raw
    raise AssertionError("no prompt length gave a round count")


def _settle_table(guard: Guard, messages: list[Any], actuals: list[int],
                  role: str = "warm") -> None:
    for actual in actuals:
        ticket = guard.preflight(role, MODEL, messages, max_tokens=OUT)
        guard.settle(ticket, {"prompt_tokens": actual, "completion_tokens": OUT})


def _hand_quantile(raw: int, actuals: list[int], q: Fraction) -> Fraction:
    """The nearest-rank quantile of max(0, actual/raw - 1), rounded up to 0.5 %."""
    under = sorted(max(Fraction(0), Fraction(a, raw) - 1) for a in actuals)
    value = under[math.ceil(q * len(under)) - 1]
    return Fraction(min(math.ceil(value * 200), 200), 200)


def test_the_learned_margin_is_the_quantile_computed_by_hand() -> None:
    guard = Guard(config({"quantile": "0.95", "max": "0.5", "min_samples": 20}), "memory://")
    messages, raw = _messages_with_round_count(guard)
    # 20 settles: 8 over-estimates, 12 under by 1..12 % of the raw count.
    actuals = [raw - 3] * 8 + [raw + raw * k // 100 for k in range(1, 13)]
    _settle_table(guard, messages, actuals[:19])
    assert guard.margins.view(FAMILY).samples == 19
    assert guard.margins.view(FAMILY).active is False  # 19 < min_samples
    ticket = guard.preflight("warm", MODEL, messages, max_tokens=OUT)
    assert ticket.margin_tokens == 0  # not active yet: only the calibration applies
    guard.settle(ticket, {"prompt_tokens": actuals[19], "completion_tokens": OUT})
    view = guard.margins.view(FAMILY)
    expected = _hand_quantile(raw, actuals, Fraction(95, 100))
    assert Fraction(1, 10) <= expected <= Fraction(12, 100)  # rank 19 of 20: the ~11 % sample
    assert (view.samples, view.active, view.learned, view.margin) == (20, True, expected,
                                                                      expected)
    # A fresh guard (no in-process calibration) on the same ledger, once the
    # samples still pending here are merged (every 16 settles, or on close),
    # reserves raw x (1 + margin) prompt tokens: dollars = prompt x $1/M + 100 x $2/M.
    assert guard.margins.flush() and guard.margins.pending() == 0
    fresh = Guard(config({"quantile": "0.95", "max": "0.5", "min_samples": 20}), guard.ledger)
    t = fresh.preflight("warm", MODEL, messages, max_tokens=OUT)
    reserved_prompt = raw + math.ceil(raw * expected)
    assert (t.prompt_tokens, t.margin_tokens, t.counted_prompt_tokens) == (
        raw, reserved_prompt - raw, raw)
    assert t.estimate == Decimal(reserved_prompt * 1000 + OUT * 2000) / 10**9
    assert t.margin_family == FAMILY


def test_the_margin_is_capped_by_max() -> None:
    guard = Guard(config({"max": "0.25", "min_samples": 20}), "memory://")
    messages, raw = _messages_with_round_count(guard)
    _settle_table(guard, messages, [raw * 14 // 10] * 20)  # 40 % under, every time
    view = guard.margins.view(FAMILY)
    assert (view.learned, view.margin, view.capped) == (Fraction(2, 5), Fraction(1, 4), True)
    guard.margins.flush()
    fresh = Guard(config({"max": "0.25", "min_samples": 20}), guard.ledger)
    t = fresh.preflight("warm", MODEL, messages, max_tokens=OUT)
    assert t.margin_tokens == raw // 4
    assert t.estimate == Decimal((raw + raw // 4) * 1000 + OUT * 2000) / 10**9


def test_disabled_or_exact_settles_learn_nothing() -> None:
    guard = Guard(config({"enabled": False}), "memory://")
    messages, raw = _messages_with_round_count(guard)
    _settle_table(guard, messages, [raw * 2] * 25)
    assert guard.margins.pending() == 0
    assert guard.margins.view(FAMILY).samples == 0
    assert guard.preflight("warm", MODEL, messages, max_tokens=OUT).margin_tokens == 0


def test_a_repeated_settle_is_one_sample() -> None:
    guard = Guard(config(), "memory://")
    messages, raw = _messages_with_round_count(guard)
    ticket = guard.preflight("warm", MODEL, messages, max_tokens=OUT)
    usage = {"prompt_tokens": raw + 10, "completion_tokens": OUT}
    guard.settle(ticket, usage)
    guard.settle(ticket, usage)
    assert guard.margins.view(FAMILY).samples == 1


@pytest.fixture(params=["sqlite", "redis"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        yield request.getfixturevalue("redis_url")


def _margin_in_new_process(url: str) -> dict[str, Any]:
    code = ("import json, sys\n"
            "from crew_budget import Guard\n"
            "cfg = json.loads(sys.argv[1])\n"
            "g = Guard(cfg, sys.argv[2])\n"
            "v = g.margins.view(sys.argv[3])\n"
            "print(json.dumps({'margin': str(v.margin), 'samples': v.samples, "
            "'active': v.active}))\n"
            "g.close()\n")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(config()), url, FAMILY],
                         capture_output=True, text=True, timeout=120, check=True)
    return dict(json.loads(out.stdout))


def test_the_margin_survives_a_new_process_on_the_same_ledger(ledger_url: str) -> None:
    guard = Guard(config(), ledger_url)
    messages, raw = _messages_with_round_count(guard)
    _settle_table(guard, messages, [raw + raw // 10] * 12 + [raw] * 8)
    guard.close()  # merges what is still pending
    # p95 of 12 samples 10 % under and 8 exact: 10 %, in a process that never settled.
    assert _hand_quantile(raw, [raw + raw // 10] * 12 + [raw] * 8,
                          Fraction(95, 100)) == Fraction(1, 10)
    assert _margin_in_new_process(ledger_url) == {"margin": "1/10", "samples": 20,
                                                  "active": True}


def test_systematic_under_estimates_stay_within_the_limit_once_learned(
        ledger_url: str) -> None:
    """Every call bills 10 % more prompt than estimated and writes its whole
    ``max_tokens``: the reservation has no slack left to hide the error."""
    warm = Guard(config(), ledger_url)
    messages, raw = _messages_with_round_count(warm)
    actual = raw + raw // 10
    true_cost = actual * 1000 + OUT * 2000  # nano-USD
    plain_reserve = raw * 1000 + OUT * 2000  # what an estimate without margin reserves
    _settle_table(warm, messages, [actual] * 20)
    warm.close()

    # Without the margin (a fresh process: no calibration yet), one call that
    # fits its reservation exactly overruns the limit by 10 % of its prompt.
    limit = Decimal(plain_reserve) / 10**9
    off = Guard(config({"enabled": False}, tight={"daily": str(limit)}), ledger_url)
    ticket = off.preflight("tight", MODEL, messages, max_tokens=OUT)
    assert ticket.estimate == limit
    off.settle(ticket, {"prompt_tokens": actual, "completion_tokens": OUT})
    spent = off.status("tight")[0].spent
    assert spent == Decimal(true_cost) / 10**9
    assert spent - limit == Decimal(raw // 10 * 1000) / 10**9  # the overrun, in dollars
    off.close()

    # With it: the reservation is the true cost, so three calls fit, the
    # fourth is refused, and committed spend never passes the limit.
    limit2 = Decimal(3 * true_cost + plain_reserve) / 10**9
    on = Guard(config(tight2={"daily": str(limit2)}), ledger_url)
    committed: list[Decimal] = []
    for _ in range(4):
        try:
            t = on.preflight("tight2", MODEL, messages, max_tokens=OUT)
        except BudgetExceeded as exc:
            assert exc.estimate == Decimal(true_cost) / 10**9
            break
        assert t.estimate == Decimal(true_cost) / 10**9
        on.settle(t, {"prompt_tokens": actual, "completion_tokens": OUT})
        row = on.status("tight2")[0]
        committed.append(row.spent + row.reserved)
    assert committed == [Decimal(k * true_cost) / 10**9 for k in (1, 2, 3)]
    assert max(committed) <= limit2
    on.close()


def test_status_shows_each_family_margin_and_samples(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from crew_budget.cli import app

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    cfg = tmp_path / "budgets.yaml"
    cfg.write_text(json.dumps(config()))  # JSON is YAML
    guard = Guard(str(cfg), url)
    messages, raw = _messages_with_round_count(guard)
    _settle_table(guard, messages, [raw + raw // 10] * 12 + [raw] * 8)
    guard.close()
    result = CliRunner().invoke(app, ["status", "--config", str(cfg), "--ledger", url],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    margins = result.stdout.split("estimate margins")[1]
    assert "p95 of prompt under-estimation per model family, capped at 100 %" in margins
    row = next(line for line in margins.splitlines() if FAMILY in line)
    assert [c.strip() for c in row.split("│")[1:5]] == [FAMILY, "10.0 %", "10.0 %", "20"]


def test_a_family_without_enough_settles_uses_its_providers_margin() -> None:
    prices = {**PRICES, "acme-rare": PRICES[MODEL]}
    cfg = {**config(), "prices": prices}
    guard = Guard(cfg, "memory://")
    messages, raw = _messages_with_round_count(guard)
    _settle_table(guard, messages, [raw + raw // 10] * 20)
    guard.margins.flush()
    assert guard.margins.view("openai/*").samples == 20
    assert guard.margins.view("openai/acme-rare").samples == 0
    t = Guard(cfg, guard.ledger).preflight("warm", "acme-rare", messages, max_tokens=OUT)
    assert (t.margin_family, t.margin_tokens) == ("openai/acme-rare", raw // 10)
    assert t.estimate == Decimal((raw + raw // 10) * 1000 + OUT * 2000) / 10**9


def test_the_redis_margin_script_refuses_bad_samples_before_any_write(redis_url: str) -> None:
    from crew_budget.errors import AmountError
    from crew_budget.ledger.redis import RedisLedger

    led = RedisLedger(redis_url, namespace="margin-validation")
    try:
        assert led.margin_merge(FAMILY, {3: 2}, 100) == {3: 2}
        for bad in ({201: 1}, {3: -1}, {-1: 1}):
            with pytest.raises(AmountError, match="refused a bad value before writing"):
                led.margin_merge(FAMILY, bad, 100)
        with pytest.raises(AmountError, match="needs a family of 1 to 200 bytes"):
            led.margin_merge("x" * 201, {3: 1}, 100)
        assert led.margin_read(None) == {FAMILY: {3: 2}}  # unchanged
    finally:
        led.close()
