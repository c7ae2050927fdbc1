"""The guard's own Python per guarded call on Redis, two source trees side by side.

    python bench/bench_guard_own.py [runs] [calls] [--compare OTHER/src]

``bench_guard.py`` measures the whole guarded call, whose p50 moves by
+-20 µs from run to run on a shared machine: too coarse to see a change of a
few µs in the guard's Python. This one splits each call, timed between
Redis calls as the agent loop makes them (two bare round trips, then
``preflight`` + ``settle`` on ``redis://``), into

- ``ledger``: ``RedisLedger.reserve`` + ``settle`` (network, server, client);
- ``estimate``: ``Estimator.count_prompt`` (the 20-turn history, one new
  message per call);
- ``guard_own``: the rest: pricing, usage parsing, cost, calibration,
  margin, tickets, records, ``Decimal`` at the edge;
- ``memory``: the whole call on ``memory://`` in a tight loop (caches hot),
  for scale: the same Python costs ~2-3x more between Redis round trips;

by wrapping those two methods of one guard's objects with a timer (~0.1 µs
each). Each run is a fresh process per tree, the trees alternate (which goes
first alternates too), all against one redis-server; medians per run, then
the median over runs.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "gpt-4o-mini"
CONFIG: dict[str, Any] = {"roles": {"researcher": {"daily": 10**6}}, "crew": {"daily": 10**6}}
USAGE = {"prompt_tokens": 4000, "completion_tokens": 200,
         "prompt_tokens_details": {"cached_tokens": 0}}


def child(url: str, calls: int) -> None:
    """One tree (the one on PYTHONPATH): print the medians as JSON."""
    import redis

    from bench.common import agent_history
    from crew_budget import Guard

    guard = Guard(CONFIG, url)
    client = redis.Redis.from_url(url)
    clock = time.perf_counter_ns
    spent = {"ledger": 0, "estimate": 0}

    def timed(fn: Any, part: str) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            t = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[part] += clock() - t
        return run

    ledger, estimator = guard.ledger, guard.estimator
    ledger.reserve = timed(ledger.reserve, "ledger")  # type: ignore[method-assign]
    ledger.settle = timed(ledger.settle, "ledger")  # type: ignore[method-assign]
    estimator.count_prompt = timed(estimator.count_prompt, "estimate")  # type: ignore[method-assign]
    base = agent_history(turns=20)
    got: dict[str, list[int]] = {"total": [], "ledger": [], "estimate": [], "guard_own": []}
    warm = 300
    for i in range(warm + calls):
        history = [*base, {"role": "user", "content": f"step {os.getpid()}-{i}: continue"}]
        client.get("bench:bare")
        client.incrby("bench:bare:n", 1)
        spent["ledger"] = spent["estimate"] = 0
        t = clock()
        guard.settle(guard.preflight("researcher", MODEL, history, max_tokens=512), USAGE)
        total = clock() - t
        if i >= warm:
            got["total"].append(total)
            got["ledger"].append(spent["ledger"])
            got["estimate"].append(spent["estimate"])
            got["guard_own"].append(total - spent["ledger"] - spent["estimate"])
    # The same call on memory:// in a tight loop (no Redis in between: caches hot).
    mem = Guard(CONFIG, "memory://")
    hot: list[int] = []
    for i in range(warm + calls):
        history = [*base, {"role": "user", "content": f"step {os.getpid()}-m{i}: continue"}]
        t = clock()
        mem.settle(mem.preflight("researcher", MODEL, history, max_tokens=512), USAGE)
        if i >= warm:
            hot.append(clock() - t)
    got["memory"] = hot
    print(json.dumps({k: statistics.median(v) / 1000 for k, v in got.items()}))


def main() -> None:
    argv = list(sys.argv[1:])
    if argv and argv[0] == "--child":
        child(argv[1], int(argv[2]))
        return
    other = "/work/main/src"
    if "--compare" in argv:
        at = argv.index("--compare")
        other = argv[at + 1]
        del argv[at:at + 2]
    runs = int(argv[0]) if argv else 8
    calls = int(argv[1]) if len(argv) > 1 else 3000
    from bench.common import redis_server

    trees = {"compared": other, "this": str(ROOT / "src")}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    with redis_server() as url:
        for r in range(runs):
            for name in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
                env = dict(os.environ, PYTHONPATH=trees[name])
                out = subprocess.run([sys.executable, __file__, "--child", url, str(calls)],
                                     env=env, capture_output=True, text=True, check=True)
                results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"run {r + 1} {name}: " + ", ".join(
                    f"{k} {v:.1f}" for k, v in results[name][-1].items()), flush=True)
    print(f"\n| tree (median of {runs} runs x {calls} calls, µs) | guarded call | ledger "
          "| estimate | guard's own | memory:// call, hot loop |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
        print(f"| {name} ({trees[name]}) | {med['total']:.1f} | {med['ledger']:.1f} | "
              f"{med['estimate']:.1f} | {med['guard_own']:.1f} | {med['memory']:.1f} |")


if __name__ == "__main__":
    main()
