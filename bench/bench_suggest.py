"""``suggest`` and ``report --what-if`` over 30 days of rollups, beside ``build_report``.

Usage::

    python bench/bench_suggest.py [groups]

Builds the rollups of 30 days x 24 hours x ``groups`` (default 32: 8 roles x
4 models, one crew) in memory, as ``Ledger.rollups`` returns them (reading
them is what bench_rollups.py measures), and times, side by side in one
run (median of 7): ``build_report(by=role,model,hour)`` (what ``report``
already does with them), ``suggest()``, and ``what_if()`` with one
substitution that matches a quarter of the groups (the settle's pricing
code, per rollup). All three grow with hours x groups, never with calls.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crew_budget.ledger.base import Rollup
from crew_budget.pricing import PriceBook
from crew_budget.report import build_report
from crew_budget.suggest import suggest
from crew_budget.whatif import parse_substitutions, what_if

MODELS = ("gpt-4o", "gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-pro")


def rollups(groups: int, now: float) -> list[Rollup]:
    roles = [f"role{i}" for i in range(max(1, groups // len(MODELS)))]
    start = int(now // 3600) * 3600 - 30 * 24 * 3600
    out = []
    for h in range(30 * 24):
        for i, role in enumerate(roles):
            for j, model in enumerate(MODELS):
                calls = 1 + (h * 7 + i * 3 + j) % 11
                out.append(Rollup(float(start + h * 3600), None, role, model, "crew", calls,
                                  0, 0, 0, 900 * calls, 100 * calls, 0, 120 * calls, 0,
                                  37_000 * calls, 40_000 * calls))
    return out


def median_ms(fn: object, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    groups = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    now = time.time()
    data = rollups(groups, now)
    since = now - 30 * 86400
    prices = PriceBook()
    subs = parse_substitutions(["gpt-4o=gpt-4o-mini"])
    what_if(data[:10], subs, prices)  # warm the price cache (first lookups load the data)
    report = median_ms(lambda: build_report(data, ("role", "model", "hour"), since=since,
                                            until=now))
    sug = median_ms(lambda: suggest(data, since=since, until=now))
    wif = median_ms(lambda: what_if(data, subs, prices, since=since, until=now))
    print(f"{len(data):,} rollups ({groups} groups x 720 hours), median of 7:")
    print(f"  build_report role,model,hour  {report:8.1f} ms")
    print(f"  suggest                       {sug:8.1f} ms  ({sug / report:.2f}x the report)")
    print(f"  what_if gpt-4o=gpt-4o-mini    {wif:8.1f} ms  ({wif / report:.2f}x the report)")


if __name__ == "__main__":
    main()
