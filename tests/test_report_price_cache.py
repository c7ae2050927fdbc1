"""A report's price-source table from the name cache is the one from the price data.

``report`` lists, per model, which source priced it and under what name
(``price_sources``). Resolving that loads genai-prices' snapshot (~0.15 s)
or litellm's map; ``PriceBook.priced_as`` with a ``cache`` file remembers
the names it resolved from the installed data, keyed by crew-budget's
version and the data files. These tests run on the real bundled data (no
network): the cached answers equal the direct ones, a warm cache loads
neither library in a fresh process, the cache is really read (a planted
entry shows), and it is ignored when its key, its content or its expiry
says so; the YAML's ``prices:`` always win.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crew_budget.pricing import PriceBook, names_cache_path
from crew_budget.report import PriceSource, price_sources

CLAUDE = "anthropic/claude-sonnet-4-20250514"
LITELLM_ONLY = "ai21.j2-mid-v1"
NAMES = [CLAUDE, LITELLM_ONLY, "gpt-4o-mini", "gpt-4o", "openai/gpt-4o", "gemini-2.5-pro",
         "claude-sonnet-4", "m", "no-such-model-xyz"]
OVERRIDES = {"m": {"input_per_million": 0, "output_per_million": 10}}


def _book() -> PriceBook:
    return PriceBook(OVERRIDES)


def test_cached_sources_are_the_direct_ones(tmp_path: Path) -> None:
    cache = tmp_path / "c" / "price-names.json"
    direct = price_sources(NAMES, _book())
    assert direct[CLAUDE] == PriceSource(CLAUDE, "genai-prices", "claude-sonnet-4-0", "anthropic")
    assert direct[LITELLM_ONLY] == PriceSource(LITELLM_ONLY, "litellm", LITELLM_ONLY, "bedrock")
    assert direct["m"] == PriceSource("m", "config", "m", None)
    cold = price_sources(NAMES, _book(), cache=cache)
    assert cold == direct
    stored = json.loads(cache.read_text())
    # Names resolved from the data are kept; overrides and unknown names are not.
    assert sorted(stored["names"]) == sorted(set(NAMES) - {"m", "no-such-model-xyz"})
    assert stored["names"][CLAUDE] == ["genai-prices", "claude-sonnet-4-0", "anthropic", None]
    warm = price_sources(NAMES, _book(), cache=cache)
    assert warm == direct
    unknown = warm["no-such-model-xyz"]
    assert (unknown.source, unknown.priced_as) == ("unpriced", "")
    assert unknown.error is not None and "no-such-model-xyz" in unknown.error


def _child(cache: Path) -> dict[str, object]:
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from crew_budget.pricing import PriceBook\n"
        "from crew_budget.report import price_sources\n"
        f"found = price_sources({NAMES[:7]!r}, PriceBook(), cache=Path({str(cache)!r}))\n"
        "print(json.dumps({'sources': [p.to_dict() for p in found.values()],\n"
        "                  'genai': 'genai_prices' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=os.environ.copy())
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_a_warm_cache_loads_no_price_data(tmp_path: Path) -> None:
    cache = tmp_path / "price-names.json"
    cold = _child(cache)
    assert cold["genai"] is True
    warm = _child(cache)
    assert warm["genai"] is False  # genai-prices not even imported
    assert warm["sources"] == cold["sources"]
    assert [p["price_source"] for p in warm["sources"]] == [  # type: ignore[attr-defined]
        "litellm", "genai-prices (anthropic)", "genai-prices (anthropic)",
        "genai-prices (google)", "genai-prices (openai)", "genai-prices (openai)",
        "genai-prices (openai)"]


def test_the_cache_is_read_and_ignored_when_its_key_content_or_expiry_says_so(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "price-names.json"
    price_sources(["gpt-4o"], _book(), cache=cache)
    stored = json.loads(cache.read_text())
    right_key = stored["key"]

    def plant(key: str, entry: object) -> PriceSource:
        cache.write_text(json.dumps({"key": key, "names": {"gpt-4o": entry}}))
        return price_sources(["gpt-4o"], _book(), cache=cache)["gpt-4o"]

    real = PriceSource("gpt-4o", "genai-prices", "gpt-4o", "openai")
    # Read: a planted entry under the right key is what the report shows.
    assert plant(right_key, ["litellm", "planted", "x", None]) == PriceSource(
        "gpt-4o", "litellm", "planted", "x")
    # Other data (another genai-prices or litellm release): resolved afresh, and rewritten.
    assert plant(right_key + "|other", ["litellm", "planted", "x", None]) == real
    assert json.loads(cache.read_text())["key"] == right_key
    # A price the data says changes at a moment now past: looked up again.
    assert plant(right_key, ["litellm", "planted", "x", time.time() - 1]) == real
    assert plant(right_key, ["litellm", "planted", "x", time.time() + 600]).priced_as == "planted"
    # Bad content of any kind: resolved from the data.
    for bad in (["litellm", "planted"], ["litellm", 3, "x", None], "gpt-4o", None):
        assert plant(right_key, bad) == real, bad
    cache.write_text("{not json")
    assert price_sources(["gpt-4o"], _book(), cache=cache)["gpt-4o"] == real
    # The YAML's prices come first, whatever the cache says.
    cache.write_text(json.dumps({"key": right_key,
                                 "names": {"gpt-4o": ["litellm", "planted", "x", None]}}))
    book = PriceBook({"gpt-4o": {"input_per_million": 1, "output_per_million": 2}})
    assert price_sources(["gpt-4o"], book, cache=cache)["gpt-4o"] == PriceSource(
        "gpt-4o", "config", "gpt-4o", None)
    # A book on its own price map never reads the cache of the installed data.
    own = PriceBook(price_map={"gpt-4o": {"input_cost_per_token": 1e-6,
                                          "output_cost_per_token": 2e-6}}, genai_prices=False)
    assert price_sources(["gpt-4o"], own, cache=cache)["gpt-4o"] == PriceSource(
        "gpt-4o", "litellm", "gpt-4o", own.get("gpt-4o").provider)


def test_an_unusable_cache_location_only_costs_time(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = blocker / "price-names.json"  # under a file: cannot be made
    assert price_sources(NAMES, _book(), cache=cache) == price_sources(NAMES, _book())
    assert not cache.exists()


def test_where_the_cache_lives(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mp = monkeypatch
    mp.setenv("CREW_BUDGET_CACHE_DIR", str(tmp_path / "mine"))
    assert names_cache_path() == tmp_path / "mine" / "price-names.json"
    mp.setenv("CREW_BUDGET_CACHE_DIR", "")
    assert names_cache_path() is None
    mp.delenv("CREW_BUDGET_CACHE_DIR")
    mp.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert names_cache_path() == tmp_path / "xdg" / "crew-budget" / "price-names.json"
    mp.delenv("XDG_CACHE_HOME")
    mp.setenv("HOME", str(tmp_path / "home"))
    assert names_cache_path() == tmp_path / "home" / ".cache" / "crew-budget" / "price-names.json"
    mp.setattr(os.path, "expanduser", lambda path: path)  # no home directory at all
    assert names_cache_path() is None
