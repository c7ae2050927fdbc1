"""Calls fail_open lets through during an outage reach the books when it ends.

Issue 9 measured 50 calls ($0.555) allowed during an outage that never
reached the ledger. Here a real redis-server (AOF, so what it held before the
outage survives) is killed; the calls go through, are journaled, and are
booked into counters and records exactly once, at their real cost, when the
server is back. Prices as in ``test_ledger_loss``: $1 per million input
tokens, so ``usage(n)`` costs n micro-dollars.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from crew_budget import Guard
from crew_budget.journal import Journal
from tests.faults.test_ledger_loss import CONFIG, MESSAGES, call, new_dir, spent, usage
from tests.fixtures.redis_server import RedisServer


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(directory=new_dir(tmp_path / "redis-aof"), appendonly=True) as s:
        yield s


def open_config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {**CONFIG, "fail_open": True, "journal": str(tmp_path / "journal.jsonl"), **extra}


def test_calls_allowed_during_an_outage_are_booked_once_when_it_ends(
    aof_server: RedisServer, tmp_path: Path
) -> None:
    guard = Guard(open_config(tmp_path), aof_server.url)
    assert call(guard, 1_000_000) == Decimal("1.00")
    aof_server.stop()
    costs = [Decimal(n) / 1_000_000 for n in (11_100, 11_100, 11_100, 11_100, 11_100)]
    for n in (11_100,) * 5:
        ticket = guard.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
        assert ticket.guarded is False and ticket.journal_id.startswith("j")
        assert guard.settle(ticket, usage(n)).state == "unguarded"
    journal = tmp_path / "journal.jsonl"
    lines = [json.loads(x) for x in journal.read_text().splitlines()]
    assert [x["k"] for x in lines] == ["call", "cost"] * 5
    assert sum(x["cost_nano"] for x in lines if x["k"] == "cost") == 55_500_000
    aof_server.start()
    # The next guarded call books the journal first: $1.00 + 5 x $0.0111.
    assert call(guard, 100_000) == Decimal("0.10")
    assert spent(guard) == (Decimal("1.00") + sum(costs) + Decimal("0.10"), 0)
    assert journal.read_text() == ""
    booked = [r for r in guard.ledger.records() if r.outcome == "unguarded"]
    assert [r.cost_nano for r in booked] == [11_100_000] * 5
    assert all(r.metadata["journaled"] is True and r.role == "researcher" for r in booked)
    assert all(r.input_tokens == 11_100 for r in booked)
    guard.close()


def test_a_replay_interrupted_before_the_journal_was_rewritten_books_nothing_twice(
    aof_server: RedisServer, tmp_path: Path
) -> None:
    guard = Guard(open_config(tmp_path), aof_server.url)
    call(guard, 1_000_000)
    aof_server.stop()
    for _ in range(3):
        ticket = guard.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
        guard.settle(ticket, usage(20_000))
    journal = tmp_path / "journal.jsonl"
    before = tmp_path / "journal.copy"
    shutil.copy(journal, before)
    aof_server.start()
    call(guard, 100_000)  # books the three
    assert spent(guard) == (Decimal("1.16"), 0)
    # As if the process had died after writing to the ledger but before
    # rewriting the journal: the same entries are replayed again.
    shutil.copy(before, journal)
    other = Guard(open_config(tmp_path), aof_server.url)
    call(other, 100_000)
    assert spent(other) == (Decimal("1.26"), 0)  # only the new call's $0.10
    assert len([r for r in other.ledger.records() if r.outcome == "unguarded"]) == 3
    assert journal.read_text() == ""
    guard.close()
    other.close()


def test_a_call_whose_process_died_before_settling_is_booked_at_its_estimate(
    aof_server: RedisServer, tmp_path: Path
) -> None:
    cfg = open_config(tmp_path, lease_seconds=1)
    guard = Guard(cfg, aof_server.url)
    call(guard, 1_000_000)
    aof_server.stop()
    ticket = guard.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
    # ... and the process "dies": no settle. A later guard, after the lease:
    aof_server.start()
    later = Guard(cfg, aof_server.url, clock=lambda: __import__("time").time() + 5)
    later.close()  # close() replays too
    (rec,) = [r for r in later.ledger.records() if r.outcome == "unguarded"]
    assert Decimal(rec.cost_nano) / 10**9 == ticket.estimate
    assert Journal(tmp_path / "journal.jsonl").exists() is False


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_charge_books_once_past_the_limit_on_every_backend(
    kind: str, tmp_path: Path, aof_server: RedisServer
) -> None:
    from datetime import timezone

    from crew_budget.ledger import Bucket, SpendRecord, open_ledger
    from crew_budget.windows import span

    url = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path / 'c.db'}",
           "redis": aof_server.url}[kind]
    ledger = open_ledger(url)
    now = ledger.now()
    day = span("day", now, timezone.utc)
    bucket = Bucket("role:researcher", "day", day.period, 1_000, day.starts_at, day.ends_at)
    record = SpendRecord(ts=now, reservation_id="jx1", outcome="unguarded", role="researcher",
                         model="test-model", cost_nano=5_000)
    # $0.000005 on a $0.000001 limit: the money was spent, so it is booked.
    assert ledger.charge("jx1", [bucket], 5_000, record) is True
    assert ledger.charge("jx1", [bucket], 5_000, record) is False  # a replay: nothing
    (state,) = ledger.status([bucket])
    assert (state.spent_nano, state.reserved_nano) == (5_000, 0)
    assert [(r.outcome, r.cost_nano) for r in ledger.records()] == [("unguarded", 5_000)]
    assert ledger.reservation_state("jx1") == "unguarded"
    ledger.close()


def test_the_default_journal_is_one_file_per_ledger_under_the_state_dir(
    aof_server: RedisServer, tmp_path: Path
) -> None:
    state = tmp_path / "state" / "crew-budget"  # XDG_STATE_HOME is tmp_path/state in tests
    guard = Guard({**CONFIG, "fail_open": True}, aof_server.url)
    aof_server.stop()
    ticket = guard.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
    guard.settle(ticket, usage(2_000))
    (journal,) = state.glob("journal-default-*.jsonl")
    assert len(journal.read_text().splitlines()) == 2
    other = Guard({**CONFIG, "fail_open": True}, "redis://127.0.0.1:1/0")
    t2 = other.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
    other.settle(t2, usage(3_000))
    assert len(list(state.glob("journal-default-*.jsonl"))) == 2  # never mixed
    aof_server.start()
    guard.close()  # books its own journal only
    assert journal.read_text() == ""
    assert [r.cost_nano for r in guard.ledger.records() if r.outcome == "unguarded"] == [2_000_000]
    other.close()
