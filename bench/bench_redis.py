"""Redis ledger: guard overhead vs bare round trips, and reservations per second.

    python bench/bench_redis.py [calls] [seconds] [processes] [--compare OLD/redis.py]

Starts its own redis-server on a free loopback port, then measures in ONE run:

(a) two bare Redis round trips of the same kind of work the guard does (a
    GET and an INCRBY, redis-py, same server);
(b) ``Guard.preflight`` + ``Guard.settle`` on the ``RedisLedger`` for a
    20-turn ~4k-token agent history that grows by one new message per call,
    as an agent loop does (role hourly + daily, crew daily: three buckets).

1. The target: (a) and (b) alone, interleaved call by call (which runs first
   alternates), so machine noise hits both alike; the difference of medians
   is the design target (<= +100 µs p50), the ratio is given per fifth of
   the run.
2. The split: (a), (b), two EVALSHA of a trivial script and the ledger's
   reserve + settle alone, all four interleaved call by call, plus what the
   server spends per call: ``INFO commandstats`` EVALSHA + FCALL usec_per_call and
   the Redis main thread's CPU time (``used_cpu_*_main_thread``). With four
   cases in turn each one runs after more unrelated work, so (b) (the case
   with the most code and data) is slower here than in 1.
3. Server time per reserve and per settle, the function library (``FCALL``,
   Redis >= 7) against the same operations as scripts (``EVALSHA``, what a
   Redis 6 gets), in alternating blocks.
4. Aggregate reservations per second: ``processes`` processes, each doing
   ``RedisLedger.reserve`` + ``settle`` in a loop for ``seconds`` seconds
   against the one server (and the same through ``Guard``, estimator
   included).

Results print as markdown tables. Timings are never assertions in tests.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import agent_history, redis_server, summary

MODEL = "gpt-4o-mini"
CONFIG: dict[str, Any] = {
    "roles": {"researcher": {"hourly": 10**5, "daily": 10**6}},
    "crew": {"name": "research", "daily": 10**6},
}
USAGE = {"prompt_tokens": 4000, "completion_tokens": 200}
A = "(a) two bare Redis round trips (GET + INCRBY)"
B = "(b) Guard.preflight + Guard.settle on redis://"


def _evalsha(client: Any) -> tuple[float, float]:
    """Total script usec and calls so far, EVALSHA and FCALL (INFO commandstats)."""
    stats = client.info("commandstats")
    usec = calls = 0.0
    for name in ("cmdstat_evalsha", "cmdstat_fcall"):
        st = stats.get(name, {})
        usec += float(st.get("usec", 0))
        calls += float(st.get("calls", 0))
    return usec, calls


def _server_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


Case = Callable[[list[dict[str, Any]]], None]
TRIVIAL = "two EVALSHA of a trivial script"
LEDGER_ONLY = "RedisLedger.reserve + settle alone (no estimate)"


def split_cases(url: str) -> tuple[dict[str, Case], Any, Any]:
    """(a), (b), two trivial scripts and the ledger alone, each a call taking the
    history; with the redis-py client and the guard they use (to close).
    ``bench_floor.py`` runs the same cases beside a few more."""
    import redis

    from crew_budget import Guard
    from crew_budget.ledger import RecordDraft, ReserveRequest, new_reservation_id
    from crew_budget.usage import Usage

    client = redis.Redis.from_url(url)
    guard = Guard(CONFIG, url)
    ledger = guard.ledger
    trivial = client.register_script("return 1")
    draft = RecordDraft(role="researcher", model=MODEL, estimate_nano=1000)
    usage = Usage(4000, 0, 0, 200, 0)

    def bare(_history: list[dict[str, Any]]) -> None:
        client.get("bench:bare")
        client.incrby("bench:bare:n", 1)

    def guarded(history: list[dict[str, Any]]) -> None:
        ticket = guard.preflight("researcher", MODEL, history, max_tokens=512)
        guard.settle(ticket, USAGE)

    def trivial_scripts(_history: list[dict[str, Any]]) -> None:
        trivial(keys=["bench:t"])
        trivial(keys=["bench:t"])

    def ledger_only(_history: list[dict[str, Any]]) -> None:
        buckets = tuple(guard.buckets("researcher"))
        res = ledger.reserve(ReserveRequest(new_reservation_id(), buckets, 1000, 600.0, draft))
        ledger.settle(res.reservation_id, 900, usage)  # type: ignore[union-attr]

    return ({A: bare, B: guarded, TRIVIAL: trivial_scripts, LEDGER_ONLY: ledger_only},
            client, guard)


def overhead(url: str, calls: int) -> tuple[
    dict[str, dict[str, float]], list[float], dict[str, dict[str, float]], int,
    dict[str, tuple[float, float]],
]:
    """1. (a) and (b) alone, interleaved; 2. with two more rows that split (b) up.

    Returns 1's summaries and its (b)/(a) median ratio per fifth of the run,
    2's summaries, the history's estimated prompt tokens, and per case its
    server cost: (EVALSHA + FCALL usec_per_call, main-thread CPU µs per call),
    medians over blocks of that case alone after the interleaved runs.
    """
    cases, client, guard = split_cases(url)
    base = agent_history(turns=20)
    for i in range(50):  # warm up: price map, encodings, connections, scripts
        for fn in cases.values():
            fn([*base, {"role": "user", "content": f"warm up {i}"}])
    tokens = guard.preflight("researcher", MODEL, base, max_tokens=1).prompt_tokens

    def interleaved(names: list[str], offset: int) -> dict[str, list[float]]:
        got: dict[str, list[float]] = {name: [] for name in names}
        order = list(names)
        for i in range(calls):
            # The agent loop: the same history objects plus one NEW message.
            history = [*base, {"role": "user",
                               "content": f"step {offset + i}: continue with the next source"}]
            order.reverse()
            for name in order:
                t0 = time.perf_counter()
                cases[name](history)
                got[name].append(time.perf_counter() - t0)
        return got

    head = interleaved([A, B], 0)
    samples = interleaved(list(cases), calls)
    # Server cost per case: blocks of one case alone, cases taking turns over
    # several rounds; medians, as the machine's load shifts between rounds.
    cost: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    history = [*base, {"role": "user", "content": "server cost"}]
    block = max(50, calls // 20)
    for _round in range(9):
        for name, fn in cases.items():
            before = _evalsha(client), _server_cpu(client)
            for _ in range(block):
                fn(history)
            usec, n = (a - b for a, b in zip(_evalsha(client), before[0], strict=True))
            cpu = (_server_cpu(client) - before[1]) / block * 1e6
            cost[name].append((usec / n if n else 0.0, cpu))
    server = {name: (statistics.median(u for u, _ in c), statistics.median(cpu for _, cpu in c))
              for name, c in cost.items()}
    guard.close()
    client.close()
    fifth = calls // 5
    parts = [statistics.median(head[B][k * fifth:(k + 1) * fifth])
             / statistics.median(head[A][k * fifth:(k + 1) * fifth]) for k in range(5)]
    return ({name: summary(s) for name, s in head.items()}, parts,
            {name: summary(s) for name, s in samples.items()}, tokens, server)


def functions_vs_evalsha(url: str, rounds: int = 9, block: int = 400
                         ) -> dict[str, dict[str, float]]:
    """3. Server µs per reserve and per settle (``INFO commandstats``), the same
    ledger calling the function library (``FCALL``) or the scripts
    (``EVALSHA``, what Redis < 7 gets), in alternating blocks; medians.

    Flips the ledger's private ``_functions`` switch: a benchmark may, the
    library never does from outside.
    """
    import redis

    from crew_budget import Guard
    from crew_budget.ledger import RecordDraft, ReserveRequest, new_reservation_id
    from crew_budget.usage import Usage

    client = redis.Redis.from_url(url)
    guard = Guard(CONFIG, url)
    ledger: Any = guard.ledger
    buckets = tuple(guard.buckets("researcher"))
    draft = RecordDraft(role="researcher", model=MODEL, estimate_nano=1000)
    usage = Usage(4000, 0, 0, 200, 0)
    got: dict[str, dict[str, list[float]]] = {m: {"reserve": [], "settle": []}
                                              for m in ("FCALL", "EVALSHA")}
    for i in range(rounds + 1):
        for mode in got:
            ledger._functions = mode == "FCALL"
            before = _evalsha(client)
            ids = [ledger.reserve(ReserveRequest(new_reservation_id(), buckets, 1000, 600.0,
                                                 draft)).reservation_id for _ in range(block)]
            reserved = _evalsha(client)
            for rid in ids:
                ledger.settle(rid, 900, usage)
            settled = _evalsha(client)
            if i:  # the first round loads the scripts and the library
                got[mode]["reserve"].append((reserved[0] - before[0]) / (reserved[1] - before[1]))
                got[mode]["settle"].append((settled[0] - reserved[0]) / (settled[1] - reserved[1]))
    guard.close()
    client.close()
    return {mode: {op: statistics.median(v) for op, v in ops.items()}
            for mode, ops in got.items()}


def _load_ledger_class(path: str) -> Any:
    """``RedisLedger`` from another ``ledger/redis.py`` (same package), running the
    Lua scripts beside that file (its ``lua/`` directory) when there is one, so
    the comparison is that tree's ledger as it is, not its Python on our Lua."""
    import importlib.util
    from functools import lru_cache

    spec = importlib.util.spec_from_file_location("crew_budget.ledger._bench_compare", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    lua = Path(path).resolve().parent / "lua"
    if lua.is_dir() and hasattr(module, "_sources"):
        names = list(module._sources())
        module._sources = lru_cache(maxsize=1)(lambda: {
            name: (lua / "_common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()
            for name in names
        })
    return module.RedisLedger


def per_parser(url: str, calls: int, compare: str | None
               ) -> tuple[dict[str, dict[str, float]], dict[str, list[float]]]:
    """0. (a) and (b) per reply parser (and (b) on ``compare``'s ledger), interleaved.

    Returns the summaries and, per (b) case, its p50 minus its parser's (a)
    p50 per fifth of the run (µs). The parser is picked with redis-py's
    ``parser_class`` connection option (its classes are private to redis-py:
    fine for a benchmark, never done by the library).
    """
    import redis
    import redis.utils
    from redis._parsers import _HiredisParser, _RESP2Parser

    from crew_budget import Guard
    from crew_budget.ledger.redis import RedisLedger

    if not redis.utils.HIREDIS_AVAILABLE:
        raise SystemExit("hiredis is not installed: pip install 'crew-budget[redis]'")
    parsers = {"hiredis": _HiredisParser, "python": _RESP2Parser}
    base = agent_history(turns=20)
    cases: dict[str, Any] = {}
    closers: list[Any] = []
    ledgers: list[tuple[str, Any]] = [("this", RedisLedger)]
    if compare:
        ledgers.append(("compared", _load_ledger_class(compare)))
    for pname, pclass in parsers.items():
        client = redis.Redis.from_url(url, parser_class=pclass)
        closers.append(client)

        def bare(_h: list[dict[str, Any]], c: Any = client) -> None:
            c.get("bench:bare")
            c.incrby("bench:bare:n", 1)

        cases[f"(a) bare GET + INCRBY, {pname} parser"] = bare
        for lname, cls in ledgers:
            ledger = cls(url)
            ledger._options["parser_class"] = pclass  # before its client is made
            guard = Guard(CONFIG, ledger)
            closers.append(guard)

            def guarded(history: list[dict[str, Any]], g: Any = guard) -> None:
                g.settle(g.preflight("researcher", MODEL, history, max_tokens=512), USAGE)

            cases[f"(b) guard, {lname} RedisLedger, {pname} parser"] = guarded
    for i in range(50):
        for fn in cases.values():
            fn([*base, {"role": "user", "content": f"warm up {i}"}])
    got: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases)
    for i in range(calls):
        history = [*base, {"role": "user", "content": f"step {i}: continue with the next source"}]
        order.reverse()
        for name in order:
            t0 = time.perf_counter()
            cases[name](history)
            got[name].append(time.perf_counter() - t0)
    for c in closers:
        c.close()
    fifth = calls // 5
    parts: dict[str, list[float]] = {}
    for name in cases:
        if name.startswith("(b)"):
            bare_name = f"(a) bare GET + INCRBY, {name.rsplit(', ', 1)[1]}"
            parts[name] = [
                (statistics.median(got[name][k * fifth:(k + 1) * fifth])
                 - statistics.median(got[bare_name][k * fifth:(k + 1) * fifth])) * 1e6
                for k in range(5)]
    return {name: summary(s) for name, s in got.items()}, parts


def _worker(url: str, mode: str, seconds: float, ready: Any, go: Any, out: Any,
            compare: str | None = None) -> None:
    from crew_budget import Guard
    from crew_budget.ledger import RecordDraft, ReserveRequest, new_reservation_id
    from crew_budget.usage import Usage

    guard = Guard(CONFIG, _load_ledger_class(compare)(url) if compare else url)
    ledger = guard.ledger
    history = agent_history(turns=20)
    draft = RecordDraft(role="researcher", model=MODEL, estimate_nano=1000)
    usage = Usage(4000, 0, 0, 200, 0)
    buckets = tuple(guard.buckets("researcher", ledger.now()))

    def one_ledger() -> None:
        res = ledger.reserve(ReserveRequest(new_reservation_id(), buckets, 1000, 600.0, draft))
        ledger.settle(res.reservation_id, 900, usage)  # type: ignore[union-attr]

    def one_guard() -> None:
        guard.settle(guard.preflight("researcher", MODEL, history, max_tokens=512), USAGE)

    step = one_ledger if mode == "ledger" else one_guard
    for _ in range(20):
        step()
    ready.put(os.getpid())
    go.wait()
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        step()
        n += 1
    out.put(n)
    guard.close()


def throughput(url: str, mode: str, processes: int, seconds: float,
               compare: str | None = None) -> float:
    """(c): reserve+settle pairs per second, summed over ``processes`` processes
    (on ``compare``'s ``RedisLedger`` if given)."""
    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_worker, args=(url, mode, seconds, ready, go, out, compare))
             for _ in range(processes)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    go.set()
    total = sum(out.get(timeout=seconds + 120) for _ in procs)
    for p in procs:
        p.join()
    return float(total) / seconds


def main() -> None:
    argv = list(sys.argv[1:])
    compare = None
    if "--compare" in argv:
        at = argv.index("--compare")
        compare = argv[at + 1]
        del argv[at:at + 2]
    calls = int(argv[0]) if len(argv) > 0 else 2000
    seconds = float(argv[1]) if len(argv) > 1 else 5.0
    processes = int(argv[2]) if len(argv) > 2 else 8
    with redis_server() as url:
        matrix, deltas = per_parser(url, calls, compare)
        print("0. The target per reply parser, all interleaved call by call\n")
        print("| case | p50 µs | p99 µs | mean µs | p50 minus its parser's (a) "
              "| same, per fifth of the run |")
        print("|---|---:|---:|---:|---:|---|")
        for name, st in matrix.items():
            if name.startswith("(a)"):
                print(f"| {name} | {st['p50']:.0f} | {st['p99']:.0f} | {st['mean']:.0f} | - | - |")
                continue
            bare_p50 = matrix[f"(a) bare GET + INCRBY, {name.rsplit(', ', 1)[1]}"]["p50"]
            print(f"| {name} | {st['p50']:.0f} | {st['p99']:.0f} | {st['mean']:.0f} | "
                  f"+{st['p50'] - bare_p50:.0f} µs | "
                  f"{', '.join(f'+{d:.0f}' for d in deltas[name])} |")
        print("\ntarget: (b) - (a) <= +100 µs p50, for each parser\n")
        head, parts, stats, tokens, server = overhead(url, calls)
        print(f"History: 21 messages, {tokens} prompt tokens estimated; {calls} calls per case; "
              f"{os.cpu_count()} cores\n")
        print("1. The target: (a) and (b) alone, interleaved call by call\n")
        print("| case | p50 µs | p99 µs | mean µs | p50 vs (a) |")
        print("|---|---:|---:|---:|---:|")
        for name, st in head.items():
            print(f"| {name} | {st['p50']:.0f} | {st['p99']:.0f} | {st['mean']:.0f} | "
                  f"{st['p50'] / head[A]['p50']:.2f}x |")
        print(f"\n(b) - (a): p50 +{head[B]['p50'] - head[A]['p50']:.0f} µs (target: <= +100 µs); "
              f"ratio (b)/(a): p50 {head[B]['p50'] / head[A]['p50']:.2f}x, "
              f"p99 {head[B]['p99'] / head[A]['p99']:.2f}x; "
              f"p50 ratio per fifth of the run: {', '.join(f'{r:.2f}x' for r in parts)}\n")
        bare = stats[A]
        print("2. The split: four cases interleaved call by call\n")
        print("| case | p50 µs | p99 µs | mean µs | p50 vs (a) | server: script usec_per_call "
              "| server: main-thread CPU µs per call |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, st in stats.items():
            evalsha, cpu = server[name]
            print(f"| {name} | {st['p50']:.0f} | {st['p99']:.0f} | {st['mean']:.0f} | "
                  f"{st['p50'] / bare['p50']:.2f}x | {evalsha:.1f} | {cpu:.0f} |")
        print()
        per_op = functions_vs_evalsha(url)
        print("3. Server time per operation: function library (FCALL) vs scripts (EVALSHA), "
              "alternating blocks\n")
        print("| path | reserve µs (usec_per_call) | settle µs | reserve + settle µs |")
        print("|---|---:|---:|---:|")
        for mode, ops in per_op.items():
            print(f"| {mode} | {ops['reserve']:.1f} | {ops['settle']:.1f} | "
                  f"{ops['reserve'] + ops['settle']:.1f} |")
        print()
        ledger_rate = throughput(url, "ledger", processes, seconds)
        guard_rate = throughput(url, "guard", processes, seconds)
        print(f"| (c) {processes} processes, one Redis, {seconds:g} s each | "
              "reservations (reserve + settle) per second |")
        print("|---|---:|")
        print(f"| RedisLedger.reserve + settle | {ledger_rate:,.0f} |")
        print(f"| Guard.preflight + settle (20-turn history) | {guard_rate:,.0f} |")
        if compare:
            rates = [(throughput(url, "ledger", processes, seconds, compare),
                      throughput(url, "ledger", processes, seconds)) for _ in range(2)]
            print(f"| compared RedisLedger.reserve + settle, then this one, twice | "
                  f"{', '.join(f'{a:,.0f} vs {b:,.0f}' for a, b in rates)} |")


if __name__ == "__main__":
    main()
