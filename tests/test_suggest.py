"""``crew_budget.suggest`` and ``crew_budget.whatif`` over ledgers filled the real
way: ``Guard.preflight`` + ``Guard.settle`` with known provider usage (and a
real refusal), read back through ``Ledger.rollups``.

Prices (genai-prices, USD per million tokens): gpt-4o 2.50 in / 1.25 cached /
10 out; gpt-4o-mini 0.15 / 0.075 / 0.60; gemini-2.5-pro 1.25 / 10, and 2.50 /
15 for prompts above 200k tokens. ``test_prices_are_pinned`` pins them.

The history (SQLite, a clock that walks through ten UTC days from
2026-11-01):

- researcher, gpt-4o, [2, 0, 3, 1, 4, 2, 0, 5, 1, 3] calls a day (21 in all),
  each 1000 prompt tokens (400 of them cached) and 100 out:
  600 x 2.5 + 400 x 1.25 + 100 x 10 = $0.003 a call; on gpt-4o-mini
  600 x 0.15 + 400 x 0.075 + 100 x 0.6 = $0.00018. Two calls a day at
  10:00 and the rest at 15:00, but on the peak day (11-08) 3 calls at 10:00
  and 2 at 15:00: the peak hour.
- writer, gpt-4o-mini, one call a day on days 6..10 (2000 in, 500 out:
  $0.0006), daily limit $0.001; on the last day a second call (reserving
  1000 output tokens) is refused: 1 blocked call.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from crew_budget import BudgetExceeded, Guard
from crew_budget.config import BudgetConfig
from crew_budget.errors import ConfigError, UnknownModelError
from crew_budget.ledger.sqlite import SQLiteLedger
from crew_budget.suggest import p95, readable_usd, suggest
from crew_budget.whatif import Substitution, parse_substitutions, what_if

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp()
DAY, HOUR = 86400.0, 3600.0
END = T0 + 10 * DAY
RESEARCHER_CALLS = [2, 0, 3, 1, 4, 2, 0, 5, 1, 3]
R_CALL, R_MINI = Decimal("0.003"), Decimal("0.00018")
W_CALL = Decimal("0.0006")
R_USAGE = {"prompt_tokens": 1000, "completion_tokens": 100,
           "prompt_tokens_details": {"cached_tokens": 400}}
W_USAGE = {"prompt_tokens": 2000, "completion_tokens": 500}
MSG = [{"role": "user", "content": "Summarise the findings."}]
CONFIG: dict[str, Any] = {
    "crew": {"name": "pair"},
    "roles": {"researcher": {"daily": 10}, "writer": {"daily": "0.001"}},
}


def fill(guard: Guard, at: Callable[[float], None]) -> None:
    """The history above, through preflight and settle (``at(ts)`` sets the clock)."""
    for day, n in enumerate(RESEARCHER_CALLS):
        for i in range(n):
            hour = 10 if i < (3 if day == 7 else 2) else 15
            at(T0 + day * DAY + hour * HOUR + i * 60)
            t = guard.preflight("researcher", "gpt-4o", MSG, max_tokens=200)
            guard.settle(t, R_USAGE)
        if day >= 5:
            at(T0 + day * DAY + 12 * HOUR)
            t = guard.preflight("writer", "gpt-4o-mini", MSG, max_tokens=600)
            guard.settle(t, W_USAGE)
    at(T0 + 9 * DAY + 13 * HOUR)
    with pytest.raises(BudgetExceeded) as info:
        guard.preflight("writer", "gpt-4o-mini", MSG, max_tokens=1000)
    assert (info.value.scope, info.value.spent) == ("role:writer", W_CALL)


def sqlite_guard(tmp_path: Path, config: dict[str, Any] = CONFIG) -> tuple[Guard, Any]:
    now = [T0]
    ledger = SQLiteLedger(f"sqlite:///{tmp_path / 'ledger.db'}", clock=lambda: now[0])
    guard = Guard(config, ledger, clock=lambda: now[0], start_alerts=False)

    def at(ts: float) -> None:
        now[0] = ts
    return guard, at


@pytest.fixture
def history(tmp_path: Path) -> Guard:
    guard, at = sqlite_guard(tmp_path)
    fill(guard, at)
    return guard


def test_prices_are_pinned() -> None:
    guard = Guard(CONFIG, "memory://", start_alerts=False)
    got = {m: (guard.prices.get(m).input * 10**6, guard.prices.get(m).output * 10**6,
               guard.prices.get(m).cached_input * 10**6)  # type: ignore[operator]
           for m in ("gpt-4o", "gpt-4o-mini")}
    assert got == {"gpt-4o": (Decimal("2.5"), Decimal(10), Decimal("1.25")),
                   "gpt-4o-mini": (Decimal("0.15"), Decimal("0.6"), Decimal("0.075"))}
    gemini = guard.prices.get("gemini-2.5-pro")
    assert (gemini.input * 10**6, gemini.output * 10**6) == (Decimal("1.25"), Decimal(10))
    [(above, tier)] = gemini.tiers
    assert (above, tier.input * 10**6, tier.output * 10**6) == (
        200_000, Decimal("2.5"), Decimal(15))


def test_the_ledger_holds_the_history(history: Guard) -> None:
    rollups = history.ledger.rollups(since=T0, until=END)
    by_role: dict[str, list[int]] = {}
    for r in rollups:
        acc = by_role.setdefault(r.role, [0, 0, 0])
        acc[0] += r.calls
        acc[1] += r.blocked
        acc[2] += r.cost_nano
    assert by_role == {"researcher": [21, 0, 21 * 3_000_000],
                       "writer": [5, 1, 5 * 600_000]}


def test_suggestions_per_role_crew_and_global(history: Guard) -> None:
    result = suggest(history.ledger.rollups(since=T0, until=END), since=T0, until=END)
    [researcher, writer] = result.roles
    assert researcher.to_dict() == {
        "kind": "role", "name": "researcher", "days": 10, "first_day": "2026-11-01",
        "too_short": False, "calls": 21, "blocked": 0, "cost_usd": "0.063",
        # 10 days: the nearest-rank p95 is the peak day, 5 x $0.003
        "p95_day_usd": "0.015", "peak_day": "2026-11-08", "peak_day_usd": "0.015",
        "peak_hour": "2026-11-08 10:00", "peak_hour_usd": "0.009",
        "daily": "0.019",    # 0.015 x 1.25 = 0.01875, up to two significant digits
        "hourly": "0.012",   # 0.009 x 1.25 = 0.01125
    }
    assert researcher.daily_series == [6_000_000, 0, 9_000_000, 3_000_000, 12_000_000,
                                       6_000_000, 0, 15_000_000, 3_000_000, 9_000_000]
    assert writer.to_dict() == {
        "kind": "role", "name": "writer", "days": 5, "first_day": "2026-11-06",
        "too_short": True, "calls": 5, "blocked": 1, "cost_usd": "0.003",
        "p95_day_usd": "0.0006", "peak_day": "2026-11-06", "peak_day_usd": "0.0006",
        "peak_hour": "2026-11-06 12:00", "peak_hour_usd": "0.0006",
        "daily": "0.00075", "hourly": None,  # the peak hour is the whole day
    }
    [crew] = result.crews
    assert (crew.name, crew.days, crew.calls, crew.blocked) == ("pair", 10, 26, 1)
    # 11-08: 5 researcher calls + the writer's: 0.0156 x 1.25 = 0.0195 -> 0.020
    assert (crew.p95_day_nano, crew.peak_day, crew.daily, crew.hourly) == (
        15_600_000, "2026-11-08", Decimal("0.02"), Decimal("0.012"))
    assert result.overall.to_dict() == {**crew.to_dict(), "kind": "global", "name": "global"}


def test_the_yaml_is_ready_to_paste(history: Guard) -> None:
    result = suggest(history.ledger.rollups(since=T0, until=END), since=T0, until=END)
    text = result.to_yaml()
    assert text.splitlines()[:4] == [
        "# crew-budget suggest: spend from 2026-11-01 to 2026-11-10 (10 days, UTC)",
        "# daily = p95 of daily spend x 1.25, rounded up; hourly = peak hour x 1.25, "
        "when below daily",
        "# WARNING: fewer than 7 days of history for role writer: with so few days the p95 "
        "is the peak day; run suggest again after a week or more of traffic",
        "# roles with blocked calls spent less than they asked for: their history "
        "under-states their need",
    ]
    assert ('    daily: "0.019"  # p95 $0.015/day, peak $0.015 on 2026-11-08, 10 days of '
            'data') in text
    assert ('    daily: "0.00075"  # p95 $0.0006/day, peak $0.0006 on 2026-11-06, 1 blocked '
            'call, 5 days of data (too short to trust)') in text
    data = yaml.safe_load(text)
    assert data == {
        "global": {"daily": "0.02", "hourly": "0.012"},
        "crew": {"name": "pair", "daily": "0.02", "hourly": "0.012"},
        "roles": {"researcher": {"daily": "0.019", "hourly": "0.012"},
                  "writer": {"daily": "0.00075"}},
    }
    config = BudgetConfig.model_validate(data)  # it loads as a budget, exactly
    assert config.roles["researcher"].daily == Decimal("0.019")
    assert config.crew is not None and config.crew.hourly == Decimal("0.012")


def test_headroom_and_a_window_that_starts_later(history: Guard) -> None:
    since = T0 + 5 * DAY
    result = suggest(history.ledger.rollups(since=since, until=END), since=since, until=END,
                     headroom="2")
    [researcher, writer] = result.roles
    # days 6..10: [2, 0, 5, 1, 3] calls
    assert (researcher.days, researcher.p95_day_nano, researcher.daily) == (
        5, 15_000_000, Decimal("0.03"))
    assert (writer.days, writer.daily) == (5, Decimal("0.0012"))
    with pytest.raises(ValueError, match="headroom must be a number from 1 to 100"):
        suggest([], since=T0, until=END, headroom="0.5")


def test_an_empty_period_says_so(history: Guard) -> None:
    result = suggest(history.ledger.rollups(since=END, until=END + DAY), since=END,
                     until=END + DAY)
    assert result.roles == [] and result.overall.days == 0
    assert result.to_yaml().splitlines()[-1] == (
        "# no calls in this period: nothing to suggest (widen --since)")


def test_p95_and_rounding() -> None:
    assert p95([]) == 0
    assert p95(list(range(1, 21))) == 19   # nearest rank: ceil(0.95 x 20) = 19th
    assert p95(list(range(1, 101))) == 95
    assert p95([7, 1, 3]) == 7
    assert readable_usd(5_887_500_000) == Decimal("5.9")
    assert readable_usd(130_000_000_001) == Decimal(140)
    assert str(readable_usd(130_000_000_000)) == "130"
    assert readable_usd(33_000) == Decimal("0.000033")
    assert readable_usd(0) == 0


# -- what-if -------------------------------------------------------------------


def test_what_if_reprices_the_tokens_at_the_substitute(history: Guard) -> None:
    rollups = history.ledger.rollups(since=T0, until=END)
    result = what_if(rollups, parse_substitutions(["gpt-4o=gpt-4o-mini"]), history.prices,
                     since=T0, until=END)
    [row] = result.rows
    assert row.to_dict() == {
        "role": "researcher", "model": "gpt-4o", "substitute": "gpt-4o-mini", "calls": 21,
        "input_tokens": 21_000, "output_tokens": 2_100,
        "cost_usd": "0.063", "repriced_usd": "0.063",
        "what_if_usd": "0.00378",   # 21 x 0.00018
        "saving_usd": "0.05922", "saving_pct": "94.0"}
    assert result.to_dict()["total"]["saving_usd"] == "0.05922"
    assert result.unmatched == ()


def test_what_if_with_two_substitutions_and_one_unused(history: Guard) -> None:
    rollups = history.ledger.rollups(since=T0, until=END)
    subs = parse_substitutions(["gpt-4o-mini=gpt-4o", "gpt-4o=gpt-5-nano", "o3=o4-mini"])
    result = what_if(rollups, subs, history.prices, since=T0, until=END)
    rows = {(r.role, r.substitute): r for r in result.rows}
    # writer 5 x (2000 x 2.5 + 500 x 10) / 1e6 = 5 x 0.01: a negative saving
    assert rows["writer", "gpt-4o"].what_if_nano == 50_000_000
    assert rows["writer", "gpt-4o"].saving_nano == 3_000_000 - 50_000_000
    # gpt-5-nano: 600 x 0.05 + 400 x 0.005 + 100 x 0.4 = 0.000072 a call
    assert rows["researcher", "gpt-5-nano"].what_if_nano == 21 * 72_000
    assert [str(s) for s in result.unmatched] == ["o3=o4-mini"]
    assert result.rows[0].role == "researcher"  # the largest saving first
    assert result.total.saving_nano == (63_000_000 - 21 * 72_000) + (3_000_000 - 50_000_000)


def test_what_if_prices_a_tiered_substitute_by_the_prompt_size(tmp_path: Path) -> None:
    guard, at = sqlite_guard(tmp_path, {"roles": {"analyst": {"daily": 100}}})
    # Two big calls in one hour, the small one in an hour of its own.
    for ts, prompt in ((T0, 250_000), (T0 + 60, 250_000), (T0 + 2 * HOUR, 10_000)):
        at(ts)
        t = guard.preflight("analyst", "gpt-4o-mini", MSG, max_tokens=100)
        guard.settle(t, {"prompt_tokens": prompt, "completion_tokens": 100})
    result = what_if(guard.ledger.rollups(), [Substitution("gpt-4o-mini", "gemini-2.5-pro")],
                     guard.prices)
    [row] = result.rows
    # Hour 1: 2 calls averaging 250k > 200k: the upper tier, 500k x 2.5 + 200 x 15.
    # Hour 2: 10k at the base rates, 10k x 1.25 + 100 x 10.
    assert row.what_if_nano == (500_000 * 2_500 + 200 * 15_000) + (10_000 * 1_250 + 100 * 10_000)
    assert row.repriced_nano == row.cost_nano == 510_000 * 150 + 300 * 600


def test_an_unknown_substitute_names_close_models(history: Guard) -> None:
    with pytest.raises(UnknownModelError) as info:
        what_if(history.ledger.rollups(), parse_substitutions(["gpt-4o=gpt-4o-mimi"]),
                history.prices)
    assert info.value.model == "gpt-4o-mimi"
    assert "gpt-4o-mini" in info.value.suggestions
    assert "Did you mean: " in str(info.value)


@pytest.mark.parametrize(("texts", "message"), [
    (["gpt-4o"], "--what-if 'gpt-4o' is not MODEL=SUBSTITUTE; write e.g. "
                 "--what-if gpt-4o=gpt-4o-mini"),
    (["=gpt-4o"], "--what-if '=gpt-4o' is not MODEL=SUBSTITUTE"),
    (["gpt-4o=gpt-4o"], "--what-if 'gpt-4o=gpt-4o' substitutes a model for itself"),
    (["a=b", "a=c"], "--what-if names 'a' twice; give one substitute per model"),
    ([], "--what-if needs at least one MODEL=SUBSTITUTE"),
])
def test_bad_substitutions(texts: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_substitutions(texts)
    assert message in str(info.value)


def test_a_substitution_matches_the_model_without_its_provider() -> None:
    sub = Substitution("gpt-4o", "gpt-4o-mini")
    assert sub.matches("gpt-4o") and sub.matches("openai/gpt-4o")
    assert not sub.matches("gpt-4o-mini") and not sub.matches("azure/gpt-4o-2024")


# -- Redis: the same arithmetic over the rollups its scripts keep ---------------------


def test_suggest_and_what_if_on_redis(redis_url: str) -> None:
    """Redis dates records by its own TIME, so this history is one day (today):
    the numbers are the same sums, read through the Lua-kept rollup hashes."""
    guard = Guard(CONFIG, redis_url, start_alerts=False)
    for _ in range(3):
        t = guard.preflight("researcher", "gpt-4o", MSG, max_tokens=200)
        guard.settle(t, R_USAGE)
    t = guard.preflight("writer", "gpt-4o-mini", MSG, max_tokens=600)
    guard.settle(t, W_USAGE)
    with pytest.raises(BudgetExceeded):
        guard.preflight("writer", "gpt-4o-mini", MSG, max_tokens=1000)
    now = guard.ledger.now()
    since, until = now - 3 * HOUR, now + 1
    rollups = guard.ledger.rollups(since=since, until=until)
    result = suggest(rollups, since=since, until=until)
    [researcher, writer] = result.roles
    # One day of data: days count from the first one with a call.
    assert (researcher.calls, researcher.cost_nano, researcher.days, researcher.too_short) == (
        3, 9_000_000, 1, True)
    assert researcher.daily == Decimal("0.012")  # 0.009 x 1.25 = 0.01125
    assert (writer.calls, writer.blocked, writer.daily) == (1, 1, Decimal("0.00075"))
    assert (result.overall.calls, result.overall.blocked, result.overall.cost_nano) == (
        4, 1, 9_600_000)
    whatif = what_if(rollups, parse_substitutions(["gpt-4o=gpt-4o-mini"]), guard.prices,
                     since=since, until=until)
    [row] = whatif.rows
    assert (row.calls, row.cost_nano, row.repriced_nano, row.what_if_nano) == (
        3, 9_000_000, 9_000_000, 3 * 180_000)
