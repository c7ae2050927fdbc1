"""Alerts and reports off the hot path: what they cost the LLM call, and a report's cost.

    python bench/bench_alerts.py [iterations]

Measured side by side, interleaved in rounds:

- preflight + settle on memory:// and sqlite:/// with no listener, and with an
  ``AlertManager`` (thresholds + all anomaly rules, a callable sink) attached:
  the difference is what alerting adds to each call's own thread;
- ``build_report`` by role,model,hour and ``render_html`` over 100,000 spend
  records (what ``crew-budget report --html`` does after reading them).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import summary
from crew_budget import Guard
from crew_budget.alerts import AlertManager
from crew_budget.ledger import SpendRecord
from crew_budget.report import build_report
from crew_budget.report_html import render_html

CONFIG: dict[str, Any] = {
    "roles": {"researcher": {"daily": 10**6}}, "crew": {"daily": 10**6},
    "prices": {"m": {"input_per_million": 1, "output_per_million": 2}},
    "alerts": {"sinks": [], "anomalies": {"check_interval_seconds": 60}},
}
MSG = [{"role": "user", "content": "summarise the quarter"}]
USAGE = {"prompt_tokens": 12, "completion_tokens": 200}


def one_call(guard: Guard) -> float:
    t = time.perf_counter()
    ticket = guard.preflight("researcher", "m", MSG, max_tokens=256)
    guard.settle(ticket, USAGE)
    return time.perf_counter() - t


def main(iterations: int) -> None:
    tmp = tempfile.mkdtemp(prefix="cb-bench-alerts-")
    cases: dict[str, Guard] = {}
    managers = []
    for name, url in (("memory", "memory://"), ("sqlite", f"sqlite:///{tmp}/a.db"),
                      ("sqlite+alerts", f"sqlite:///{tmp}/b.db"),
                      ("memory+alerts", "memory://")):
        guard = Guard(CONFIG, url)
        if name.endswith("+alerts"):
            managers.append(AlertManager(guard, sinks=[lambda alert: None]))
        cases[name] = guard
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(iterations):
        for name, guard in cases.items():
            samples[name].append(one_call(guard))
    for m in managers:
        m.close()
    print(f"preflight+settle, {iterations} calls each (microseconds)")
    for name, s in samples.items():
        st = summary(s)
        print(f"  {name:15s} p50 {st['p50']:8.1f}  p99 {st['p99']:8.1f}  mean {st['mean']:8.1f}")

    now = time.time()
    records = [SpendRecord(ts=now - (i % (7 * 86400)), reservation_id=str(i), outcome="settled",
                           role=f"role{i % 8}", model=f"model{i % 5}", cost_nano=1000 + i % 977,
                           estimate_nano=2000)
               for i in range(100_000)]
    t = time.perf_counter()
    report = build_report(records, "role,model,hour", since=now - 7 * 86400, until=now + 1)
    t_report = time.perf_counter() - t
    t = time.perf_counter()
    page = render_html(records, since=now - 7 * 86400, until=now + 1)
    t_html = time.perf_counter() - t
    print(f"build_report role,model,hour over 100k records: {t_report * 1e3:.0f} ms "
          f"({len(report.rows)} rows)")
    print(f"render_html over 100k records: {t_html * 1e3:.0f} ms ({len(page) // 1024} KiB)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
