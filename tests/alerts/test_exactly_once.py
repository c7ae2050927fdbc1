"""Exactly-once alerts with many processes on the shared SQLite and Redis ledgers.

4 processes x 2 threads push one $1.00 role budget (and a $2.00 crew budget)
through 50/80/100 % and into blocking. Every process runs its own
AlertManager posting to one loopback webhook; the ledger's outbox must store
each alert once (one process wins the put) and deliver it once. Contention is certain, not left to
scheduling: every thread of every process is blocked once (8 candidates for
the one "exhausted" alert), and afterwards all processes re-evaluate every
budget at the same moment (behind a barrier).
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path

import pytest

from crew_budget import Guard
from tests.alerts.helpers import RACE_CONFIG, alert_race_worker, webhook

PROCESSES, THREADS = 4, 2


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_each_alert_is_sent_once_across_processes(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (f"sqlite:///{tmp_path / 'alerts.db'}" if kind == "sqlite"
           else str(request.getfixturevalue("redis_url")))
    ctx = multiprocessing.get_context("spawn")
    with webhook() as hook, ctx.Manager() as shared:
        start = shared.Barrier(PROCESSES)
        with ctx.Pool(PROCESSES) as pool:
            results = pool.starmap(alert_race_worker,
                                   [(url, hook.url, THREADS, start)] * PROCESSES)
        bodies = list(hook.bodies)
    calls = [c for c, _ in results]

    guard = Guard(RACE_CONFIG, url)
    (role,) = [s for s in guard.status("racer") if s.scope == "role:racer"]
    # 100 calls of exactly $0.01 each: the role budget is exactly full.
    assert sum(calls) == 100
    assert str(role.spent) == "1"
    # What the processes say they sent is what the webhook received.
    assert sum(won for _, won in results) == len(bodies) == 5
    period = role.period
    sent = Counter(b["key"] for b in bodies)
    assert sent == {
        f"threshold:role:racer|day|{period}:50": 1,
        f"threshold:role:racer|day|{period}:80": 1,
        f"threshold:role:racer|day|{period}:100": 1,
        f"threshold:crew:race|day|{period}:50": 1,    # $1.00 of the crew's $2.00
        f"exhausted:role:racer|day|{period}": 1,      # every thread was blocked once
    }
    # ...and a budget's alerts arrived in ascending order, "exhausted" last.
    assert [b["key"] for b in bodies if "role:racer" in b["key"]] == [
        f"threshold:role:racer|day|{period}:50",
        f"threshold:role:racer|day|{period}:80",
        f"threshold:role:racer|day|{period}:100",
        f"exhausted:role:racer|day|{period}",
    ]
    blocked = [r for r in guard.ledger.records() if r.outcome == "blocked"]
    assert len(blocked) == PROCESSES * THREADS
    guard.close()
