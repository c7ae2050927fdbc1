"""The estimate margin's cost per call (preflight + settle), on and off, side by side.

    python bench/bench_margin.py [iterations]

Two guards per ledger (memory://, and redis:// on a loopback redis-server),
one with ``estimate_margin`` on (the default) and one with it off, run call
by call in alternation (which goes first alternates) on the same growing
20-turn agent history, so machine noise hits both alike. With the margin
on, every settle adds a sample and every 16th merges them into the ledger
(one more round trip on Redis), and every preflight looks the family's
margin up.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import agent_history, redis_server, summary
from crew_budget import Guard

MODEL = "gpt-4o-mini"


def make(url: str, margin: bool) -> Guard:
    cfg: dict[str, Any] = {"roles": {"researcher": {"daily": 10**6}},
                           "estimate_margin": {} if margin else {"enabled": False}}
    return Guard(cfg, url)


def main() -> None:
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    base = agent_history(turns=20)
    with redis_server() as redis_url:
        for url in ("memory://", redis_url):
            pair = {"on": make(url, True), "off": make(url, False)}
            samples: dict[str, list[float]] = {"on": [], "off": []}
            history = [*base]
            for i in range(iterations + 50):
                if i % 20 == 0:  # a new conversation every 20 calls, as agents start over
                    history = [*base]
                history = [*history, {"role": "user", "content": f"step {i}"}]
                order = ("on", "off") if i % 2 else ("off", "on")
                for name in order:
                    guard = pair[name]
                    t0 = time.perf_counter()
                    ticket = guard.preflight("researcher", MODEL, history, max_tokens=512)
                    # Billed 3 % above the raw count: a small margin is learned and used.
                    usage = {"prompt_tokens": ticket.counted_prompt_tokens * 103 // 100,
                             "completion_tokens": 200}
                    guard.settle(ticket, usage)
                    if i >= 50:  # warm-up: encodings, scripts, the family's first read
                        samples[name].append(time.perf_counter() - t0)
            on, off = summary(samples["on"]), summary(samples["off"])
            shown = "redis://" if url != "memory://" else url
            print(f"{shown:<10} margin off p50 {off['p50']:7.1f} µs p99 {off['p99']:7.1f}"
                  f" | on p50 {on['p50']:7.1f} µs p99 {on['p99']:7.1f}"
                  f" | +{on['p50'] - off['p50']:.1f} µs p50"
                  f" (margin {pair['on'].margins.view('openai/gpt-4o-mini').margin})")
            for g in pair.values():
                g.close()


if __name__ == "__main__":
    main()
