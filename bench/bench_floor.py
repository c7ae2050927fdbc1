"""How far below the guarded call a Redis hard limit can go: the floor, measured.

    python bench/bench_floor.py [calls]

Issue 11 asks the guarded call on Redis (preflight + settle, 20-turn ~4k-token
history) to add <= 100 µs p50 over the two bare round trips it needs. This
bench puts the guarded call beside what it is built from, all interleaved
call by call against one redis-server (started on loopback), so the machine's
noise hits every case alike:

- (a) two bare round trips: redis-py ``GET`` + ``INCRBY``;
- (t) two ``EVALSHA`` of ``return 1`` through redis-py's ``register_script``:
  what running any script at all adds;
- (m) the *minimal* hard limit with reservations, as two scripts through the
  same public redis-py call: reserve reads three buckets' spent + reserved
  (``HMGET``), refuses if the call does not fit, adds the amount to each
  bucket's reserved and stores the reservation (``SET PX``); settle reads
  it, moves amount → cost in each bucket (two ``HINCRBY``) and deletes it.
  No argument validation, no epoch (ledger-loss check), no lease index, no
  tombstone (so a repeated settle would charge twice), no spend record, no
  hourly rollup: each of those is an invariant of ../shared/DESIGN.md or an
  acceptance line of issue 11 that the real scripts keep;
- (l) ``RedisLedger.reserve`` + ``settle`` alone (the real scripts, no estimate);
- (g) ``Guard.preflight`` + ``Guard.settle`` on ``redis://`` (what a user runs);
- (p) ``Guard.preflight`` + ``Guard.settle`` on ``memory://``: the guard's Python
  (estimate included) with an in-process ledger;
- (e) the estimate alone (``Estimator.count_prompt`` of the history, the
  guard's own estimator): what any guard that stops a call *before* it is sent
  must compute first.

(l) + (e), the real ledger plus the estimate with no other guard code, is the
least this design's guard can add over (a) on this machine; (m) + (e) what a
guard without the invariants' writes could.

Prints one markdown table: p50, p99 and the p50 minus (a). Results and the
command: bench/README.md. Timings are never test assertions.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_redis import (
    CONFIG,
    LEDGER_ONLY,
    MODEL,
    TRIVIAL,
    USAGE,
    A,
    B,
    Case,
    split_cases,
)
from bench.common import agent_history, redis_server, summary

# The least a reservation-based hard limit over three buckets can run on the
# server. KEYS: the reservation, then the buckets; ARGV: amount, lease ms,
# then each bucket's limit.
MIN_RESERVE = """
local amount = tonumber(ARGV[1])
for i = 2, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 's', 'r')
  if (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0) + amount > tonumber(ARGV[i + 1]) then
    return 0
  end
end
for i = 2, #KEYS do redis.call('HINCRBY', KEYS[i], 'r', amount) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# KEYS: the reservation, then its buckets; ARGV: the cost.
MIN_SETTLE = """
local amount = redis.call('GET', KEYS[1])
if not amount then return 0 end
for i = 2, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'r', -tonumber(amount))
  redis.call('HINCRBY', KEYS[i], 's', ARGV[1])
end
redis.call('DEL', KEYS[1])
return 1
"""


def cases(url: str) -> dict[str, Case]:
    from crew_budget import Guard
    from crew_budget.estimate import Estimator
    from crew_budget.ledger import new_reservation_id

    split, client, _guard = split_cases(url)
    reserve, settle = client.register_script(MIN_RESERVE), client.register_script(MIN_SETTLE)
    on_memory = Guard(CONFIG, "memory://")
    bucket_keys = [f"bench:floor:b{i}" for i in range(3)]
    # Its own estimator, so it sees each history once, as a guard does (the
    # guards' estimators would answer from the memo the other cases filled).
    estimator, price = Estimator(), on_memory.prices.get(MODEL)

    def minimal(_h: list[dict[str, Any]]) -> None:
        rkey = "bench:floor:r:" + new_reservation_id()
        if reserve(keys=[rkey, *bucket_keys], args=[1000, 600000, 10**15, 10**15, 10**15]):
            settle(keys=[rkey, *bucket_keys], args=[900])

    def on_memory_case(history: list[dict[str, Any]]) -> None:
        ticket = on_memory.preflight("researcher", MODEL, history, max_tokens=512)
        on_memory.settle(ticket, USAGE)

    def estimate(history: list[dict[str, Any]]) -> None:
        estimator.count_prompt(MODEL, price, history)

    return {
        "(a) two bare round trips (GET + INCRBY)": split[A],
        "(t) two EVALSHA of `return 1`": split[TRIVIAL],
        "(m) minimal hard limit: two scripts, counters only": minimal,
        "(l) RedisLedger.reserve + settle (no estimate)": split[LEDGER_ONLY],
        "(g) Guard.preflight + settle on redis://": split[B],
        "(p) Guard.preflight + settle on memory://": on_memory_case,
        "(e) the estimate alone (Estimator.count_prompt)": estimate,
    }


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    base = agent_history(turns=20)
    with redis_server() as url:
        fns = cases(url)
        for i in range(50):  # warm up: price map, encodings, connections, scripts
            for fn in fns.values():
                fn([*base, {"role": "user", "content": f"warm up {i}"}])
        got: dict[str, list[float]] = {name: [] for name in fns}
        order = list(fns)
        for i in range(calls):
            # The agent loop: the same history objects plus one NEW message.
            history = [*base, {"role": "user", "content": f"step {i}: continue with the next"}]
            order = order[1:] + order[:1]  # each case follows each other in turn
            for name in order:
                t0 = time.perf_counter()
                fns[name](history)
                got[name].append(time.perf_counter() - t0)
    stats = {name: summary(s) for name, s in got.items()}
    floor = stats["(a) two bare round trips (GET + INCRBY)"]["p50"]
    print(f"| case ({calls} calls each, interleaved) | p50 µs | p99 µs | p50 minus (a) |")
    print("|---|---:|---:|---:|")
    for name, st in stats.items():
        print(f"| {name} | {st['p50']:.0f} | {st['p99']:.0f} | {st['p50'] - floor:+.0f} µs |")
    def over(name: str) -> float:
        return stats[name]["p50"] - floor

    est = stats["(e) the estimate alone (Estimator.count_prompt)"]["p50"]
    real = over("(l) RedisLedger.reserve + settle (no estimate)") + est
    least = over("(m) minimal hard limit: two scripts, counters only") + est
    print(f"\n(l) - (a) + (e): {real:+.0f} µs, the real ledger and the estimate with no other "
          f"guard code; (m) - (a) + (e): {least:+.0f} µs, without the invariants' writes "
          "(target for the whole guard: <= +100 µs)")


if __name__ == "__main__":
    main()
