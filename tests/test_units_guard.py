"""Token and call limits through the Guard (issue 12, item 3).

``input_tokens:``, ``output_tokens:`` and ``calls:`` beside the dollars, in
the YAML of roles, crew, global and model budgets; reserved in the same
atomic step; refusals that name the unit; ``status`` rows in counts; the
on-exceed policies (downgrade does not apply to a token or call limit;
shadow records it). The prompt tokens a call reserves are what
``Guard.estimate`` says (never numbers of our estimator written in here).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import crew_budget
from crew_budget import BudgetExceeded, Guard
from crew_budget.guard import GuardEvent

PRICES = {
    "big": {"input_per_million": 100, "output_per_million": 400, "tokenizer": "o200k_base"},
    "small": {"input_per_million": 1, "output_per_million": 2, "tokenizer": "o200k_base"},
}
MESSAGES = [{"role": "user", "content": "Summarise the state of solid-state batteries."}]
USAGE = {"prompt_tokens": 1000, "completion_tokens": 100,
         "prompt_tokens_details": {"cached_tokens": 400},
         "completion_tokens_details": {"reasoning_tokens": 30}}




def make(ledger: str, **cfg: Any) -> tuple[Guard, list[GuardEvent]]:
    g = Guard({"prices": PRICES, **cfg}, ledger, start_alerts=False)
    events: list[GuardEvent] = []
    g.add_listener(events.append)
    return g, events


def row(g: Guard, scope: str, unit: str, window: str = "day") -> tuple[Decimal, ...]:
    (r,) = [s for s in g.status() if s.scope == scope and s.unit == unit and s.window == window]
    assert r.limit is not None and r.remaining is not None
    return r.limit, r.spent, r.reserved, r.remaining


def test_each_unit_is_reserved_and_settled_beside_the_dollars(ledger_url: str) -> None:
    g, _ = make(ledger_url, roles={"researcher": {
        "daily": 5, "input_tokens": {"daily": "2_000_000"}, "output_tokens": {"hourly": 50_000},
        "calls": {"daily": 500}}}, crew={"name": "lab", "calls": {"daily": 1000}})
    prompt = g.estimate("researcher", "small", MESSAGES, max_tokens=300).prompt_tokens
    t = g.preflight("researcher", "small", MESSAGES, max_tokens=300)
    assert row(g, "role:researcher", "input_tokens") == (2_000_000, 0, prompt, 2_000_000 - prompt)
    assert row(g, "role:researcher", "output_tokens", "hour") == (50_000, 0, 300, 49_700)
    assert row(g, "role:researcher", "calls") == (500, 0, 1, 499)
    assert row(g, "crew:lab", "calls") == (1000, 0, 1, 999)
    g.settle(t, USAGE)
    # The prompt as billed (cached tokens included), output with reasoning, one call.
    assert row(g, "role:researcher", "input_tokens") == (2_000_000, 1000, 0, 1_999_000)
    assert row(g, "role:researcher", "output_tokens", "hour") == (50_000, 100, 0, 49_900)
    assert row(g, "role:researcher", "calls") == (500, 1, 0, 499)
    assert row(g, "crew:lab", "calls") == (1000, 1, 0, 999)
    # The dollars are untouched by units: 600 uncached + 400 cached (no cached
    # price: the input rate) x $1/M + 100 x $2/M.
    (usd,) = [s for s in g.status() if s.scope == "role:researcher" and s.unit == "usd"]
    assert usd.spent == Decimal("0.0012")
    # Releases book no call.
    g.release(g.preflight("researcher", "small", MESSAGES, max_tokens=300))
    assert row(g, "role:researcher", "calls") == (500, 1, 0, 499)
    # Public buckets() stay dollars unless asked (alerts, metrics, dashboards).
    assert {b.unit for b in g.buckets("researcher")} == {"usd"}
    assert {b.unit for b in g.buckets("researcher", units=True)} == {
        "usd", "input_tokens", "output_tokens", "calls"}
    g.close()


def test_an_input_token_limit_refuses_naming_the_unit(ledger_url: str) -> None:
    g, events = make(ledger_url, roles={"researcher": {
        "daily": 5, "input_tokens": {"daily": 1_000}}})
    prompt = g.estimate("researcher", "small", MESSAGES, max_tokens=10).prompt_tokens
    for _ in range(1_000 // prompt):
        g.settle(g.preflight("researcher", "small", MESSAGES, max_tokens=10),
                 {"prompt_tokens": prompt, "completion_tokens": 1})
    used = (1_000 // prompt) * prompt
    day = g.status()[0].period
    with pytest.raises(BudgetExceeded) as info:
        g.preflight("researcher", "small", MESSAGES, max_tokens=10)
    err = info.value
    assert (err.unit, err.scope, err.window, err.limit, err.spent, err.reserved, err.estimate) == (
        "input_tokens", "role:researcher", "day", 1_000, used, 0, prompt)
    assert str(err) == (
        f"budget exceeded for role 'researcher': role:researcher daily input_tokens: "
        f"{used:,} of 1,000 used ({day}); this small call needs {prompt:,}, so it was not sent.")
    assert [e.outcome for e in events].count("blocked") == 1
    # Pickles with its unit (multiprocessing, Celery).
    again = pickle.loads(pickle.dumps(err))
    assert (again.unit, str(again)) == ("input_tokens", str(err))
    blocked = [r for r in g.ledger.records() if r.outcome == "blocked"]
    assert [(r.scope, r.cost_nano) for r in blocked] == [("role:researcher", 0)]
    g.close()


def test_an_output_token_limit_counts_the_reserved_cap(ledger_url: str) -> None:
    """A call reserves its max_tokens; a cap of 250 output tokens an hour
    lets two calls of 100 through, the third (needing 100 more than the 50
    left) is refused although the first two used only 20 tokens each."""
    g, _ = make(ledger_url, roles={"w": {"output_tokens": {"hourly": 250}}})
    for _ in range(2):
        g.settle(g.preflight("w", "small", MESSAGES, max_tokens=100),
                 {"prompt_tokens": 9, "completion_tokens": 20})
    assert row(g, "role:w", "output_tokens", "hour") == (250, 40, 0, 210)
    held = g.preflight("w", "small", MESSAGES, max_tokens=200)
    with pytest.raises(BudgetExceeded) as info:
        g.preflight("w", "small", MESSAGES, max_tokens=11)
    assert (info.value.unit, info.value.spent, info.value.reserved, info.value.estimate) == (
        "output_tokens", 40, 200, 11)
    assert "240 of 250 used" in str(info.value)
    assert "200 of it reserved by calls in flight" in str(info.value)
    assert "200 output_tokens of it is held by reservations" in str(info.value)
    g.release(held)
    g.close()


def test_a_calls_per_run_limit_of_three(ledger_url: str) -> None:
    g, _ = make(ledger_url, roles={"r": {"daily": 5, "calls": {"per_run": 3}}})
    sent = 0
    with crew_budget.run("nightly") as run, pytest.raises(BudgetExceeded) as info:
        for _ in range(10):
            t = g.preflight("r", "small", MESSAGES, max_tokens=5)
            sent += 1
            g.settle(t, {"prompt_tokens": 9, "completion_tokens": 5})
    assert sent == 3
    assert (info.value.unit, info.value.window, info.value.period, info.value.limit) == (
        "calls", "run", run.run_id, 3)
    assert f"role:r per-run calls: 3 of 3 used (run {run.run_id})" in str(info.value)
    # A new run starts from zero; calls outside any run are not limited by it.
    with crew_budget.run("nightly"):
        for _ in range(3):
            g.settle(g.preflight("r", "small", MESSAGES, max_tokens=5),
                     {"prompt_tokens": 9, "completion_tokens": 5})
    for _ in range(5):
        g.settle(g.preflight("r", "small", MESSAGES, max_tokens=5),
                 {"prompt_tokens": 9, "completion_tokens": 5})
    settled = [r for r in g.ledger.records() if r.outcome == "settled"]
    assert len(settled) == 11
    g.close()


def test_model_and_global_scopes_take_units_too(ledger_url: str) -> None:
    g, _ = make(ledger_url, roles={"a": {}, "b": {}},
                models={"big": {"calls": {"daily": 2}}}, **{"global": {"calls": {"daily": 3}}})
    for role in ("a", "b"):
        g.settle(g.preflight(role, "big", MESSAGES, max_tokens=5),
                 {"prompt_tokens": 9, "completion_tokens": 5})
    with pytest.raises(BudgetExceeded) as info:
        g.preflight("a", "big", MESSAGES, max_tokens=5)
    assert (info.value.scope, info.value.unit) == ("model:big", "calls")
    g.settle(g.preflight("b", "small", MESSAGES, max_tokens=5),
             {"prompt_tokens": 9, "completion_tokens": 5})
    with pytest.raises(BudgetExceeded) as info:
        g.preflight("b", "small", MESSAGES, max_tokens=5)
    assert (info.value.scope, info.value.unit, info.value.spent) == ("global", "calls", 3)
    g.close()


def test_downgrade_does_not_apply_to_a_token_or_call_limit(ledger_url: str) -> None:
    """Another model needs the same call: a calls limit stops the call, with
    no downgraded reservation tried (one blocked record, not two)."""
    g, events = make(ledger_url, roles={"w": {
        "daily": 5, "calls": {"daily": 1}, "on_exceed": {"downgrade": ["small"]}}})
    g.settle(g.preflight("w", "big", MESSAGES, max_tokens=5),
             {"prompt_tokens": 9, "completion_tokens": 5})
    with pytest.raises(BudgetExceeded) as info:
        g.preflight("w", "big", MESSAGES, max_tokens=5)
    assert info.value.unit == "calls"
    assert [r.model for r in g.ledger.records() if r.outcome == "blocked"] == ["big"]
    assert [e.outcome for e in events if e.outcome in ("allowed", "blocked")] == [
        "allowed", "blocked"]
    g.close()


def test_shadow_records_a_would_be_token_refusal_and_sends_the_call(ledger_url: str) -> None:
    g, events = make(ledger_url, mode="shadow", roles={"w": {"calls": {"daily": 1}}})
    for _ in range(3):
        g.settle(g.preflight("w", "small", MESSAGES, max_tokens=5),
                 {"prompt_tokens": 9, "completion_tokens": 5})
    settled = [r for r in g.ledger.records() if r.outcome == "settled"]
    assert [r.metadata.get("shadow_blocked") for r in settled] == [
        None, "role:w|day|calls", "role:w|day|calls"]
    assert [e.error.unit for e in events if e.outcome == "shadow_blocked" and e.error] == [
        "calls", "calls"]
    assert row(g, "role:w", "calls") == (1, 3, 0, -2)
    g.close()


def test_status_cli_shows_token_and_call_usage(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    cfg = tmp_path / "budgets.yaml"
    cfg.write_text(
        "prices: {small: {input_per_million: 1, output_per_million: 2, tokenizer: o200k_base}}\n"
        "roles:\n  researcher: {daily: 5, input_tokens: {daily: 2_000_000}, calls: {daily: 500}}\n")
    g = Guard(str(cfg), f"sqlite:///{db}", start_alerts=False)
    g.settle(g.preflight("researcher", "small", MESSAGES, max_tokens=5),
             {"prompt_tokens": 1_998_000, "completion_tokens": 5})
    g.close()
    cli = Path(sys.executable).with_name("crew-budget")
    out = subprocess.run([str(cli), "status", "--config", str(cfg), "--ledger", f"sqlite:///{db}",
                          "--format", "json"], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    rows = {(r["scope"], r.get("unit", "usd")): r for r in json.loads(out)}
    assert rows[("role:researcher", "input_tokens")] | {"period": "", "resets_at": ""} == {
        "scope": "role:researcher", "window": "day", "period": "", "unit": "input_tokens",
        "limit": 2_000_000, "spent": 1_998_000, "reserved": 0, "remaining": 2_000,
        "used_pct": "99.9", "resets_at": "",
        # the model its calls used, and what priced it (a `prices:` override)
        "models": [{"model": "small", "price_source": "config", "priced_as": "small"}]}
    assert rows[("role:researcher", "calls")]["spent"] == 1
    assert rows[("role:researcher", "usd")]["limit_usd"] == "5"
    table = subprocess.run([str(cli), "status", "--config", str(cfg), "--ledger",
                            f"sqlite:///{db}"], capture_output=True, text=True, check=True,
                           timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin",
                                             **_py_env()}).stdout
    line = next(x for x in table.splitlines() if "input_tokens" in x)
    assert "1,998,000" in line and "2,000,000" in line and "2,000" in line


def _py_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k.startswith(("PYTHON", "LITELLM", "HF_"))}


def test_validate_lists_token_and_call_limits(tmp_path: Path) -> None:
    cfg = tmp_path / "budgets.yaml"
    cfg.write_text(
        "roles:\n  researcher: {daily: 5, input_tokens: {daily: 2_000_000},"
        " calls: {daily: 500, per_run: 3}}\ncrew: {name: lab, output_tokens: {hourly: 50_000}}\n")
    cli = Path(sys.executable).with_name("crew-budget")
    out = subprocess.run([str(cli), "validate", str(cfg)], capture_output=True, text=True,
                         check=True, timeout=120).stdout.splitlines()
    assert out[1:3] == [
        "  role researcher: daily $5.00, input_tokens daily 2,000,000, calls daily 500, "
        "calls per_run 3",
        "  crew lab: output_tokens hourly 50,000"]


def test_calls_fail_open_let_through_count_against_the_calls_limit_once_booked(
        tmp_path: Path) -> None:
    """A real redis-server (AOF) is stopped; 4 calls go through fail_open and
    are journaled with their usage; when it is back, the first call reserves
    and then books the journal: their prompt tokens and calls land in the
    unit counters (past the limit: they were made), once, and the next call
    is refused by the calls limit."""
    from tests.fixtures.redis_server import RedisServer

    (tmp_path / "redis").mkdir()
    with RedisServer(directory=tmp_path / "redis", appendonly=True) as server:
        g, _ = make(server.url, fail_open=True, journal=str(tmp_path / "journal.jsonl"),
                    roles={"r": {"daily": 5, "calls": {"daily": 3},
                                 "input_tokens": {"daily": 1_000_000}}})
        g.settle(g.preflight("r", "small", MESSAGES, max_tokens=5),
                 {"prompt_tokens": 100, "completion_tokens": 5})
        server.stop()
        for _ in range(4):
            t = g.preflight("r", "small", MESSAGES, max_tokens=5)
            assert t.guarded is False
            g.settle(t, {"prompt_tokens": 1_000, "completion_tokens": 5})
        server.start()
        # The first call after the outage reserves (2 of 3), then books the journal.
        g.settle(g.preflight("r", "small", MESSAGES, max_tokens=5),
                 {"prompt_tokens": 10, "completion_tokens": 5})
        assert (tmp_path / "journal.jsonl").read_text() == ""
        assert row(g, "role:r", "calls") == (3, 6, 0, -3)
        assert row(g, "role:r", "input_tokens") == (1_000_000, 4_110, 0, 995_890)
        with pytest.raises(BudgetExceeded) as info:
            g.preflight("r", "small", MESSAGES, max_tokens=5)
        assert (info.value.unit, info.value.spent, info.value.limit) == ("calls", 6, 3)
        booked = [r for r in g.ledger.records() if r.outcome == "unguarded"]
        assert [r.input_tokens for r in booked] == [1_000] * 4
        g.close()
