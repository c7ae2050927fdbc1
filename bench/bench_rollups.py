"""Reports over hourly rollups: time and memory grow with hours x groups, not calls.

Usage::

    python bench/bench_rollups.py report sqlite 100000 1000000
    python bench/bench_rollups.py report redis 100000 1000000
    python bench/bench_rollups.py memory 50000
    python bench/bench_rollups.py fill sqlite:////tmp/l.db 10000000   # or redis://...
    python bench/bench_rollups.py time sqlite:////tmp/l.db            # within the hour

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

import itertools
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
    ROLLUP_METRICS,
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


_TS, _RID, _COST, _RUN = 1111111111.25, "f" * 32, 1_999_999, "r#ffff"


def _templates() -> dict[tuple[str, str], tuple[str, ...]]:
    """Per group, ``SpendRecord.to_json`` of a marker record cut at its variable parts.

    ``SpendRecord.to_json`` (``asdict`` + ``json.dumps``) takes ~15 µs: 150 s for 10M
    records. The template is that very encoding with ts, id, cost and run left
    out, so the bytes written are the same (``_fast_records`` checks samples).
    """
    out = {}
    for role in ROLES:
        for model in MODELS:
            text = SpendRecord(
                ts=_TS, reservation_id=_RID, outcome="settled", role=role, model=model,
                crew="team", input_tokens=1200, cached_input_tokens=200, output_tokens=300,
                estimate_nano=2_000_000, cost_nano=_COST, metadata={"run": _RUN}).to_json()
            parts = []
            for marker in (repr(_TS), _RID, str(_COST), _RUN):
                head, sep, text = text.partition(marker)
                assert sep, marker
                parts.append(head)
            out[role, model] = (*parts, text)
    return out


def _fast_records(n: int, now: float, lo: int = 0, hi: int | None = None) -> Any:
    """``_records`` ``lo`` to ``hi`` as (ts, JSON, role, model, cost), the JSON
    byte-identical to ``SpendRecord.to_json`` (checked on every 100,000th record)."""
    start = now - SPAN + 3600
    step = (SPAN - 7200) / n
    templates = _templates()
    for i in range(lo, n if hi is None else hi):
        ts = start + i * step
        role, model, cost = ROLES[i % 8], MODELS[(i // 8) % 4], 1_000_000 + i % 7
        a, b, c, d, e = templates[role, model]
        text = f"{a}{ts!r}{b}{i:032x}{c}{cost}{d}r#{i % 1000:04x}{e}"
        if i % 100_000 == 0:
            slow = SpendRecord(
                ts=ts, reservation_id=f"{i:032x}", outcome="settled", role=role, model=model,
                crew="team", input_tokens=1200, cached_input_tokens=200, output_tokens=300,
                estimate_nano=2_000_000, cost_nano=cost, metadata={"run": f"r#{i % 1000:04x}"})
            assert text == slow.to_json(), (text, slow.to_json())
        yield ts, text, role, model, cost


def fill_sqlite(url: str, n: int) -> None:
    """The SQLite ledger's insert (record + rollup upsert, as a settle writes them),
    as ``executemany`` in transactions of 200,000 records."""
    from itertools import islice

    from crew_budget.ledger.sqlite import _UPSERT_ROLLUP

    led = open_ledger(url)
    assert led.records_retention_days > 0  # records are written too, as by a settle
    groups = {(r, m): json.dumps([None, r, m, "team"]) for r in ROLES for m in MODELS}
    # One settled call's counts, in the order the ledger stores them.
    one = {"calls": 1, "input_tokens": 1200, "cached_input_tokens": 200, "output_tokens": 300,
           "estimate_nano": 2_000_000}
    counts = {m: one.get(m, 0) for m in ROLLUP_METRICS}
    it = _fast_records(n, led.now())
    while True:
        chunk = list(islice(it, 200_000))
        if not chunk:
            break
        with led._tx() as db:  # type: ignore[attr-defined]
            db.executemany(_UPSERT_ROLLUP, [
                (int(ts // 3600) * 3600, groups[role, model],
                 *(counts | {"cost_nano": cost}).values())
                for ts, _text, role, model, cost in chunk])
            db.executemany("INSERT INTO records (ts, data) VALUES (?, ?)",
                           [(ts, text) for ts, text, *_ in chunk])
    led.close()


def fill_redis(url: str, n: int, workers: int = 2) -> None:
    """The ``append_record`` script (record + rollup in one script, as a settle
    writes them), EVALSHA pipelined 2,000 at a time, from ``workers`` processes
    (each a contiguous share of the calls) so the server never waits for Python."""
    import multiprocessing as mp

    led = open_ledger(url)
    now = led.now()
    led.close()
    bounds = [n * k // workers for k in range(workers + 1)]
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_fill_redis_share, args=(url, n, now, lo, hi))
             for lo, hi in itertools.pairwise(bounds)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a filling process failed ({p.exitcode})")


def _fill_redis_share(url: str, n: int, now: float, lo: int, hi: int) -> None:
    import redis

    from crew_budget.ledger.redis import _sources

    led = open_ledger(url)
    client = redis.Redis.from_url(url)
    sha = client.script_load(_sources()["append_record"])
    keys = [led.prefix + "records", led.prefix + "odd", led.prefix + "oddseq"]  # type: ignore[attr-defined]
    retention = str(led.records_retention_ms)  # type: ignore[attr-defined]
    pipe = client.pipeline(transaction=False)
    for i, (ts, text, *_rest) in enumerate(_fast_records(n, now, lo, hi), 1):
        pipe.execute_command("EVALSHA", sha, 3, *keys, repr(ts), text, retention, "3600000")
        if i % 2000 == 0:
            pipe.execute()
    pipe.execute()
    led.close()


def _in_child(fill: Any, url: str, n: int) -> None:
    """Run ``fill`` in a child process: the report's peak RSS is read from the
    processes this one starts, and a child forked from a parent holding the
    fill's batches would count their pages (Linux ``ru_maxrss`` at fork)."""
    import multiprocessing as mp

    proc = mp.get_context("fork").Process(target=fill, args=(url, n))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"filling {url} failed ({proc.exitcode})")


def time_report(url: str, config: Path) -> tuple[float, float, int]:
    """Wall seconds and peak RSS (MB) of one `crew-budget report` process, and its calls.

    The report's price-source table comes from a name cache (``PriceBook.priced_as``)
    kept in a directory beside ``config`` (``CREW_BUDGET_CACHE_DIR``): the first
    run there fills it (what the first report after installing or upgrading
    genai-prices, litellm or crew-budget costs), later runs read it.
    """
    cli = Path(sys.executable).with_name("crew-budget")
    cmd = [str(cli), "report", "--since", "30d", "--by", "role,model,hour", "--format", "json",
           "--config", str(config), "--ledger", url]
    env = {**os.environ, "CREW_BUDGET_CACHE_DIR": str(config.parent / "cache")}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"report failed: {proc.stderr.read() if proc.stderr else b''!r}")
    calls = json.loads(out)["total"]["calls"]
    _CPU.append(usage.ru_utime + usage.ru_stime)
    return wall, usage.ru_maxrss / 1024, calls


_CPU: list[float] = []
"""CPU seconds (user + system) of each report process: on a machine other jobs
load, the wall time swings with them, the CPU time much less."""


def in_process(url: str) -> float:
    """Seconds for the report's own work, as the CLI does it: read the rollup rows
    (``Ledger.rollup_table``), group, render JSON (no CLI start)."""
    from crew_budget.report import build_report

    led = open_ledger(url)
    now = led.now()
    t0 = time.perf_counter()
    table = led.rollup_table(since=now - SPAN, until=now)
    build_report(table, "role,model,hour", since=now - SPAN, until=now).to_json()
    wall = time.perf_counter() - t0
    led.close()
    return wall


def _cold(url: str, config: Path) -> str:
    """One report with an empty name cache (it fills it): wall, CPU, RSS."""
    wall, rss, _ = time_report(url, config)
    return (f"first run, empty name cache: wall {wall:.2f} s, CPU {_CPU.pop():.2f} s, "
            f"RSS {rss:.0f} MB")


def bench_report(kind: str, sizes: list[int]) -> None:
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "budgets.yaml"
            config.write_text("timezone: UTC\n")
            if kind == "sqlite":
                url = f"sqlite:///{tmp}/ledger.db"
                t0 = time.perf_counter()
                _in_child(fill_sqlite, url, n)
                fill = time.perf_counter() - t0
                size = Path(tmp, "ledger.db").stat().st_size / 1e6
                print(_cold(url, config), flush=True)
                runs = [time_report(url, config) for _ in range(3)]
                inner = min(in_process(url) for _ in range(3))
                _print(kind, n, fill, runs, f"file {size:.0f} MB", inner)
            else:
                with redis_server() as url:
                    t0 = time.perf_counter()
                    fill_redis(url, n)
                    fill = time.perf_counter() - t0
                    print(_cold(url, config), flush=True)
                    runs = [time_report(url, config) for _ in range(3)]
                    inner = min(in_process(url) for _ in range(3))
                    _print(kind, n, fill, runs, f"used_memory {_used(url) / 1e6:.0f} MB", inner)


def _print(kind: str, n: int, fill: float, runs: list[tuple[float, float, int]],
           extra: str, inner: float) -> None:
    assert all(r[2] == n for r in runs), runs  # every call is in the report
    walls = ", ".join(f"{w:.2f}" for w, _, _ in runs)
    cpu = ", ".join(f"{c:.2f}" for c in _CPU[-len(runs):])
    rss = max(r for _, r, _ in runs)
    print(f"{kind:6} {n:>9,} calls (filled in {fill:.0f} s, {extra}): report "
          f"--since 30d --by role,model,hour: wall {walls} s, CPU {cpu} s, peak RSS "
          f"{rss:.0f} MB; in-process "
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
    elif what == "fill":  # fill URL N: an existing SQLite file or a running Redis
        url, n = sys.argv[2], int(sys.argv[3])
        t0 = time.perf_counter()
        (fill_redis if url.startswith("redis") else fill_sqlite)(url, n)
        print(f"filled {url} with {n:,} calls in {time.perf_counter() - t0:.0f} s", flush=True)
    elif what == "time":  # time URL: the report on what `fill` wrote (within the hour)
        url = sys.argv[2]
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "budgets.yaml"
            config.write_text("timezone: UTC\n")
            print(_cold(url, config), flush=True)
            runs = [time_report(url, config) for _ in range(3)]
            inner = min(in_process(url) for _ in range(3))
        size = (f"used_memory {_used(url) / 1e6:.0f} MB" if url.startswith("redis") else
                f"file {Path(url.removeprefix('sqlite:///')).stat().st_size / 1e6:.0f} MB")
        _print(url.split(":")[0], runs[0][2], 0.0, runs, size, inner)
    elif what == "memory":
        bench_memory(int(sys.argv[2]) if len(sys.argv) > 2 else 50_000)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
