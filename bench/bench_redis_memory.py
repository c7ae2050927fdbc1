"""Redis memory per call with the default settings, by component.

Usage::

    python bench/bench_redis_memory.py 1000000 100000       # bulk (pipelined) path
    python bench/bench_redis_memory.py 20000 --calls         # one reserve + settle at a time

Makes N guarded calls on a fresh redis-server (bench/common.py) through the
ledger's write path, ``RedisLedger.reserve`` then ``RedisLedger.settle``
(role, crew and global buckets, day windows, one role and model, the
metadata a CrewAI run adds), with the ledger's DEFAULT settings, and prints
``INFO memory`` used_memory growth per call at each checkpoint (the extra
numbers after N), so the growth is seen to be linear, plus where it lives:
``MEMORY USAGE`` (exact, ``SAMPLES 0``) of each kind of key, per call.

Bulk path (default): each call's reserve and settle are made by the
ledger's own methods, whose script call (``EVALSHA`` keys and arguments,
exactly as built for a real call) is captured and sent in pipelines of
``--batch`` calls: the same scripts and arguments, without a round trip
per call. Every reply is checked (a reserve must answer ``ok``, a settle
``settled``). ``--calls`` makes every call for real, one after the other.

Numbers: bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from bench.common import redis_server
from crew_budget.ledger import Bucket, RecordDraft, ReserveRequest, new_reservation_id
from crew_budget.ledger.redis import RedisLedger
from crew_budget.usage import Usage

AMOUNT, COST = 2_000_000, 1_000_000
USAGE = Usage(input_tokens=1200, output_tokens=300)


def _buckets(led: RedisLedger) -> tuple[Bucket, ...]:
    now = led.now()
    day = now - now % 86400
    return (Bucket("role:researcher", "day", "d", 10**15, day, day + 86400),
            Bucket("crew:team", "day", "d", None, day, day + 86400),
            Bucket("global", "day", "d", None, day, day + 86400))


DRAFT = RecordDraft("researcher", "gpt-4o-mini", "team", AMOUNT, 1200, 300,
                    {"run": "research#3f2a"})


class Capture:
    """Stands in for ``RedisLedger._call``: keeps the script call, answers as Redis would."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Sequence[Any], Sequence[Any]]] = []

    def __call__(self, script: str, keys: Sequence[Any], args: Sequence[Any], *,
                 idempotent: bool = True) -> Any:
        self.calls.append((script, keys, args))
        if script == "reserve":
            return ["ok", str(int(time.time() * 1000))]
        return ["settled", 1, args[1]]


def bulk(led: RedisLedger, client: redis.Redis, buckets: tuple[Bucket, ...], n: int,
         batch: int) -> None:
    real = led._call
    shas = {name: script.sha for name, script in led._lua.items()}
    done = 0
    while done < n:
        m = min(batch, n - done)
        cap = Capture()
        led._call = cap  # type: ignore[method-assign]
        try:
            rids = [new_reservation_id() for _ in range(m)]
            for rid in rids:
                led.reserve(ReserveRequest(rid, buckets, AMOUNT, 600, DRAFT))
            for rid in rids:
                led.settle(rid, COST, USAGE)
        finally:
            led._call = real  # type: ignore[method-assign]
        pipe = client.pipeline(transaction=False)
        for script, keys, args in cap.calls:
            pipe.evalsha(shas[script], len(keys), *keys, *args)
        replies = pipe.execute()
        for (script, _k, _a), reply in zip(cap.calls, replies, strict=True):
            want = "ok" if script == "reserve" else "settled"
            if reply[0] != want or (script == "settle" and int(reply[1]) != 1):
                raise SystemExit(f"{script} answered {reply!r}")
        done += m


def one_by_one(led: RedisLedger, buckets: tuple[Bucket, ...], n: int) -> None:
    for _ in range(n):
        rid = new_reservation_id()
        led.reserve(ReserveRequest(rid, buckets, AMOUNT, 600, DRAFT))
        assert led.settle(rid, COST, USAGE).applied


def components(client: redis.Redis, prefix: str) -> dict[str, int]:
    kinds = {"records": "records (stream)", "t": "tombstones (t:*)", "c": "record contexts (c:*)",
             "ru": "rollups (ru:*)", "b": "counters (b:*)", "r": "reservations held (r:*)",
             "leases": "leases"}
    out: dict[str, int] = defaultdict(int)
    keys = 0
    for key in client.scan_iter(match=prefix + "*", count=5000):
        kind = key[len(prefix):].split(":", 1)[0]
        out[kinds.get(kind, "other")] += int(client.memory_usage(key, samples=0) or 0)
        keys += 1
    out["(keys)"] = keys
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("n", type=int, nargs="?", default=1_000_000)
    ap.add_argument("checkpoints", type=int, nargs="*", default=[100_000])
    ap.add_argument("--calls", action="store_true", help="one real reserve + settle at a time")
    ap.add_argument("--batch", type=int, default=500)
    opts = ap.parse_args()
    marks = sorted({c for c in opts.checkpoints if 0 < c < opts.n} | {opts.n})
    with redis_server() as url:
        led = RedisLedger(url)  # the defaults: what open_ledger(url) makes
        client = redis.Redis.from_url(url, decode_responses=True)
        buckets = _buckets(led)
        one_by_one(led, buckets, 200)  # warm up: epoch, scripts, counters, groups, rollup
        before = int(client.info("memory")["used_memory"])
        t0 = time.perf_counter()
        done = 0
        print(f"redis-server {client.info('server')['redis_version']}, records kept "
              f"{led.records_retention_days:g} days (default), path "
              f"{'one call at a time' if opts.calls else f'bulk, pipelines of {opts.batch}'}")
        for mark in marks:
            if opts.calls:
                one_by_one(led, buckets, mark - done)
            else:
                bulk(led, client, buckets, mark - done, opts.batch)
            done = mark
            used = int(client.info("memory")["used_memory"]) - before
            print(f"{done:>9,} calls ({time.perf_counter() - t0:5.0f} s): used_memory "
                  f"+{used / 1e6:7.1f} MB = {used / done:6.1f} bytes/call "
                  f"-> {used / done:.0f} MB per 1M calls", flush=True)
        parts = components(client, led.prefix)
        nkeys = parts.pop("(keys)")
        print(f"by component after {done:,} calls (MEMORY USAGE, {nkeys:,} keys):")
        for name, size in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"  {name:28} {size / 1e6:8.1f} MB  {size / done:6.1f} bytes/call")
        led.close()
        client.close()


if __name__ == "__main__":
    main()
