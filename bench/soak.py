"""Soak: N minutes of mixed traffic on one real redis-server, then the books.

Usage::

    python bench/soak.py --minutes 10                 # the recorded run (bench/README.md)
    python bench/soak.py --seconds 5 --procs 2        # a quick one (tests/ledger use it)

Starts its own redis-server (bench/common.py) unless ``--url`` names one.
``--procs`` worker processes call the ledger's real write path
(``RedisLedger.reserve`` / ``settle`` / ``release``) as fast as they can,
with the DEFAULT settings: 8 roles x 4 models x 2 crews; each call charges
its role's, its crew's and the global day budget; two roles have small
limits, so they are blocked once spent. Each call is settled (~85 %, at a
cost around its reservation, sometimes above), released (~10 %: the
provider was never reached) or abandoned (~5 %: a short lease that nobody
settles, as from a killed process, reaped and charged at its amount by
later reserves). Every 10 s: each worker's RSS, Redis ``used_memory``.

At the end (abandoned leases reaped) it checks the books, to the
nano-dollar, and exits 1 if any check fails:

- every counter (role, crew, global) holds nothing reserved, and its
  ``spent`` equals what the workers say they were charged (settled costs +
  abandoned amounts) and the rollups' cost for that scope;
- the rollups' calls, blocked, released, expired and cost equal the
  records' (the records are kept by default: 7 days);
- each worker's RSS at the end is within 10 % of its first sample.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import random
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_redis_memory import components
from bench.common import redis_server
from crew_budget.ledger import Bucket, Denial, RecordDraft, ReserveRequest, new_reservation_id
from crew_budget.ledger.redis import RedisLedger
from crew_budget.usage import Usage

ROLES = [f"role{i}" for i in range(8)]
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "gemini-2.5-pro"]
CREWS = ["research", "support"]
TIGHT = {"role0": 40_000_000, "role1": 80_000_000}  # $0.04, $0.08 a day: blocked soon
NAMESPACE = "soak"
SAMPLE_S = 10.0


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def buckets_for(day: float, role: str, crew: str) -> tuple[Bucket, ...]:
    return (Bucket(f"role:{role}", "day", "d", TIGHT.get(role, 10**15), day, day + 86400),
            Bucket(f"crew:{crew}", "day", "d", None, day, day + 86400),
            Bucket("global", "day", "d", None, day, day + 86400))


def worker(url: str, seconds: float, seed: int, out: Any) -> None:
    rng = random.Random(seed)
    led = RedisLedger(url, namespace=NAMESPACE)
    now = led.now()
    day = now - now % 86400
    charged: Counter[str] = Counter()  # scope -> nano-USD the worker knows it was charged
    counts: Counter[str] = Counter()
    rss: list[float] = []
    deadline = time.monotonic() + seconds
    next_sample = time.monotonic()
    while time.monotonic() < deadline:
        if time.monotonic() >= next_sample:
            rss.append(_rss_mb())
            next_sample += SAMPLE_S
        role, model, crew = rng.choice(ROLES), rng.choice(MODELS), rng.choice(CREWS)
        amount = rng.randrange(100_000, 4_000_000)
        draft = RecordDraft(role, model, crew, amount, rng.randrange(100, 5000), 500,
                            {"run": f"soak#{seed:04x}"} if rng.random() < 0.5 else {})
        fate = rng.random()
        lease = 0.2 if fate < 0.05 else 600.0
        rid = new_reservation_id()
        got = led.reserve(ReserveRequest(rid, buckets_for(day, role, crew), amount, lease, draft))
        if isinstance(got, Denial):
            counts["blocked"] += 1
            continue
        scopes = (f"role:{role}", f"crew:{crew}", "global")
        if fate < 0.05:
            counts["abandoned"] += 1
            cost = amount  # charged at its amount when reaped
        elif fate < 0.15:
            res = led.release(rid)
            assert res.applied and res.cost_nano == 0
            counts["released"] += 1
            cost = 0
        else:
            cost = rng.randrange(amount // 2, amount * 6 // 5)
            usage = Usage(rng.randrange(100, 5000), rng.randrange(0, 100), 0,
                          rng.randrange(50, 800), rng.randrange(0, 50))
            res = led.settle(rid, cost, usage)
            assert res.applied and res.cost_nano == cost, res
            counts["settled"] += 1
            if rng.random() < 0.02:  # a retried settle: answered from the tombstone
                again = led.settle(rid, cost + 1, usage)
                assert (again.state, again.applied, again.cost_nano) == ("settled", False, cost)
                counts["repeats"] += 1
        for s in scopes:
            charged[s] += cost
    rss.append(_rss_mb())
    led.close()
    out.put((dict(charged), dict(counts), rss))


def check_books(url: str, charged: Counter[str]) -> list[tuple[str, str, str, bool]]:
    """(what, expected, found, ok) rows; see the module docstring."""
    led = RedisLedger(url, namespace=NAMESPACE)
    time.sleep(0.5)  # the last abandoned leases (0.2 s) run out
    while led.reap(10_000):
        pass
    now = led.now()
    day = now - now % 86400
    rows: list[tuple[str, str, str, bool]] = []
    rollups = led.rollups(since=day - 3600)
    records = led.records(since=day - 3600)
    by_scope: Counter[str] = Counter()
    for r in rollups:
        if r.scope is None:
            by_scope["global"] += r.cost_nano
            by_scope[f"role:{r.role}"] += r.cost_nano
            if r.crew is not None:
                by_scope[f"crew:{r.crew}"] += r.cost_nano
    scopes = [f"role:{r}" for r in ROLES] + [f"crew:{c}" for c in CREWS] + ["global"]
    states = led.status([Bucket(s, "day", "d", None, day, day + 86400) for s in scopes])
    for s, st in zip(scopes, states, strict=True):
        ok = st.reserved_nano == 0 and st.spent_nano == charged[s] == by_scope[s]
        rows.append((f"counter {s}: spent (reserved)",
                     f"{charged[s]} (0) charged, {by_scope[s]} in rollups",
                     f"{st.spent_nano} ({st.reserved_nano})", ok))
    rec: Counter[str] = Counter()
    for x in records:
        rec[x.outcome] += 1
        if x.outcome in ("settled", "expired"):
            rec["calls"] += 1
            rec["cost"] += x.cost_nano
    ru: Counter[str] = Counter()
    for r in rollups:
        ru["calls"] += r.calls
        ru["blocked"] += r.blocked
        ru["released"] += r.released
        ru["expired"] += r.expired
        ru["cost"] += r.cost_nano
    for k in ("calls", "blocked", "released", "expired", "cost"):
        rows.append((f"rollups == records: {k}", str(rec[k]), str(ru[k]), rec[k] == ru[k]))
    led.close()
    return rows


def soak(url: str, seconds: float, procs: int) -> bool:
    import redis

    ctx = mp.get_context("fork")
    out: Any = ctx.Queue()
    client = redis.Redis.from_url(url)
    base = int(client.info("memory")["used_memory"])
    workers = [ctx.Process(target=worker, args=(url, seconds, i + 1, out)) for i in range(procs)]
    t0 = time.monotonic()
    for w in workers:
        w.start()
    mem: list[tuple[float, int]] = []
    while any(w.is_alive() for w in workers) and len(mem) <= seconds / SAMPLE_S + 2:
        mem.append((time.monotonic() - t0, int(client.info("memory")["used_memory"]) - base))
        time.sleep(min(SAMPLE_S, max(0.5, seconds / 4)))
    results = []
    while len(results) < len(workers):
        try:
            results.append(out.get(timeout=1))
        except queue.Empty:
            if any(w.exitcode not in (None, 0) for w in workers):
                raise SystemExit("a worker failed (its traceback is above)") from None
    for w in workers:
        w.join(timeout=60)
    mem.append((time.monotonic() - t0, int(client.info("memory")["used_memory"]) - base))
    client.close()
    parts_client = redis.Redis.from_url(url, decode_responses=True)
    parts = components(parts_client, f"cb:{{{NAMESPACE}}}:")
    parts_client.close()
    charged: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for c, n, _rss in results:
        charged.update(c)
        counts.update(n)
    calls = sum(counts[k] for k in ("settled", "released", "abandoned", "blocked"))
    print(f"{procs} processes, {seconds:.0f} s: {calls:,} calls ({calls / seconds:,.0f}/s): "
          + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))
    print("\nRedis used_memory above the empty server, every ~10 s:")
    print("| t (s) | used_memory (MB) | bytes per call so far |")
    print("|---:|---:|---:|")
    step = max(1, len(mem) // 12)
    for i, (t, m) in enumerate(mem):
        if i % step == 0 or i == len(mem) - 1:
            share = calls * min(1.0, t / seconds) or 1
            print(f"| {t:.0f} | {m / 1e6:.1f} | {m / share:.0f} |")
    nkeys = parts.pop("(keys)")
    print(f"\nby component at the end (MEMORY USAGE, {nkeys:,} keys):")
    for name, size in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {name:28} {size / 1e6:8.1f} MB  {size / calls:6.1f} bytes/call")
    print("\nclient RSS per worker (MB): first sample, last, change")
    ok = True
    for i, (_c, _n, rss) in enumerate(results):
        change = (rss[-1] - rss[0]) / rss[0]
        flat = abs(change) <= 0.10
        ok &= flat
        print(f"  worker {i + 1}: {rss[0]:.1f} -> {rss[-1]:.1f} ({change:+.1%}, "
              f"{len(rss)} samples) {'ok' if flat else 'NOT FLAT'}")
    print(f"  (this process: max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.0f}"
          " MB)")
    print("\n| the books (nano-USD) | expected | found | |")
    print("|---|---|---|---|")
    for what, want, got, good in check_books(url, charged):
        ok &= good
        print(f"| {what} | {want} | {got} | {'ok' if good else 'MISMATCH'} |")
    print(f"\nbooks balanced: {ok}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--url", default=None, help="an empty Redis to use instead of starting one")
    opts = ap.parse_args()
    seconds = opts.seconds if opts.seconds is not None else (opts.minutes or 10) * 60
    if opts.url:
        ok = soak(opts.url, seconds, opts.procs)
    else:
        with redis_server() as url:
            ok = soak(url, seconds, opts.procs)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
