"""Reports over hourly rollups: time and memory grow with hours x groups, not calls.

Usage::

    python bench/bench_rollups.py report sqlite 100000 1000000
    python bench/bench_rollups.py report redis 100000 1000000
    python bench/bench_rollups.py memory 50000

``report``: writes N calls spread evenly over the last 30 days (8 roles x 4
models, one crew: 32 groups x 720 hours) through the ledger's own write path
in bulk (SQLite: the ledger's insert, which adds the record and upserts its
rollup, many per transaction; Redis: the ``append_record`` script, which
rolls the record up in the same script, pipelined), then times the real CLI,
``crew-budget report --since 30d --by role,model,hour --format json``, in a
child process and reads its peak RSS (``wait4``); then the same work in
process (``Ledger.rollups`` + ``build_report`` + ``to_json``), which is the
part that could grow with calls (the CLI's start-up is a constant). Each size runs on a fresh
ledger, so the growth from the smaller to the larger N is what calls cost.

``memory``: makes N real guarded calls on Redis (``RedisLedger.reserve`` +
``settle``, the scripts every call runs; role, crew and global buckets, day
windows) with the default settings and with ``records_retention_days: 0``,
and reports ``INFO memory`` used_memory per call, scaled to 1M calls.

Starts its own redis-server (bench/common.py). Numbers: bench/README.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import redis_server
from crew_budget.ledger import (
    Bucket,
    RecordDraft,
    ReserveRequest,
    SpendRecord,
    new_reservation_id,
    open_ledger,
)
from crew_budget.usage import Usage

ROLES = [f"role{i}" for i in range(8)]
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "gemini-2.5-pro"]
SPAN = 30 * 86400


def _records(n: int, now: float) -> Any:
    """N settled records, evenly over the last 30 days, cycling through 32 groups."""
    start = now - SPAN + 3600
    step = (SPAN - 7200) / n
    for i in range(n):
        yield SpendRecord(
            ts=start + i * step, reservation_id=f"{i:032x}", outcome="settled",
            role=ROLES[i % 8], model=MODELS[(i // 8) % 4], crew="team",
            input_tokens=1200, cached_input_tokens=200, output_tokens=300,
            estimate_nano=2_000_000, cost_nano=1_000_000 + i % 7,
            metadata={"run": f"r#{i % 1000:04x}"})


def fill_sqlite(url: str, n: int) -> None:
    led = open_ledger(url)
    batch = 20_000
    it = _records(n, led.now())
    done = 0
    while done < n:
        with led._tx() as db:  # the ledger's own insert, many per transaction
            for _ in range(min(batch, n - done)):
                led._insert(db, next(it))  # type: ignore[attr-defined]
                done += 1
    led.close()


def fill_redis(url: str, n: int) -> None:
    import redis

    from crew_budget.ledger.redis import _sources

    led = open_ledger(url)
    client = redis.Redis.from_url(url)
    script = client.register_script(_sources()["append_record"])
    keys = [led.prefix + "records", led.prefix + "odd", led.prefix + "oddseq"]  # type: ignore[attr-defined]
    retention = str(led.records_retention_ms)  # type: ignore[attr-defined]
    pipe = client.pipeline(transaction=False)
    for i, rec in enumerate(_records(n, led.now()), 1):
        script(keys=keys, args=[repr(rec.ts), rec.to_json(), retention, "3600000"], client=pipe)
        if i % 5000 == 0:
            pipe.execute()
    pipe.execute()
    led.close()


def time_report(url: str, config: Path) -> tuple[float, float, int]:
    """Wall seconds and peak RSS (MB) of one `crew-budget report` process, and its calls."""
    cli = Path(sys.executable).with_name("crew-budget")
    cmd = [str(cli), "report", "--since", "30d", "--by", "role,model,hour", "--format", "json",
           "--config", str(config), "--ledger", url]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"report failed: {proc.stderr.read() if proc.stderr else b''!r}")
    calls = json.loads(out)["total"]["calls"]
    return wall, usage.ru_maxrss / 1024, calls


def in_process(url: str) -> float:
    """Seconds for the report's own work: read rollups, group, render JSON (no CLI start)."""
    from crew_budget.report import build_report

    led = open_ledger(url)
    now = led.now()
    t0 = time.perf_counter()
    rollups = led.rollups(since=now - SPAN, until=now)
    build_report(rollups, "role,model,hour", since=now - SPAN, until=now).to_json()
    wall = time.perf_counter() - t0
    led.close()
    return wall


def bench_report(kind: str, sizes: list[int]) -> None:
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "budgets.yaml"
            config.write_text("timezone: UTC\n")
            if kind == "sqlite":
                url = f"sqlite:///{tmp}/ledger.db"
                t0 = time.perf_counter()
                fill_sqlite(url, n)
                fill = time.perf_counter() - t0
                size = Path(tmp, "ledger.db").stat().st_size / 1e6
                runs = [time_report(url, config) for _ in range(3)]
                inner = min(in_process(url) for _ in range(3))
                _print(kind, n, fill, runs, f"file {size:.0f} MB", inner)
            else:
                with redis_server() as url:
                    t0 = time.perf_counter()
                    fill_redis(url, n)
                    fill = time.perf_counter() - t0
                    runs = [time_report(url, config) for _ in range(3)]
                    inner = min(in_process(url) for _ in range(3))
                    _print(kind, n, fill, runs, f"used_memory {_used(url) / 1e6:.0f} MB", inner)


def _print(kind: str, n: int, fill: float, runs: list[tuple[float, float, int]],
           extra: str, inner: float) -> None:
    assert all(r[2] == n for r in runs), runs  # every call is in the report
    walls = ", ".join(f"{w:.2f}" for w, _, _ in runs)
    rss = max(r for _, r, _ in runs)
    print(f"{kind:6} {n:>9,} calls (filled in {fill:.0f} s, {extra}): report "
          f"--since 30d --by role,model,hour: {walls} s, peak RSS {rss:.0f} MB; in-process "
          f"(rollups + group + JSON, no CLI start) {inner:.2f} s; load {os.getloadavg()[0]:.1f}",
          flush=True)


def _used(url: str) -> int:
    import redis

    return int(redis.Redis.from_url(url).info("memory")["used_memory"])


def bench_memory(n: int) -> None:
    for label, records_days in (("default settings", None), ("records_retention_days: 0", 0)):
        with redis_server() as url:
            led = open_ledger(url, records_retention_days=records_days)
            draft = RecordDraft("researcher", "gpt-4o-mini", "team", 2_000_000, 1200, 300,
                                {"run": "r#0001"})
            now = led.now()
            day = now - now % 86400
            buckets = (Bucket("role:researcher", "day", "d", 10**15, day, day + 86400),
                       Bucket("crew:team", "day", "d", None, day, day + 86400),
                       Bucket("global", "day", "d", None, day, day + 86400))
            usage = Usage(input_tokens=1200, output_tokens=300)
            for _ in range(200):  # warm up: scripts loaded, counters made
                rid = new_reservation_id()
                led.reserve(ReserveRequest(rid, buckets, 2_000_000, 600, draft))
                led.settle(rid, 1_000_000, usage)
            before = _used(url)
            t0 = time.perf_counter()
            for _ in range(n):
                rid = new_reservation_id()
                led.reserve(ReserveRequest(rid, buckets, 2_000_000, 600, draft))
                led.settle(rid, 1_000_000, usage)
            wall = time.perf_counter() - t0
            per_call = (_used(url) - before) / n
            led.close()
            print(f"redis, {label}: {n:,} calls in {wall:.0f} s, {per_call:.0f} bytes/call "
                  f"-> {per_call * 1e6 / 1e6:.0f} MB per 1M calls", flush=True)


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "report"
    if what == "report":
        kind = sys.argv[2] if len(sys.argv) > 2 else "sqlite"
        sizes = [int(x) for x in sys.argv[3:]] or [100_000, 1_000_000]
        bench_report(kind, sizes)
    elif what == "memory":
        bench_memory(int(sys.argv[2]) if len(sys.argv) > 2 else 50_000)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
