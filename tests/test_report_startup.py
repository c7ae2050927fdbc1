"""``crew-budget report`` starts light: no ``Guard``, no price data for known models.

A report reads the books and prices nothing, so it opens them without a
guard (``cli.common.open_books``: same config lookup, checks, messages and
exit codes as ``open_guard``), and a warm name cache answers its per-model
price-source table. Run in a fresh interpreter, as the console script is:
the second run imports neither ``crew_budget.guard`` nor genai-prices and
prints the same JSON as the first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from crew_budget.ledger import SpendRecord, open_ledger

CODE = """
import sys
from crew_budget import cli
sys.argv = ["crew-budget", "report", "--since", "2026-11-29", "--until", "2026-12-01",
            "--by", "role,model,hour", "--format", "json", "--ledger", {url!r},
            "--config", {config!r}]
try:
    cli.main()
except SystemExit as exc:
    assert not exc.code, exc.code
loaded = [m for m in ("crew_budget.guard", "crew_budget.estimate", "genai_prices")
          if m in sys.modules]
print("LOADED", loaded, file=sys.stderr)
"""


def _run(url: str, config: Path, cache: Path) -> tuple[dict[str, object], str]:
    env = {**os.environ, "CREW_BUDGET_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", CODE.format(url=url, config=str(config))],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    loaded = next(line for line in out.stderr.splitlines() if line.startswith("LOADED"))
    doc: dict[str, object] = json.loads(out.stdout)
    return doc, loaded


def test_a_report_opens_no_guard_and_a_warm_one_loads_no_price_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = open_ledger(url)
    t0 = 1_796_083_200.0  # 2026-12-01 00:00 UTC
    for i, (role, model) in enumerate([("a", "gpt-4o"), ("b", "claude-sonnet-4"),
                                       ("a", "gpt-4o"), ("b", "m")]):
        ledger.append_record(SpendRecord(
            ts=t0 - 86400 - 3600 * i, reservation_id=f"r{i}", outcome="settled", role=role,
            model=model, input_tokens=100, output_tokens=10, cost_nano=1_000_000 * (i + 1),
            estimate_nano=2_000_000))
    ledger.close()
    config = tmp_path / "budgets.yaml"
    config.write_text("timezone: UTC\nprices:\n  m: {input_per_million: 1, "
                      "output_per_million: 2}\n")
    cache = tmp_path / "cache"
    cold, loaded_cold = _run(url, config, cache)
    assert "crew_budget.guard" not in loaded_cold and "genai_prices" in loaded_cold
    warm, loaded_warm = _run(url, config, cache)
    assert loaded_warm == "LOADED []"
    assert warm == cold
    assert cold["total"] == {  # the four calls, in integers turned to text
        "calls": 4, "blocked": 0, "released": 0, "expired": 0, "input_tokens": 400,
        "output_tokens": 40, "cost_usd": "0.01", "estimate_usd": "0.008",
        "avg_cost_usd": "0.0025", "share_pct": "100.0"}
    assert [(p["model"], p["price_source"], p["priced_as"])  # type: ignore[index]
            for p in cold["prices"]] == [  # type: ignore[attr-defined]
        ("claude-sonnet-4", "genai-prices (anthropic)", "claude-sonnet-4-0"),
        ("gpt-4o", "genai-prices (openai)", "gpt-4o"), ("m", "config", "m")]
    assert [r["cost_usd"] for r in cold["rows"]] == ["0.004", "0.003", "0.002",  # type: ignore[attr-defined, index]
                                                     "0.001"]
