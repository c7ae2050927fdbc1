"""What token and call limits cost a reserve + settle on Redis (issue 12, item 3).

One process, one throwaway redis-server, ``RedisLedger.reserve`` + ``settle``
of one call, three sets of buckets measured in interleaved rounds (so load
on this shared machine hits them alike):

- ``usd 9``: role, crew and global over hour, day and month, all USD (what a
  configuration without units sends: no units argument at all);
- ``usd 9 + units 3``: the same plus the role's daily ``input_tokens``,
  ``output_tokens`` and ``calls`` (one more counter each, and the units
  argument: ``",,,,,,,,,i4100,o500,c1"``);
- ``usd 12``: twelve USD buckets, to tell the cost of three more counters
  from the cost of the units handling itself.

    PYTHONPATH=src python -m bench.bench_units [--calls 2000] [--rounds 5] [--only usd9]

``--only usd9`` measures the USD-only set alone, so the same command can
run against crew-budget before units (``PYTHONPATH=/path/to/main/src``)
to compare the two scripts on what configurations without units send.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.common import redis_server


def _buckets(now: float, units: bool, extra_usd: int = 0) -> tuple[object, ...]:
    from crew_budget.ledger import Bucket

    out = []
    for scope in ("role:r", "crew:c", "global"):
        for window, length in (("hour", 3600), ("day", 86_400), ("month", 31 * 86_400)):
            out.append(Bucket(scope, window, "p", 10**15, now - 60, now + length))  # type: ignore[arg-type]
    for i in range(extra_usd):
        out.append(Bucket(f"model:m{i}", "day", "p", 10**15, now - 60, now + 86_400))
    if units:
        for unit in ("input_tokens", "output_tokens", "calls"):
            out.append(Bucket("role:r", "day", "p", 10**12, now - 60, now + 86_400, unit))  # type: ignore[arg-type]
    return tuple(out)


def run(calls: int, rounds: int, only: str | None = None) -> dict[str, list[float]]:
    from crew_budget.ledger import RecordDraft, ReserveRequest, new_reservation_id
    from crew_budget.ledger.redis import RedisLedger
    from crew_budget.usage import Usage

    results: dict[str, list[float]] = {}
    with redis_server() as url:
        led = RedisLedger(url, namespace="units-bench")
        now = led.now()
        sets = {"usd 9": _buckets(now, False)}
        if only is None:  # --only usd9: also runs on crew-budget before units (main)
            sets.update({"usd 9 + units 3": _buckets(now, True), "usd 12": _buckets(now, False, 3)})
        results = {name: [] for name in sets}
        draft = RecordDraft(role="r", model="m", crew="c", estimate_nano=1000,
                            prompt_tokens_estimate=4100, output_tokens_reserved=500)
        usage = Usage(4000, 0, 0, 300, 0)
        for _ in range(rounds):
            for name, buckets in sets.items():
                samples = []
                for _ in range(calls):
                    rid = new_reservation_id()
                    t = time.perf_counter()
                    led.reserve(ReserveRequest(rid, buckets, 1000, 600.0, draft))  # type: ignore[arg-type]
                    led.settle(rid, 900, usage)
                    samples.append(time.perf_counter() - t)
                results[name].append(statistics.median(samples) * 1e6)
        led.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=["usd9"], default=None)
    args = parser.parse_args()
    results = run(args.calls, args.rounds, args.only)
    base = statistics.median(results["usd 9"])
    print(f"reserve + settle p50 µs on Redis, {args.calls} calls x {args.rounds} rounds\n")
    print("| buckets | p50 µs (median of rounds) | rounds | vs usd 9 |")
    print("|---|---:|---|---:|")
    for name, p50s in results.items():
        med = statistics.median(p50s)
        print(f"| {name} | {med:.0f} | {' / '.join(f'{x:.0f}' for x in p50s)} | "
              f"{med / base:.2f}x |")


if __name__ == "__main__":
    main()
