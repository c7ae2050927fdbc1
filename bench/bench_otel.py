"""What OpenTelemetry export adds to each guarded call, and what an export costs.

    python bench/bench_otel.py [iterations]

Measured side by side, interleaved call by call, on ``memory://`` (the
cheapest ledger, so the listener's share is the most visible):

- ``bare``: preflight + settle, no listener;
- ``otel metrics``: ``crew_budget.otel.instrument`` with the SDK
  ``MeterProvider`` and an ``InMemoryMetricReader`` (what the call pays: the
  SDK's aggregation runs at collection, timed separately below, the same
  whatever exporter collects it);
- ``otel metrics + span``: the same, inside a recording SDK span (attributes
  and two span events per call), spans dropped by a no-op processor.

Then ``iter_records`` + JSONL/CSV writing of 50,000 records from a SQLite
ledger (what ``crew-budget export`` does), in records per second.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.pop("OTEL_SDK_DISABLED", None)  # the SDK hands out no-op instruments otherwise

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from bench.common import summary
from crew_budget import Guard
from crew_budget.cli.export import iter_records, write_records
from crew_budget.otel import instrument

CONFIG: dict[str, Any] = {
    "roles": {"researcher": {"daily": 10**6}}, "crew": {"name": "team", "daily": 10**6},
    "prices": {"m": {"input_per_million": 1, "output_per_million": 2, "provider": "openai"}},
}
MSG = [{"role": "user", "content": "summarise the quarter"}]
USAGE = {"prompt_tokens": 12, "completion_tokens": 200}
RECORDS = 50_000


def one_call(guard: Guard) -> float:
    t = time.perf_counter()
    ticket = guard.preflight("researcher", "m", MSG, max_tokens=256)
    guard.settle(ticket, USAGE)
    return time.perf_counter() - t


def main(iterations: int) -> None:
    bare = Guard(CONFIG, "memory://")
    metered = Guard(CONFIG, "memory://")
    metered_reader = InMemoryMetricReader()
    instrument(metered, MeterProvider(metric_readers=[metered_reader]))
    spanned = Guard(CONFIG, "memory://")
    instrument(spanned, MeterProvider(metric_readers=[InMemoryMetricReader()]))
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SpanProcessor())  # records, exports nothing
    tracer = tracer_provider.get_tracer("bench")
    samples: dict[str, list[float]] = {"bare": [], "otel metrics": [],
                                       "otel metrics + span": []}
    for _ in range(200):  # warm caches (token memo, attribute dicts) alike
        one_call(bare), one_call(metered)
        with tracer.start_as_current_span("chat"):
            one_call(spanned)
    for _ in range(iterations):
        samples["bare"].append(one_call(bare))
        samples["otel metrics"].append(one_call(metered))
        with tracer.start_as_current_span("chat"):
            samples["otel metrics + span"].append(one_call(spanned))
    base = summary(samples["bare"])
    print(f"preflight+settle on memory://, {iterations} calls each (microseconds)")
    print("| case | p50 µs | p99 µs | p50 added |")
    print("|---|---:|---:|---:|")
    for name, s in samples.items():
        st = summary(s)
        print(f"| {name} | {st['p50']:.1f} | {st['p99']:.1f} | {st['p50'] - base['p50']:+.1f} |")

    t = time.perf_counter()
    metered_reader.get_metrics_data()  # one collection: records the queued token counts
    dt = time.perf_counter() - t
    queued = 2 * (iterations + 200)
    print(f"one collection after {iterations + 200} calls (on the exporter's thread): "
          f"{dt * 1e3:.1f} ms = {dt / queued * 1e6:.1f} µs per queued token count")

    tmp = tempfile.mkdtemp(prefix="cb-bench-otel-")
    now = [time.time() - 86400]
    writer = Guard(CONFIG, f"sqlite:///{tmp}/l.db", clock=lambda: now[0])
    for _ in range(RECORDS):
        now[0] += 0.5
        writer.settle(writer.preflight("researcher", "m", MSG, max_tokens=8), USAGE)
    ledger = writer.ledger
    for fmt in ("jsonl", "csv"):
        out = io.StringIO()
        t = time.perf_counter()
        n = write_records(iter_records(ledger, 0.0, now[0] + 1), out, fmt)
        dt = time.perf_counter() - t
        print(f"export {fmt}: {n} records in {dt:.2f} s = {n / dt:,.0f} records/s, "
              f"{len(out.getvalue()) / n:.0f} bytes/record")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
