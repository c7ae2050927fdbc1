"""Worker functions for multi-process tests (importable under ``spawn``)."""

from __future__ import annotations

import os
import random
import signal
import threading
from typing import Any

from crew_budget import BudgetExceeded, Guard

# Output-only pricing makes every reservation an exact upper bound: the
# prompt estimate is priced at $0, and max_tokens caps the output, so the
# ledger's hard limit must hold to the nano-dollar.
RACE_CONFIG: dict[str, Any] = {
    "roles": {"racer": {"daily": "1.00"}},
    "crew": {"name": "race", "daily": "50"},
    "prices": {"race-model": {"input_per_million": 0, "output_per_million": 10}},
    "lease_seconds": 600,
}
MAX_TOKENS = 1000  # reserved: 1000 tokens x $10/M = $0.01 per call


def race_worker(url: str, threads: int, seed: int) -> dict[str, Any]:
    """Spend from one $1.00 budget in ``threads`` threads until blocked."""
    guard = Guard(RACE_CONFIG, url)
    lock = threading.Lock()
    allowed: list[tuple[str, int]] = []
    blocked = 0

    def loop(tid: int) -> None:
        nonlocal blocked
        rng = random.Random(seed * 100 + tid)
        while True:
            try:
                ticket = guard.preflight(
                    "racer",
                    "race-model",
                    [{"role": "user", "content": "go"}],
                    max_tokens=MAX_TOKENS,
                )
            except BudgetExceeded:
                with lock:
                    blocked += 1
                return
            out = rng.randint(500, MAX_TOKENS)
            result = guard.settle(ticket, {"prompt_tokens": 9, "completion_tokens": out})
            assert result.applied
            with lock:
                allowed.append((ticket.reservation_id, out * 10_000))  # nano-USD

    workers = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    guard.close()
    return {"allowed": allowed, "blocked": blocked}


def crash_after_reserve(url: str, config: dict[str, Any]) -> None:
    """Reserve, then die by SIGKILL before settling (no cleanup runs)."""
    guard = Guard(config, url)
    ticket = guard.preflight(
        "racer", "race-model", [{"role": "user", "content": "x"}], max_tokens=MAX_TOKENS
    )
    print(ticket.reservation_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


# A calls limit of 50 and nothing else that could refuse: the count of
# grants across every process and thread must be exactly the limit.
CALLS_CONFIG: dict[str, Any] = {
    "roles": {"racer": {"calls": {"daily": 50}}},
    "prices": {"race-model": {"input_per_million": 0, "output_per_million": 10}},
    "lease_seconds": 600,
}


def calls_worker(url: str, threads: int, attempts: int) -> dict[str, Any]:
    """Each thread tries ``attempts`` calls against the calls limit; counts grants."""
    guard = Guard(CALLS_CONFIG, url)
    lock = threading.Lock()
    granted: list[str] = []
    refused = 0

    def loop() -> None:
        nonlocal refused
        for _ in range(attempts):
            try:
                ticket = guard.preflight("racer", "race-model",
                                         [{"role": "user", "content": "go"}], max_tokens=10)
            except BudgetExceeded as exc:
                assert exc.unit == "calls"
                with lock:
                    refused += 1
                continue
            guard.settle(ticket, {"prompt_tokens": 9, "completion_tokens": 10})
            with lock:
                granted.append(ticket.reservation_id)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    guard.close()
    return {"granted": granted, "refused": refused}
