"""What only the Redis ledger has to prove, against a real redis-server.

The shared contract (reserve/settle/release/expiry/records) is checked by
``test_conformance.py`` on every backend. Here: outages (fail closed, fail
open, a settle retried after Redis comes back, charged once), passwords kept
out of errors, the script cache being flushed, the single hash tag (and a
real one-node Redis Cluster that rejects cross-slot scripts), bounded
storage (TTLs, stream trimming), and the ledger clock (``ClockSkew``).

Money in the assertions is exact: costs come from the prices configured in
``CONFIG`` (test-model: $1 per million input tokens, $2 per million output
tokens), times the token counts in the usage we pass; estimates are read
from the ticket the guard returned, never computed by our own estimator here.
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from crew_budget import Guard
from crew_budget.errors import (
    BudgetExceeded,
    ConfigError,
    LedgerUnavailable,
    ReservationError,
)
from crew_budget.ledger import (
    Bucket,
    ClockSkew,
    Denial,
    RecordDraft,
    Reservation,
    ReserveRequest,
    SpendRecord,
    new_reservation_id,
)
from crew_budget.ledger.redis import RedisLedger, redact_url
from crew_budget.money import to_nano
from crew_budget.usage import Usage
from crew_budget.windows import span
from tests.fixtures.redis_server import RedisServer, free_port
from tests.ledger._parsers import PARSERS, redis_ledger, used_parser

CONFIG: dict[str, Any] = {
    "roles": {"researcher": {"daily": "1.00"}},
    "global": {"daily": "5.00"},
    "prices": {"test-model": {"input_per_million": 1, "output_per_million": 2}},
}
MESSAGES = [{"role": "user", "content": "Summarise the quarterly revenue figures."}]
# 1000 input tokens x $1/M + 500 output tokens x $2/M = $0.001 + $0.001 = $0.002
USAGE = {"prompt_tokens": 1000, "completion_tokens": 500}
COST = Decimal("0.002")
UTC = timezone.utc


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server whose data survives kill -9 + restart (AOF, fsync always)."""
    server = RedisServer(directory=tmp_path / "aof", appendonly=True)
    server.directory.mkdir()
    server.start()
    yield server
    server.stop()


def day_bucket(ledger: RedisLedger, scope: str, limit: int | None, at: float | None = None
               ) -> Bucket:
    s = span("day", ledger.now() if at is None else at, UTC)
    return Bucket(scope, "day", s.period, limit, s.starts_at, s.ends_at)


def reserve(ledger: RedisLedger, buckets: list[Bucket], amount: int, lease: float = 600.0,
            rid: str | None = None) -> Reservation | Denial:
    draft = RecordDraft(role="researcher", model="test-model", estimate_nano=amount)
    return ledger.reserve(
        ReserveRequest(rid or new_reservation_id(), tuple(buckets), amount, lease, draft)
    )


def guard_buckets(guard: Guard, at: float) -> list[Bucket]:
    return guard.buckets("researcher", at)


def spent_reserved(ledger: RedisLedger, b: Bucket) -> tuple[int, int]:
    (st,) = ledger.status([b])
    return st.spent_nano, st.reserved_nano


# -- outages -------------------------------------------------------------------


def test_outage_raises_ledger_unavailable_naming_url_without_password(tmp_path: Path) -> None:
    secret = "s3cr3t-pa55"
    server = RedisServer(directory=tmp_path, extra_args=("--requirepass", secret))
    with server:
        url = f"redis://:{secret}@127.0.0.1:{server.port}/0"
        ledger = RedisLedger(url, namespace="outage")
        b = day_bucket(ledger, "role:researcher", 1000)
        assert isinstance(reserve(ledger, [b], 100), Reservation)  # the password works
        server.stop()
        t0 = time.monotonic()
        with pytest.raises(LedgerUnavailable) as info:
            reserve(ledger, [b], 100)
        assert time.monotonic() - t0 < 1.5  # refused fails fast (connect timeout is 1 s)
    exc = info.value
    assert exc.url == f"redis://:***@127.0.0.1:{server.port}/0"
    assert f"127.0.0.1:{server.port}" in str(exc)
    assert "fail_open" in str(exc)  # the message names the fix
    for text in (str(exc), repr(exc), exc.reason, exc.url):
        assert secret not in text


def test_wrong_password_is_unavailable_and_not_echoed(tmp_path: Path) -> None:
    with RedisServer(directory=tmp_path, extra_args=("--requirepass", "right-one")) as server:
        wrong = "wr0ng-guess"
        ledger = RedisLedger(f"redis://:{wrong}@127.0.0.1:{server.port}/0")
        s = span("day", time.time(), UTC)
        with pytest.raises(LedgerUnavailable) as info:
            ledger.status([Bucket("global", "day", s.period, None, s.starts_at, s.ends_at)])
    assert wrong not in str(info.value)
    assert "***" in info.value.url
    assert "Authentication" in info.value.reason or "WRONGPASS" in info.value.reason


def test_redact_url_hides_every_form_of_password() -> None:
    assert redact_url("rediss://user:pw@h:6380/1") == "rediss://user:***@h:6380/1"
    assert redact_url("redis://pw@h:6379/0") == "redis://***@h:6379/0"
    assert redact_url("redis://h:6379/0?password=pw&db=2") == "redis://h:6379/0?password=***&db=2"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


def test_guard_fails_closed_and_charges_nothing(aof_server: RedisServer) -> None:
    guard = Guard(CONFIG, aof_server.url)
    t1 = guard.preflight("researcher", "test-model", MESSAGES, max_tokens=500)
    assert guard.settle(t1, USAGE).cost == COST
    at = t1.expires_at - guard.config.lease_seconds  # Redis TIME at the reserve
    aof_server.stop()

    with pytest.raises(LedgerUnavailable) as info:
        guard.preflight("researcher", "test-model", MESSAGES, max_tokens=500)
    assert not isinstance(info.value, BudgetExceeded)
    assert aof_server.url in str(info.value)

    aof_server.start()  # the same data, from the AOF
    states = guard.ledger.status(guard_buckets(guard, at))
    assert [(s.bucket.scope, s.spent_nano, s.reserved_nano) for s in states] == [
        ("role:researcher", to_nano(COST), 0),
        ("global", to_nano(COST), 0),
    ]
    assert [r.outcome for r in guard.ledger.records()] == ["settled"]


def test_guard_fail_open_lets_the_call_through_and_logs(
    redis_server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    guard = Guard({**CONFIG, "fail_open": True}, redis_url)
    at = guard.ledger.now()
    redis_server.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="crew_budget"):
            ticket = guard.preflight("researcher", "test-model", MESSAGES, max_tokens=500)
            settlement = guard.settle(ticket, USAGE)
    finally:
        redis_server.start()
    assert ticket.guarded is False
    assert ticket.reservation_id == ""
    assert settlement.state == "unguarded"
    assert settlement.cost == COST
    unguarded = [r for r in caplog.records if "UNGUARDED" in r.getMessage()]
    assert len(unguarded) == 1
    assert unguarded[0].levelno == logging.WARNING
    assert redis_server.url in unguarded[0].getMessage()
    # Nothing reached the (restarted, empty) ledger: no reservation to leak.
    assert [(s.spent_nano, s.reserved_nano) for s in guard.ledger.status(
        guard_buckets(guard, at))] == [(0, 0), (0, 0)]


def test_settle_during_outage_is_retried_after_restart_and_charged_once(
    aof_server: RedisServer,
) -> None:
    guard = Guard(CONFIG, aof_server.url)
    ledger = guard.ledger
    t1 = guard.preflight("researcher", "test-model", MESSAGES, max_tokens=500)
    at = t1.expires_at - guard.config.lease_seconds
    buckets = guard_buckets(guard, at)
    est1 = to_nano(t1.estimate)

    aof_server.stop()  # kill -9 after the reserve, before the settle
    pending = guard.settle(t1, USAGE)
    assert pending.state == "pending"
    assert pending.applied is False

    aof_server.start()
    # The reservation survived the crash, still reserved: nothing charged yet.
    assert ledger.reservation_state(t1.reservation_id) == "reserved"
    assert [(s.spent_nano, s.reserved_nano) for s in ledger.status(buckets)] == [(0, est1)] * 2

    # The next call through the guard flushes the pending settle.
    t2 = guard.preflight("researcher", "test-model", MESSAGES, max_tokens=500)
    est2 = to_nano(t2.estimate)
    assert ledger.reservation_state(t1.reservation_id) == "settled"
    expected = [(to_nano(COST), est2)] * 2
    assert [(s.spent_nano, s.reserved_nano) for s in ledger.status(buckets)] == expected

    # Settling again, through the guard or the ledger, is a no-op.
    again = guard.settle(t1, USAGE)
    assert (again.state, again.applied, again.cost) == ("settled", False, COST)
    assert ledger.settle(t1.reservation_id, 999, Usage(1, 0, 0, 1, 0)).applied is False
    assert [(s.spent_nano, s.reserved_nano) for s in ledger.status(buckets)] == expected
    settled = [r for r in ledger.records() if r.outcome == "settled"]
    assert [(r.reservation_id, r.cost_nano, r.input_tokens, r.output_tokens) for r in settled] == [
        (t1.reservation_id, to_nano(COST), 1000, 500)
    ]


@pytest.mark.parametrize("parser", PARSERS)
def test_restart_flushes_scripts_and_drops_connections_yet_calls_succeed(
    aof_server: RedisServer, parser: str
) -> None:
    ledger = redis_ledger(aof_server.url, parser, namespace="noscript")
    b = day_bucket(ledger, "role:researcher", 10_000)
    r1 = reserve(ledger, [b], 1000)
    assert isinstance(r1, Reservation)

    aof_server.restart()  # new process: empty script cache, pooled socket dead
    probe = redis.Redis(port=aof_server.port)
    assert probe.script_exists(ledger._lua["settle"].sha) == [False]
    probe.close()
    assert ledger.settle(r1.reservation_id, 700, Usage(7, 0, 0, 0, 0)).applied is True

    aof_server.command("SCRIPT", "FLUSH")  # NOSCRIPT again, same connection this time
    r2 = reserve(ledger, [b], 1000)
    assert isinstance(r2, Reservation)
    assert spent_reserved(ledger, b) == (700, 1000)
    assert used_parser(ledger) == parser


# -- keys: one hash tag, one slot, bounded storage -------------------------------


def test_every_key_of_a_namespace_shares_one_hash_tag(redis_url: str) -> None:
    ledger = RedisLedger(redis_url, namespace="tagged", reap_limit=10)
    other = RedisLedger(redis_url, namespace="other")
    # A scope with braces of its own must not become the hash tag.
    role = day_bucket(ledger, "role:{evil}", 1000)
    crew = day_bucket(ledger, "crew:c", None)
    ok = reserve(ledger, [role, crew], 400)
    assert isinstance(ok, Reservation)
    assert isinstance(reserve(ledger, [role, crew], 700), Denial)
    released = reserve(ledger, [role, crew], 100)
    assert isinstance(released, Reservation)
    ledger.release(released.reservation_id)
    ledger.settle(ok.reservation_id, 300, Usage(3, 0, 0, 0, 0))
    ledger.reset(role, reason="test")
    assert ledger.claim("alert:80%", 60) is True
    ledger.append_record(SpendRecord(ts=ledger.now(), reservation_id="", outcome="unguarded",
                                     role="researcher", model="test-model", cost_nano=5))
    ledger.append_record(SpendRecord(ts=ledger.now() - 7200, reservation_id="",
                                     outcome="unguarded", role="researcher", model="m"))
    short = reserve(ledger, [role], 50, lease=0.01)
    time.sleep(0.02)
    assert ledger.reap() == 1 and isinstance(short, Reservation)
    assert isinstance(reserve(ledger, [role], 10), Reservation)  # held: its key and lease
    reserve(other, [day_bucket(other, "role:x", None)], 1)

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = sorted(client.scan_iter(match="*", count=1000))
    mine = [k for k in keys if k.startswith("cb:{tagged}:")]
    theirs = [k for k in keys if k.startswith("cb:{other}:")]
    assert len(mine) + len(theirs) == len(keys)  # nothing outside a namespace
    # Every kind of key was made: the ended reservations' TOMBSTONES ("t")
    # and the COMPACT records' contexts ("c") included (lua/_common.lua).
    assert {k.split(":")[2] for k in mine} == {"records", "odd", "oddseq", "r", "b", "claim",
                                               "epoch", "ru", "resets", "t", "c", "leases"}
    assert len({key_slot(k.encode()) for k in mine}) == 1
    assert key_slot(mine[0].encode()) == key_slot(b"{tagged}")
    assert key_slot(theirs[0].encode()) != key_slot(mine[0].encode())


def test_counters_and_reservations_expire_so_storage_stays_bounded(redis_url: str) -> None:
    ledger = RedisLedger(redis_url, namespace="ttl", retention_days=3)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    now = ledger.now()
    b = day_bucket(ledger, "role:researcher", 10**9, now)
    res = reserve(ledger, [b], 1000, lease=600)
    assert isinstance(res, Reservation)
    bkey, rkey = ledger.prefix + "b:" + b.key, ledger.prefix + "r:" + res.reservation_id

    # Counter: the window's end plus 3 days of retention.
    assert abs(client.ttl(bkey) - (b.ends_at + 3 * 86400 - now)) <= 3
    # A live reservation lives as long as the counter it may have to correct.
    assert abs(client.ttl(rkey) - client.ttl(bkey)) <= 2
    assert client.zscore(ledger.prefix + "leases", res.reservation_id) is not None

    ledger.settle(res.reservation_id, 900, Usage(9, 0, 0, 0, 0))
    # Settled: the key goes; its TOMBSTONE lives until the end of the next
    # UTC day (see lua/_common.lua), with the day's other tombstones.
    assert client.exists(rkey) == 0
    day = int(now // 86400)
    tombs = sorted(client.scan_iter(match=f"cb:{{ttl}}:t:{day}:*"))
    assert len(tombs) == 2  # the day's count and one shard
    for k in tombs:
        assert abs(client.ttl(k) - ((day + 2) * 86400 - now)) <= 3
    assert ledger.reservation_state(res.reservation_id) == "settled"
    assert client.zscore(ledger.prefix + "leases", res.reservation_id) is None
    assert abs(client.ttl(bkey) - (b.ends_at + 3 * 86400 - now)) <= 3

    # A counter that expired while a reservation was out is not recreated
    # without an expiry when the reservation ends (as settle or at amount 0).
    for amount in (1000, 0):
        late = reserve(ledger, [b], amount, lease=600)
        assert isinstance(late, Reservation)
        client.delete(bkey)  # what its expiry would do
        assert ledger.settle(late.reservation_id, 5, Usage(5, 0, 0, 0, 0)).applied is True
        assert client.exists(bkey) == 0
    # Counters and reservations all expire (the stream is trimmed instead,
    # and the leases ZSET only holds reservations still out).
    for k in client.scan_iter(match="cb:{ttl}:*"):
        # The epoch (one short key per namespace) never expires, by design.
        assert client.ttl(k) > 0 or k.split(":")[2] in ("records", "leases", "epoch"), k

    # A bucket of a window long gone is dropped at once, not kept forever.
    old = Bucket("role:old", "day", "2020-01-01", None, 1577836800.0, 1577923200.0)
    ledger.reset(old)
    assert client.exists(ledger.prefix + "b:" + old.key) == 0


def test_an_ended_reservation_leaves_a_small_tombstone_that_still_answers_repeats(
    redis_url: str,
) -> None:
    """Ended reservations are remembered for at least a day, and at fleet
    rates that is Redis memory: not a key each (~260 bytes), but a field of
    a small listpack-encoded hash (see TOMBSTONES in lua/_common.lua)."""
    ledger = RedisLedger(redis_url, namespace="tomb")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    buckets = [day_bucket(ledger, f"role:researcher-{i}", 10**9) for i in range(3)]
    draft = RecordDraft(role="researcher", model="test-model", crew="research",
                        estimate_nano=1000, metadata={"task": "summarise " * 20})
    rid = new_reservation_id()
    res = ledger.reserve(ReserveRequest(rid, tuple(buckets), 1000, 600.0, draft))
    assert isinstance(res, Reservation)
    rkey = ledger.prefix + "r:" + rid
    assert client.strlen(rkey) > 700  # three buckets' JSON and the record tail

    assert ledger.settle(rid, 900, Usage(9, 0, 0, 0, 0)).applied is True
    assert client.exists(rkey) == 0
    # Repeats are answered from the tombstone, and charge nothing again.
    again = ledger.settle(rid, 950, Usage(9, 0, 0, 0, 0))
    assert (again.state, again.applied, again.cost_nano) == ("settled", False, 900)
    late = ledger.release(rid)
    assert (late.state, late.applied, late.cost_nano) == ("settled", False, 900)
    assert [spent_reserved(ledger, b) for b in buckets] == [(900, 0)] * 3
    assert ledger.reservation_state(rid) == "settled"
    assert len(ledger.records()) == 1
    # Released and expired ones too, and a cost too big for the packed
    # integer (2^50 nano-USD and more) is kept as text.
    freed = ledger.reserve(ReserveRequest(new_reservation_id(), tuple(buckets), 10, 600, draft))
    lapsed = ledger.reserve(ReserveRequest(new_reservation_id(), tuple(buckets), 7, 0.01, draft))
    big = ledger.reserve(ReserveRequest(new_reservation_id(), (buckets[0],), 1, 600, draft))
    assert isinstance(freed, Reservation) and isinstance(lapsed, Reservation)
    assert isinstance(big, Reservation)
    assert ledger.release(freed.reservation_id).applied is True
    time.sleep(0.02)
    assert ledger.reap() == 1
    huge = 2**50 + 3
    assert ledger.settle(big.reservation_id, huge, Usage(1, 0, 0, 0, 0)).applied is True
    for r, state, cost in ((freed, "released", 0), (lapsed, "expired", 7),
                           (big, "settled", huge)):
        for repeat in (ledger.settle(r.reservation_id, 5, Usage(1, 0, 0, 0, 0)),
                       ledger.release(r.reservation_id)):
            assert (repeat.state, repeat.applied, repeat.cost_nano) == (state, False, cost)
        assert ledger.reservation_state(r.reservation_id) == state
    assert spent_reserved(ledger, buckets[0]) == (900 + 7 + huge, 0)
    assert [spent_reserved(ledger, b) for b in buckets[1:]] == [(907, 0)] * 2
    # An id never reserved is still unknown.
    assert ledger.reservation_state("never") is None
    with pytest.raises(ReservationError, match="unknown reservation"):
        ledger.settle("never", 1, Usage(1, 0, 0, 0, 0))
    # A few hundred bytes in all: no key per reservation.
    tombs = list(client.scan_iter(match="cb:{tomb}:t:*"))
    assert 2 <= len(tombs) <= 5 and all(client.type(k) in ("hash", "string") for k in tombs)
    for k in tombs:
        if client.type(k) == "hash":
            assert client.object("encoding", k) == "listpack"
    client.close()
    ledger.close()


def test_tombstones_answer_repeats_after_a_restart_with_aof(tmp_path: Path) -> None:
    """A repeated settle after the reservation ended is not charged twice,
    also after Redis restarted from its append-only file."""
    server = RedisServer(directory=tmp_path, appendonly=True)
    server.start()
    try:
        ledger = RedisLedger(server.url, namespace="aof")
        b = day_bucket(ledger, "role:researcher", 10**9)
        done = [reserve(ledger, [b], 1000) for _ in range(300)]
        assert all(isinstance(r, Reservation) for r in done)
        for r in done:
            assert isinstance(r, Reservation)
            assert ledger.settle(r.reservation_id, 20, Usage(2, 0, 0, 0, 0)).applied is True
        assert spent_reserved(ledger, b) == (6000, 0)
        ledger.close()
        server.stop()  # SIGKILL: a crash; the AOF (fsync always) has every write
        server.start()
        ledger = RedisLedger(server.url, namespace="aof")
        for r in done:
            assert isinstance(r, Reservation)
            again = ledger.settle(r.reservation_id, 99, Usage(9, 0, 0, 0, 0))
            assert (again.state, again.applied, again.cost_nano) == ("settled", False, 20)
        assert spent_reserved(ledger, b) == (6000, 0)
        assert len(ledger.records()) == 300
        assert sum(r.cost_nano for r in ledger.records()) == 6000
        ledger.close()
    finally:
        server.stop()


def test_compact_records_read_back_exactly(redis_url: str) -> None:
    """Settle, release and expiry records are COMPACT stream entries (see
    lua/_common.lua); they read back as the SpendRecords they stand for:
    microsecond ts on the ledger clock, usage, cost, estimate, metadata."""
    ledger = RedisLedger(redis_url, namespace="compact")
    b = day_bucket(ledger, "role:researcher", None)
    draft = RecordDraft(role="Forscherin \"Müller\"", model="gpt-4o-mini", crew=None,
                        estimate_nano=12_345, metadata={"run": "r#1", "n": [1, 2]})
    plain = RecordDraft(role="writer", model="m", crew="team", estimate_nano=7)
    before = ledger.now()
    one = ledger.reserve(ReserveRequest(new_reservation_id(), (b,), 50_000, 600, draft))
    two = ledger.reserve(ReserveRequest(new_reservation_id(), (b,), 70, 600, plain))
    assert isinstance(one, Reservation) and isinstance(two, Reservation)
    ledger.settle(one.reservation_id, 43_210, Usage(1200, 100, 50, 300, 20))
    ledger.release(two.reservation_id)
    after = ledger.now()
    got = ledger.records()
    assert [(r.reservation_id, r.outcome) for r in got] == [
        (one.reservation_id, "settled"), (two.reservation_id, "released")]
    a, c = got
    assert (a.role, a.model, a.crew, a.metadata) == (draft.role, "gpt-4o-mini", None,
                                                     {"run": "r#1", "n": [1, 2]})
    assert (a.input_tokens, a.cached_input_tokens, a.cache_write_tokens, a.output_tokens,
            a.reasoning_tokens, a.cost_nano, a.estimate_nano) == (1200, 100, 50, 300, 20,
                                                                  43_210, 12_345)
    assert (c.role, c.model, c.crew, c.metadata, c.cost_nano, c.estimate_nano) == (
        "writer", "m", "team", {}, 0, 7)
    assert before <= a.ts <= c.ts <= after
    assert round(a.ts * 1e6) == a.ts * 1e6 or abs(a.ts * 1e6 - round(a.ts * 1e6)) < 0.01
    # A blocked call's record is compact too, with the budget that refused it.
    tight = day_bucket(ledger, "role:writer", 5)
    rid = new_reservation_id()
    denied = ledger.reserve(ReserveRequest(rid, (b, tight), 70, 600, plain))
    assert isinstance(denied, Denial)
    blocked = ledger.records()[-1]
    assert (blocked.reservation_id, blocked.outcome, blocked.scope, blocked.role, blocked.crew,
            blocked.cost_nano, blocked.estimate_nano, blocked.input_tokens) == (
        rid, "blocked", "role:writer", "writer", "team", 0, 7, 0)
    assert ledger.records()[:2] == got  # the scope is only on the blocked one
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    entries = client.xrange(ledger.prefix + "records")
    assert [list(f) for _id, f in entries] == [
        ["t", "i", "o", "n", "k", "w", "x", "z", "c", "g", "e", "m"]] * 3
    client.close()
    ledger.close()


def test_records_stream_and_odd_set_are_trimmed_to_retention(redis_url: str) -> None:
    ledger = RedisLedger(redis_url, namespace="trim", retention_days=1)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    stream = ledger.prefix + "records"
    now = ledger.now()
    now_ms = int(now * 1000)

    def old_record(ts: float) -> str:
        return SpendRecord(ts=ts, reservation_id="x", outcome="settled", role="researcher",
                           model="m", cost_nano=1).to_json()

    # Records written 2 days and 12 hours ago (ids on the Redis clock).
    client.xadd(stream, {"r": old_record(now - 2 * 86400)}, id=f"{now_ms - 2 * 86_400_000}-0")
    client.xadd(stream, {"r": old_record(now - 43200)}, id=f"{now_ms - 43_200_000}-0")
    b = day_bucket(ledger, "role:researcher", None, now)
    res = reserve(ledger, [b], 10)
    assert isinstance(res, Reservation)
    ledger.settle(res.reservation_id, 10, Usage(1, 0, 0, 0, 0))  # appends, trims by MINID

    assert client.xlen(stream) == 2
    assert [r.outcome for r in ledger.records()] == ["settled", "settled"]
    assert [r.ts for r in ledger.records(until=now - 3600)] == [now - 43200]

    # A record whose ts is far from the Redis clock is still found by its ts...
    far = SpendRecord(ts=now - 5 * 3600, reservation_id="", outcome="unguarded",
                      role="researcher", model="m", cost_nano=7)
    ledger.append_record(far)
    assert ledger.records(since=now - 6 * 3600, until=now - 4 * 3600) == [far]
    # ... and dropped once it is older than the retention, like the stream.
    ledger.append_record(SpendRecord(ts=now - 3 * 86400, reservation_id="",
                                     outcome="unguarded", role="r", model="m"))
    ledger.append_record(SpendRecord(ts=now - 4 * 3600, reservation_id="",
                                     outcome="unguarded", role="r", model="m"))
    odd = client.zrange(ledger.prefix + "odd", 0, -1, withscores=True)
    assert sorted(score for _, score in odd) == [now - 5 * 3600, now - 4 * 3600]


def test_money_beyond_exact_lua_range_is_refused(redis_url: str) -> None:
    ledger = RedisLedger(redis_url, namespace="big")
    b = day_bucket(ledger, "global", 2**53)
    with pytest.raises(ValueError, match="2\\^53"):
        reserve(ledger, [b], 1)
    ok = day_bucket(ledger, "global", 2**53 - 1)
    assert isinstance(reserve(ledger, [ok], 2**53 - 2), Reservation)
    assert spent_reserved(ledger, ok) == (0, 2**53 - 2)  # exact, not rounded
    assert isinstance(reserve(ledger, [ok], 2), Denial)


# -- the ledger clock ----------------------------------------------------------------


def test_bucket_outside_redis_time_raises_clock_skew(redis_url: str) -> None:
    ledger = RedisLedger(redis_url, namespace="skew")
    now = ledger.now()
    future = day_bucket(ledger, "role:researcher", 1000, now + 2 * 86400)
    with pytest.raises(ClockSkew) as info:
        reserve(ledger, [day_bucket(ledger, "global", None, now), future], 10)
    assert abs(info.value.ledger_now - ledger.now()) < 1.0
    # Nothing was charged, not even on the bucket that was fine.
    assert spent_reserved(ledger, day_bucket(ledger, "global", None, now)) == (0, 0)


def test_guard_with_a_clock_two_days_off_charges_the_redis_day(redis_url: str) -> None:
    skew = 2 * 86400.0
    guard = Guard(CONFIG, redis_url, clock=lambda: time.time() + skew)
    ticket = guard.preflight("researcher", "test-model", MESSAGES, max_tokens=500)
    guard.settle(ticket, USAGE)
    redis_at = ticket.expires_at - guard.config.lease_seconds  # lease ends on Redis's clock
    assert abs(redis_at - guard.ledger.now()) < 5.0

    ledger_day = guard.ledger.status(guard_buckets(guard, redis_at))
    client_day = guard.ledger.status(guard_buckets(guard, time.time() + skew))
    assert [(s.bucket.period, s.spent_nano) for s in ledger_day] == [
        (span("day", redis_at, UTC).period, to_nano(COST))
    ] * 2
    assert [s.spent_nano for s in client_day] == [0, 0]
    assert [b.period for b in guard.buckets("researcher")] == [
        span("day", redis_at, UTC).period
    ] * 2  # the guard learned the offset


# -- Redis Cluster: a real one-node cluster checks the single-slot claim -----------------


@pytest.fixture
def cluster_node(tmp_path: Path) -> Iterator[RedisServer]:
    port = free_port()
    while port > 55535:  # Redis refuses cluster nodes above it (bus port = port + 10000)
        port = free_port()
    server = RedisServer(
        port=port,
        directory=tmp_path,
        extra_args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-port", str(free_port())),
    )
    with server:
        assert server.command("CLUSTER", "ADDSLOTSRANGE", "0", "16383").startswith(b"+OK")
        deadline = time.monotonic() + 10
        while b"cluster_state:ok" not in _bulk(server, "CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "one-node cluster never became ok"
            time.sleep(0.05)
        yield server


def _bulk(server: RedisServer, *cmd: str) -> bytes:
    client = redis.Redis(port=server.port)
    try:
        return bytes(client.execute_command(*cmd))
    finally:
        client.close()


def test_every_operation_runs_on_redis_cluster(cluster_node: RedisServer) -> None:
    url = f"redis+cluster://127.0.0.1:{cluster_node.port}"
    ledger = RedisLedger(url, namespace="cl")
    assert ledger.url == url
    role = day_bucket(ledger, "role:researcher", 1000)
    crew = day_bucket(ledger, "crew:c", None)
    a = reserve(ledger, [role, crew], 600)
    assert isinstance(a, Reservation)
    assert isinstance(reserve(ledger, [role, crew], 500), Denial)
    assert ledger.settle(a.reservation_id, 550, Usage(5, 0, 0, 5, 0)).cost_nano == 550
    short = reserve(ledger, [role], 10, lease=0.01)
    assert isinstance(short, Reservation)
    time.sleep(0.02)
    assert ledger.reap() == 1
    assert ledger.reset(crew).spent_nano == 0
    assert ledger.claim("m", 10) is True
    ledger.append_record(SpendRecord(ts=ledger.now(), reservation_id="", outcome="unguarded",
                                     role="researcher", model="m", cost_nano=1))
    assert spent_reserved(ledger, role) == (560, 0)
    assert [r.outcome for r in ledger.records()] == [
        "blocked", "settled", "expired", "reset", "unguarded"
    ]
    # The node really enforces single-slot scripts: a script touching keys of
    # two slots is refused, so the calls above passed because of the hash tag.
    client = redis.Redis(port=cluster_node.port)
    with pytest.raises(redis.ResponseError):
        client.eval("redis.call('GET', KEYS[1]); return redis.call('GET', KEYS[2])",
                    2, "{cl}:a", "{other}:b")
    client.close()


# -- packaging ---------------------------------------------------------------------


def test_missing_redis_py_is_a_clear_error_and_core_never_imports_it() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import crew_budget\n"
        "assert 'redis' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "from crew_budget.ledger import open_ledger\n"
        "try:\n"
        "    open_ledger('redis://127.0.0.1:1/0')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.startswith(ConfigError.__name__)
    assert "pip install 'crew-budget[redis]'" in out


def test_unreachable_host_port_fails_within_the_connect_timeout() -> None:
    ledger = RedisLedger(f"redis://127.0.0.1:{free_port()}/0")
    t0 = time.monotonic()
    with pytest.raises(LedgerUnavailable, match="refused"):
        ledger.now()
    assert time.monotonic() - t0 < 1.5


def seconds_to_fail_while_hung(server: RedisServer, ledger: RedisLedger, b: Bucket) -> float:
    """Stop the server (alive, accepting, never answering), reserve: it must
    fail as a timeout. Returns how long that took."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(LedgerUnavailable, match="Timeout"):
            reserve(ledger, [b], 1)
        return time.monotonic() - t0
    finally:
        server.proc.send_signal(signal.SIGCONT)


def test_a_hung_server_times_out_instead_of_hanging_the_agent(tmp_path: Path) -> None:
    with RedisServer(directory=tmp_path) as server:
        ledger = RedisLedger(server.url)
        waited = seconds_to_fail_while_hung(server, ledger, day_bucket(ledger, "global", None))
    # The default operation timeout is 2 s, and a timeout is not retried.
    assert 1.9 <= waited < 3.5


@pytest.mark.parametrize("parser", PARSERS)
def test_a_server_that_hangs_between_calls_times_out_on_the_pooled_connection(
    tmp_path: Path, parser: str
) -> None:
    """A server that stops answering after a call fails the next one, on the
    connection redis-py kept in its pool, within the operation timeout and
    as a timeout, with either reply parser; the call after it reconnects."""
    with RedisServer(directory=tmp_path) as server:
        ledger = redis_ledger(server.url, parser, op_timeout=1.0)
        b = day_bucket(ledger, "global", None)
        assert isinstance(reserve(ledger, [b], 1), Reservation)  # connection made, pooled
        waited = seconds_to_fail_while_hung(server, ledger, b)
        assert 0.9 <= waited < 2.5  # one timeout, not retried
        assert isinstance(reserve(ledger, [b], 2), Reservation)
        assert used_parser(ledger) == parser
        ledger.close()


def test_a_cluster_that_is_down_fails_each_call_not_the_guard_construction() -> None:
    url = f"redis+cluster://127.0.0.1:{free_port()}"
    guard = Guard({**CONFIG, "fail_open": True}, url)  # constructing connects nothing
    ticket = guard.preflight("researcher", "test-model", MESSAGES, max_tokens=500)
    assert ticket.guarded is False
    with pytest.raises(LedgerUnavailable, match=re.escape(url)):
        RedisLedger(url).now()


def test_fixture_fails_loudly_without_the_redis_server_binary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tests.fixtures.redis_server.shutil.which", lambda _name: None)
    with pytest.raises(pytest.fail.Exception, match="apt-get install redis-server"):
        RedisServer()


def test_foreign_data_under_our_keys_is_a_clear_ledger_error_not_an_outage(
    redis_url: str,
) -> None:
    """A WRONGTYPE reply means someone else wrote our keys: fail with the fix,
    and never as LedgerUnavailable (which fail_open would let through)."""
    import redis as redis_py

    from crew_budget import Guard
    from crew_budget.errors import LedgerError, LedgerUnavailable

    guard = Guard({"roles": {"r": {"daily": 1}}, "fail_open": True,
                   "prices": {"m": {"input_per_million": 0, "output_per_million": 1}}}, redis_url)
    (bucket,) = guard.buckets("r")
    ledger = guard.ledger
    client = redis_py.Redis.from_url(redis_url)
    client.lpush(ledger.prefix + "b:" + bucket.key, "not a hash")  # type: ignore[attr-defined]
    with pytest.raises(LedgerError) as info:
        guard.preflight("r", "m", [{"role": "user", "content": "x"}], max_tokens=10)
    assert not isinstance(info.value, LedgerUnavailable)
    assert "WRONGTYPE" in str(info.value)
    assert "namespace" in str(info.value)
    client.close()
    guard.close()


def test_rollup_keys_expire_after_400_days_and_records_default_to_7(redis_url: str) -> None:
    # Raw records are kept 7 days by default on Redis (at most retention_days);
    # each hour's rollup hash expires 400 days after the hour starts.
    assert RedisLedger(redis_url).records_retention_days == 7
    assert RedisLedger(redis_url, retention_days=3).records_retention_days == 3
    assert RedisLedger(redis_url, records_retention_days=0).records_retention_days == 0
    ledger = RedisLedger(redis_url, namespace="rollttl")
    now = ledger.now()
    b = Bucket("role:r", "day", "p", 1000, now - 60, now + 3600)
    res = ledger.reserve(ReserveRequest("rid1", (b,), 100, 60, RecordDraft("r", "m")))
    assert isinstance(res, Reservation)
    ledger.settle("rid1", 70, Usage(5, 0, 0, 2, 0))
    (rollup,) = ledger.rollups(since=now - 1)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    key = f"cb:{{rollttl}}:ru:{int(rollup.hour)}"
    assert client.hgetall(key) == {
        '{"scope":null,"role":"r","model":"m","crew":null}': "1 0 0 0 5 0 0 2 0 70 0 0 0"}
    assert client.expiretime(key) == int(rollup.hour) + 400 * 86400
    ledger.close()


def test_metadata_unique_to_each_call_goes_inline_past_the_days_context_cap(
    redis_url: str,
) -> None:
    """COMPACT records name their (role, model, crew, metadata) by a per-day
    context id; a day with CONTEXTS_MAX (20,000) contexts already stores new
    metadata in the record itself, so per-call metadata cannot grow the
    context hash without bound. Both read back the same."""
    ledger = RedisLedger(redis_url, namespace="ctx")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    b = day_bucket(ledger, "role:researcher", None)
    first = ledger.reserve(ReserveRequest(new_reservation_id(), (b,), 10, 600, RecordDraft(
        "researcher", "m", None, 10, metadata={"call": 0})))
    assert isinstance(first, Reservation)
    ledger.settle(first.reservation_id, 9, Usage(1, 0, 0, 1, 0))
    (ctx_key,) = client.scan_iter(match="cb:{ctx}:c:*")
    assert client.hgetall(ctx_key) == {
        '{"role":"researcher","model":"m","crew":null,"metadata":{"call":0}}': "1"}
    pipe = client.pipeline(transaction=False)
    for i in range(2, 20_001):  # fill the day up to the cap
        pipe.hset(ctx_key, f'{{"filler":{i}}}', str(i))
    pipe.execute()
    for n in (1, 2):
        r = ledger.reserve(ReserveRequest(new_reservation_id(), (b,), 10, 600, RecordDraft(
            "researcher", "m", None, 10, metadata={"call": n})))
        assert isinstance(r, Reservation)
        ledger.settle(r.reservation_id, 9, Usage(1, 0, 0, 1, 0))
    # One context without metadata was added (20,001); each record carries its own.
    assert client.hlen(ctx_key) == 20_001
    assert client.hget(ctx_key, '{"role":"researcher","model":"m","crew":null,"metadata":{}}') \
        == "20001"
    entries = client.xrange(ledger.prefix + "records")
    assert [(f["g"], f["m"]) for _id, f in entries] == [
        ("1", ""), ("20001", '{"call":1}'), ("20001", '{"call":2}')]
    assert [r.metadata for r in ledger.records()] == [{"call": 0}, {"call": 1}, {"call": 2}]
    assert {(r.role, r.model, r.crew) for r in ledger.records()} == {("researcher", "m", None)}
    client.close()
    ledger.close()


def test_tombstone_shards_grow_with_the_days_traffic_and_stay_small_listpacks(
    redis_url: str,
) -> None:
    """The n-th end of a day goes to level L (4^L shards) with n <= 64 * 4^L
    (see TOMBSTONES in lua/_common.lua): 1,500 ends fill levels 1 and 2 and
    start 3, no hash holds more than redis.conf's 128 listpack entries, and
    every one of the 1,500 still answers its repeat with its own cost."""
    ledger = RedisLedger(redis_url, namespace="levels", records_retention_days=0)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    b = day_bucket(ledger, "role:researcher", None)
    draft = RecordDraft(role="researcher", model="m", estimate_nano=1)
    ended = []
    for i in range(1500):
        rid = new_reservation_id()
        assert isinstance(ledger.reserve(ReserveRequest(rid, (b,), 1000, 600, draft)),
                          Reservation)
        if i % 10 == 9:
            assert ledger.release(rid).applied is True
            ended.append((rid, "released", 0))
        else:
            assert ledger.settle(rid, i, Usage(1, 0, 0, 1, 0)).applied is True
            ended.append((rid, "settled", i))
    day = int(ledger.now() // 86400)
    assert client.get(f"{ledger.prefix}t:{day}:n") == "1500"
    shards = [k for k in client.scan_iter(match=f"{ledger.prefix}t:{day}:*") if k[-2:] != ":n"]
    levels = Counter(int(k.split(":")[-2]) for k in shards)
    assert set(levels) == {1, 2, 3} and levels[1] == 4 and levels[2] == 16
    sizes = {k: client.hlen(k) for k in shards}
    assert sum(sizes.values()) == 1500  # one field per end: no two ids collided here
    assert max(sizes.values()) <= 128
    assert {client.object("encoding", k) for k in shards} == {"listpack"}
    for rid, state, cost in ended:
        again = ledger.settle(rid, 10**6, Usage(1, 0, 0, 1, 0))
        assert (again.state, again.applied, again.cost_nano) == (state, False, cost)
    settled = sum(c for _r, s, c in ended if s == "settled")
    assert spent_reserved(ledger, b) == (settled, 0)
    client.close()
    ledger.close()
