"""Chaos: many processes on one Redis while workers are SIGKILLed and Redis restarts.

    python bench/chaos.py                 # 60 s, 8 workers, 2 Redis restarts
    python bench/chaos.py --seconds 8     # the short run tests/faults/test_chaos.py makes

Redis runs with ``appendonly yes`` and ``appendfsync always``: every write
is on disk before Redis replies, so a SIGKILL of Redis loses nothing a
client was told about. (``everysec`` can lose up to a second of writes on a
crash, which the epoch cannot see: the epoch survives while the last
settles vanish. ``crew-budget doctor`` warns about it.)

Each worker loops: a random role, ``preflight`` (output reserved at a random
``max_tokens``), then settles (70%, at a cost never above the estimate),
releases (15%) or abandons the reservation (15%: a crashed caller; its
2-second lease expires and it is charged at the reserved amount). Workers
count what they did in shared memory (each its own slot, no lock: a SIGKILL
mid-update loses nothing else). The parent SIGKILLs a random worker about
every ``--kill-every`` seconds and starts another, SIGKILLs and restarts
Redis ``--restarts`` times, zeroes every budget every ``--reset-every``
seconds (``Ledger.reset``, recorded like ``crew-budget reset``) so limits keep
being hit, and samples every limited bucket's spent + reserved.

At the end (all workers stopped, leases run out and reaped) it prints:
calls granted, settled/released/abandoned, reaped (expired records),
refusals, the largest amount any bucket was ever seen over its limit (must
be $0), the reservations left (must be 0), whether every counter equals the
sum of its records to the nano-dollar, and LedgerReset errors seen (must be
0: a restart of a persistent Redis is not a loss). ``--json`` prints one JSON
object instead. Exit 1 if an invariant failed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROLES = ("r0", "r1", "r2", "r3")
FIELDS = ("granted", "settled", "released", "abandoned", "blocked", "unavailable", "resets")
LEASE_S = 2


def config(role_limit: str, global_limit: str) -> dict[str, Any]:
    return {
        "lease_seconds": LEASE_S,
        "roles": {r: {"daily": role_limit} for r in ROLES},
        "global": {"daily": global_limit},
        "prices": {"chaos-model": {"input_per_million": 1, "output_per_million": 2}},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    """A redis-server with AOF (appendfsync always) that can be SIGKILLed and restarted."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server not found: apt-get install redis-server")
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="cb-chaos-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise SystemExit("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def worker(url: str, cfg: dict[str, Any], counts: Any, slot: int, seed: int,
           deadline: float) -> None:
    import logging

    from crew_budget import BudgetExceeded, Guard, LedgerReset, LedgerUnavailable

    # Settles retried across the Redis restarts log one line each: expected here.
    logging.getLogger("crew_budget").setLevel(logging.CRITICAL)
    rng = random.Random(seed)
    guard = Guard(cfg, url, start_alerts=False)
    base = slot * len(FIELDS)

    def bump(field: str) -> None:
        counts[base + FIELDS.index(field)] += 1

    messages = [{"role": "user", "content": "Chaos: summarise the ledger's day."}]
    while time.time() < deadline:
        role = rng.choice(ROLES)
        max_tokens = rng.randint(50, 500)
        try:
            ticket = guard.preflight(role, "chaos-model", messages, max_tokens=max_tokens)
        except BudgetExceeded:
            bump("blocked")
            time.sleep(0.01)
            continue
        except LedgerReset:
            bump("resets")
            time.sleep(0.05)
            continue
        except LedgerUnavailable:
            bump("unavailable")
            time.sleep(0.02)
            continue
        bump("granted")
        action = rng.random()
        if action < 0.70:
            out = rng.randint(0, ticket.output_tokens_reserved)
            guard.settle(ticket, {"prompt_tokens": ticket.prompt_tokens,
                                  "completion_tokens": out})
            bump("settled")
        elif action < 0.85:
            guard.release(ticket)
            bump("released")
        else:
            bump("abandoned")  # never settled: reaped when the lease ends
    guard.close()


def run(seconds: float, workers: int, restarts: int, kill_every: float, reset_every: float,
        role_limit: str, global_limit: str) -> dict[str, Any]:
    from crew_budget import Guard, LedgerUnavailable

    cfg = config(role_limit, global_limit)
    redis = Redis()
    redis.start()
    ctx = mp.get_context("fork")
    max_slots = workers + int(seconds / max(kill_every, 0.1)) + 8
    counts = ctx.Array("q", max_slots * len(FIELDS), lock=False)
    start = time.time()
    deadline = start + seconds
    procs: dict[int, Any] = {}
    next_slot = 0

    def spawn() -> None:
        nonlocal next_slot
        p = ctx.Process(target=worker, args=(redis.url, cfg, counts, next_slot,
                                             1000 + next_slot, deadline), daemon=True)
        p.start()
        procs[next_slot] = p
        next_slot += 1

    observer = Guard(cfg, redis.url, start_alerts=False)
    over = {"max_over_nano": 0, "samples": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                states = observer.ledger.status(observer.buckets())
            except LedgerUnavailable:
                time.sleep(0.05)
                continue
            for st in states:
                if st.bucket.limit_nano is not None:
                    excess = st.spent_nano + st.reserved_nano - st.bucket.limit_nano
                    over["max_over_nano"] = max(over["max_over_nano"], excess)
            over["samples"] += 1
            time.sleep(0.05)

    for _ in range(workers):
        spawn()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    kills = 0
    restart_at = [start + seconds * (i + 1) / (restarts + 1) for i in range(restarts)]
    restarts_done = 0
    rng = random.Random(1)
    next_kill = start + kill_every
    next_reset = start + reset_every
    while time.time() < deadline:
        now = time.time()
        if now >= next_kill:
            slot = rng.choice([s for s, p in procs.items() if p.is_alive()] or [None])
            if slot is not None:
                os.kill(procs[slot].pid, signal.SIGKILL)
                procs[slot].join()
                kills += 1
                spawn()
            next_kill = now + kill_every * rng.uniform(0.5, 1.5)
        if restart_at and now >= restart_at[0]:
            restart_at.pop(0)
            redis.kill()
            time.sleep(0.2)
            redis.start()
            restarts_done += 1
        if now >= next_reset:
            try:
                for b in observer.buckets():
                    observer.ledger.reset(b, reason="chaos: refill")
            except LedgerUnavailable:
                pass
            next_reset = now + reset_every
        time.sleep(0.02)
    for p in procs.values():
        p.join(timeout=30)
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
            p.join()
    stop.set()
    sampler.join()
    # Every abandoned or orphaned lease runs out, then is reaped.
    time.sleep(LEASE_S + 0.5)
    while observer.ledger.reap(10_000):
        pass
    buckets = observer.buckets()
    states = observer.ledger.status(buckets)
    records = observer.ledger.records()
    # Counter vs records, per bucket: every record of a role lands on its
    # role bucket and on the global one (one day window; money settles in
    # the day it was reserved, so a run across midnight UTC is not checked).
    by_scope: dict[str, int] = defaultdict(int)
    for r in records:
        if r.outcome == "reset":
            by_scope[r.scope or ""] += r.cost_nano
        elif r.outcome in ("settled", "released", "expired", "unguarded"):
            by_scope[f"role:{r.role}"] += r.cost_nano
            by_scope["global"] += r.cost_nano
    mismatches = {
        st.bucket.scope: (st.spent_nano, by_scope[st.bucket.scope]) for st in states
        if st.spent_nano != by_scope[st.bucket.scope]
    }
    totals = {f: sum(counts[s * len(FIELDS) + i] for s in range(next_slot))
              for i, f in enumerate(FIELDS)}
    observer.close()
    redis.remove()
    return {
        "seconds": seconds,
        "workers": workers,
        "calls": totals["granted"],
        **{k: v for k, v in totals.items() if k != "granted"},
        "reaped": sum(r.outcome == "expired" for r in records),
        "records": len(records),
        "worker_kills": kills,
        "redis_restarts": restarts_done,
        "samples": over["samples"],
        "max_over_limit_nano": max(0, over["max_over_nano"]),
        "reserved_left_nano": sum(st.reserved_nano for st in states),
        "counters_equal_records": not mismatches,
        "mismatches": {k: list(v) for k, v in mismatches.items()},
        "spent_nano": {st.bucket.scope: st.spent_nano for st in states},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--kill-every", type=float, default=2.0, help="seconds, on average")
    ap.add_argument("--reset-every", type=float, default=3.0, help="seconds")
    ap.add_argument("--role-limit", default="0.10", help="USD per role per day")
    ap.add_argument("--global-limit", default="0.30", help="USD per day")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    result = run(args.seconds, args.workers, args.restarts, args.kill_every, args.reset_every,
                 args.role_limit, args.global_limit)
    ok = (result["max_over_limit_nano"] == 0 and result["reserved_left_nano"] == 0
          and result["counters_equal_records"] and result["resets"] == 0)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:24} {value}")
        print("OK" if ok else "INVARIANT FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
