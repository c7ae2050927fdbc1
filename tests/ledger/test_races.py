"""Many processes, crashes: the hard limit and "nothing lost" on real backends.

8 processes x 4 threads race to spend one $1.00 budget through ``Guard``.
Every reservation is an exact upper bound (output-only pricing with
``max_tokens``), so the committed spend must end at or below $1.00 to the
nano-dollar, and every allowed call must be in the ledger exactly once.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crew_budget import Guard
from crew_budget.ledger import open_ledger
from crew_budget.ledger.sqlite import SQLiteLedger
from tests.ledger._workers import CALLS_CONFIG, RACE_CONFIG, calls_worker, race_worker

PROCESSES, THREADS = 8, 4
LIMIT_NANO = 1_000_000_000


def _url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'race.db'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_processes_racing_one_budget_never_overspend(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = _url(kind, tmp_path, request)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(PROCESSES) as pool:
        results = pool.starmap(race_worker, [(url, THREADS, seed) for seed in range(PROCESSES)])

    allowed = [a for r in results for a in r["allowed"]]
    blocked = sum(r["blocked"] for r in results)
    guard = Guard(RACE_CONFIG, url)
    (role,) = guard.ledger.status([b for b in guard.buckets("racer") if b.scope == "role:racer"])

    # Hard limit, exactly (invariant 1 with exact reservations).
    assert role.spent_nano <= LIMIT_NANO
    # The budget really was contended to exhaustion: less than one call's
    # reservation ($0.01) is left.
    assert role.spent_nano > LIMIT_NANO - 10_000_000
    assert role.reserved_nano == 0
    # Every allowed call is accounted for, exactly once.
    assert role.spent_nano == sum(cost for _, cost in allowed)
    records = guard.ledger.records()
    settled = [r for r in records if r.outcome == "settled"]
    assert sorted(r.reservation_id for r in settled) == sorted(rid for rid, _ in allowed)
    assert sum(r.cost_nano for r in settled) == role.spent_nano
    assert len([r for r in records if r.outcome == "blocked"]) == blocked == PROCESSES * THREADS
    guard.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_process_killed_between_reserve_and_settle_is_charged_on_expiry(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = _url(kind, tmp_path, request)
    config = {**RACE_CONFIG, "lease_seconds": 1}
    # One call that settles normally, then one whose process is SIGKILLed.
    guard = Guard(config, url)
    ok = guard.preflight("racer", "race-model", [{"role": "user", "content": "x"}], max_tokens=1000)
    guard.settle(ok, {"prompt_tokens": 3, "completion_tokens": 700})
    code = (
        "import sys; from tests.ledger._workers import crash_after_reserve, RACE_CONFIG;"
        f"crash_after_reserve({url!r}, {{**RACE_CONFIG, 'lease_seconds': 1}})"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    rid = proc.stdout.strip()
    ledger = guard.ledger
    assert ledger.reservation_state(rid) == "reserved"
    role_bucket = [b for b in guard.buckets("racer") if b.scope == "role:racer"]
    (before,) = ledger.status(role_bucket) if kind == "redis" else _status_no_reap(url, role_bucket)
    assert before.reserved_nano == 10_000_000

    if kind == "sqlite":
        # Let the lease run out on the ledger's clock without sleeping.
        later = SQLiteLedger(url, clock=lambda: time.time() + 5)
        assert later.reap() == 1
        later.close()
    else:
        time.sleep(1.3)
        assert ledger.reap() == 1
    assert ledger.reservation_state(rid) == "expired"
    (after,) = ledger.status(role_bucket)
    # 700 tokens x $10/M settled + the dead call's full $0.01 reservation.
    assert after.spent_nano == 7_000_000 + 10_000_000
    assert after.reserved_nano == 0
    records = ledger.records()
    assert [r.outcome for r in records] == ["settled", "expired"]
    assert sum(r.cost_nano for r in records) == after.spent_nano
    guard.close()


def _status_no_reap(url: str, buckets: list) -> list:  # type: ignore[type-arg]
    led = open_ledger(url)
    try:
        return led.status(buckets)
    finally:
        led.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_threads_racing_a_calls_limit_of_50_get_exactly_50(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """8 threads x 10 attempts on one guard against ``calls: {daily: 50}``."""
    url = "memory://" if kind == "memory" else _url(kind, tmp_path, request)
    guard = Guard(CALLS_CONFIG, url)
    granted, refused = _race_calls(guard, threads=8, attempts=10)
    assert (len(granted), len(set(granted)), refused) == (50, 50, 30)
    (calls,) = [s for s in guard.status() if s.unit == "calls"]
    assert (calls.spent, calls.reserved, calls.limit) == (50, 0, 50)
    records = guard.ledger.records()
    assert sum(r.outcome == "settled" for r in records) == 50
    assert sum(r.outcome == "blocked" for r in records) == 30
    guard.close()


def _race_calls(guard: Guard, *, threads: int, attempts: int) -> tuple[list[str], int]:
    import threading

    from crew_budget import BudgetExceeded

    lock = threading.Lock()
    granted: list[str] = []
    refused = 0
    start = threading.Barrier(threads)

    def loop() -> None:
        nonlocal refused
        start.wait()
        for _ in range(attempts):
            try:
                t = guard.preflight("racer", "race-model", [{"role": "user", "content": "go"}],
                                    max_tokens=10)
            except BudgetExceeded:
                with lock:
                    refused += 1
                continue
            guard.settle(t, {"prompt_tokens": 9, "completion_tokens": 10})
            with lock:
                granted.append(t.reservation_id)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return granted, refused


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_processes_racing_a_calls_limit_of_50_get_exactly_50(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """8 processes x 4 threads x 5 attempts (160 requests) on ``calls: {daily: 50}``."""
    url = _url(kind, tmp_path, request)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(PROCESSES) as pool:
        results = pool.starmap(calls_worker, [(url, THREADS, 5)] * PROCESSES)
    granted = [rid for r in results for rid in r["granted"]]
    refused = sum(r["refused"] for r in results)
    assert (len(granted), len(set(granted)), refused) == (50, 50, 110)
    guard = Guard(CALLS_CONFIG, url)
    (calls,) = [s for s in guard.status() if s.unit == "calls"]
    assert (calls.spent, calls.reserved) == (50, 0)
    records = guard.ledger.records()
    assert sorted(r.reservation_id for r in records if r.outcome == "settled") == sorted(granted)
    assert sum(r.outcome == "blocked" for r in records) == 110
    guard.close()
