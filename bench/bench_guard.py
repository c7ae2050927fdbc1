"""Guard overhead per call (preflight + settle) on every ledger, side by side.

    python bench/bench_guard.py [iterations]

One run measures, interleaved in rounds so machine noise hits all alike:

- crew-budget preflight + settle on memory://, sqlite:/// and redis:// (a
  real redis-server started on loopback), for a 20-turn ~4k-token agent
  history that grows by one new message per call, as an agent loop does;
- two bare Redis round trips (GET + INCRBY) on the same server: the floor
  any Redis-backed guard has to pay;
- litellm's BudgetManager (projected_cost + update_cost, its documented
  pair) and litellm.token_counter alone, on the same history.

Each round runs a block of calls per case. The Redis guard and the bare
round trips share one block, call by call (which runs first alternates), so
the difference the design targets (Redis guard <= +100 µs p50 over two bare
round trips) compares calls made at the same moments; the other cases take their own
blocks (litellm's run ~1 ms of Python per call, which would otherwise sit
between every pair).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import agent_history, redis_server, summary
from crew_budget import Guard

MODEL = "gpt-4o-mini"
CONFIG: dict[str, Any] = {"roles": {"researcher": {"daily": 10**6}}, "crew": {"daily": 10**6}}
USAGE = {"prompt_tokens": 4000, "completion_tokens": 200,
         "prompt_tokens_details": {"cached_tokens": 0}}


def guard_case(url: str) -> Callable[[list[dict[str, Any]]], None]:
    guard = Guard(CONFIG, url)

    def run(history: list[dict[str, Any]]) -> None:
        ticket = guard.preflight("researcher", MODEL, history, max_tokens=512)
        guard.settle(ticket, USAGE)

    return run


def bare_redis_case(url: str) -> Callable[[list[dict[str, Any]]], None]:
    import redis

    client = redis.Redis.from_url(url)

    def run(_history: list[dict[str, Any]]) -> None:
        client.get("bench:bare")
        client.incrby("bench:bare:n", 1)

    return run


def budget_manager_case() -> Callable[[list[dict[str, Any]]], None]:
    import litellm
    from litellm import BudgetManager

    os.chdir(tempfile.mkdtemp(prefix="cb-bench-bm-"))  # it writes user_cost.json in cwd
    bm = BudgetManager(project_name="bench", client_type="local")
    bm.create_budget(total_budget=10**6, user="researcher")
    response = litellm.ModelResponse(model=MODEL, usage=litellm.Usage(**{
        "prompt_tokens": 4000, "completion_tokens": 200, "total_tokens": 4200}))

    def run(history: list[dict[str, Any]]) -> None:
        bm.projected_cost(MODEL, history, "researcher")
        bm.update_cost(user="researcher", completion_obj=response)

    return run


def token_counter_case() -> Callable[[list[dict[str, Any]]], None]:
    import litellm

    def run(history: list[dict[str, Any]]) -> None:
        litellm.token_counter(model=MODEL, messages=history)

    return run


def main() -> None:
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    tmp = tempfile.mkdtemp(prefix="cb-bench-")
    base = agent_history(turns=20)
    with redis_server() as redis_url:
        cases: dict[str, Callable[[list[dict[str, Any]]], None]] = {
            "two bare Redis round trips (GET + INCRBY)": bare_redis_case(redis_url),
            "crew-budget memory://": guard_case("memory://"),
            "crew-budget sqlite:///": guard_case(f"sqlite:///{tmp}/ledger.db"),
            "crew-budget redis://": guard_case(redis_url),
            "litellm BudgetManager projected_cost+update_cost": budget_manager_case(),
            "litellm.token_counter only": token_counter_case(),
        }
        samples: dict[str, list[float]] = {k: [] for k in cases}
        # Warm up each case (price map, encodings, connections, scripts).
        for fn in cases.values():
            for _ in range(5):
                fn([*base, {"role": "user", "content": "warm up"}])
        rounds, per_round = 20, max(1, iterations // 20)
        paired = ["two bare Redis round trips (GET + INCRBY)", "crew-budget redis://"]
        blocks = [paired] + [[name] for name in cases if name not in paired]
        for r in range(rounds):
            for block in blocks:
                order = list(block)
                for i in range(per_round):
                    # The agent loop: the same history objects plus one NEW message.
                    history = [*base, {"role": "user", "content": f"step {r}-{i}: continue"}]
                    order.reverse()
                    for name in order:
                        t = time.perf_counter()
                        cases[name](history)
                        samples[name].append(time.perf_counter() - t)
    bare = summary(samples["two bare Redis round trips (GET + INCRBY)"])
    print(f"| case ({rounds * per_round} calls each, interleaved) | p50 µs | p99 µs | "
          "p50 vs two bare Redis round trips | p50 minus them |")
    print("|---|---:|---:|---:|---:|")
    for name, s in samples.items():
        st = summary(s)
        print(f"| {name} | {st['p50']:.0f} | {st['p99']:.0f} | {st['p50'] / bare['p50']:.2f}x | "
              f"{st['p50'] - bare['p50']:+.0f} µs |")


if __name__ == "__main__":
    main()
