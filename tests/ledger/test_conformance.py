"""One conformance suite, run unchanged against every ledger backend.

Each test states the part of the contract in ``crew_budget.ledger.base`` it
checks. Buckets are built around the ledger's own clock (Redis ``TIME``), so
the suite needs no clock injection; lease expiry uses leases of a fraction of
a second.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from crew_budget.errors import ReservationError
from crew_budget.ledger import (
    ROLLUP_METRICS,
    Bucket,
    ClockSkew,
    Denial,
    Ledger,
    RecordDraft,
    Reservation,
    ReserveRequest,
    SpendRecord,
    fold_rollups,
    new_reservation_id,
    open_ledger,
)
from crew_budget.ledger.redis import RedisLedger
from crew_budget.usage import Usage
from tests.ledger._parsers import redis_ledger, used_parser

# Redis twice: redis-py parsing replies with hiredis, and with its pure-Python
# parser (see tests/ledger/_parsers.py); and a real 3-master Redis Cluster
# with one replica each (tests/fixtures/redis_cluster.py), a fresh namespace
# (its own hash tag, so its own slot) per test.
BACKENDS = ["memory", "sqlite", "redis", "redis-python-parser", "redis-cluster"]


@pytest.fixture(params=BACKENDS)
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    elif request.param == "redis-cluster":
        cluster = request.getfixturevalue("redis_cluster")
        led = RedisLedger(cluster.url, namespace="conf-" + uuid.uuid4().hex[:12])
        yield led
        led.close()
        return
    else:
        parser = "python" if request.param == "redis-python-parser" else "hiredis"
        led = redis_ledger(request.getfixturevalue("redis_url"), parser)
        yield led
        assert used_parser(led) == parser
        led.close()
        return
    led = open_ledger(url)
    yield led
    led.close()


def bucket(led: Ledger, scope: str, limit: int | None, period: str = "p1") -> Bucket:
    now = led.now()
    return Bucket(scope, "day", period, limit, now - 3600, now + 3600)


def reserve(
    led: Ledger, buckets: list[Bucket], amount: int, *, lease: float = 600.0, rid: str | None = None
) -> Reservation | Denial:
    draft = RecordDraft(
        role="researcher", model="gpt-4o-mini", crew="c", estimate_nano=amount, metadata={"k": "v"}
    )
    return led.reserve(
        ReserveRequest(rid or new_reservation_id(), tuple(buckets), amount, lease, draft)
    )


def spent_reserved(led: Ledger, b: Bucket) -> tuple[int, int]:
    (st,) = led.status([b])
    return st.spent_nano, st.reserved_nano


def test_reserve_charges_every_bucket(ledger: Ledger) -> None:
    role, crew = bucket(ledger, "role:r", 1000), bucket(ledger, "crew:c", 5000)
    res = reserve(ledger, [role, crew], 300)
    assert isinstance(res, Reservation)
    assert res.amount_nano == 300
    assert spent_reserved(ledger, role) == (0, 300)
    assert spent_reserved(ledger, crew) == (0, 300)
    assert ledger.reservation_state(res.reservation_id) == "reserved"


def test_limit_is_inclusive_and_one_nano_over_is_denied(ledger: Ledger) -> None:
    b = bucket(ledger, "role:r", 1000)
    assert isinstance(reserve(ledger, [b], 600), Reservation)
    denied = reserve(ledger, [b], 401)
    assert isinstance(denied, Denial)
    assert (denied.state.spent_nano, denied.state.reserved_nano) == (0, 600)
    assert isinstance(reserve(ledger, [b], 400), Reservation)  # exactly reaches 1000
    assert spent_reserved(ledger, b) == (0, 1000)
    assert isinstance(reserve(ledger, [b], 1), Denial)


def test_all_or_nothing_across_buckets(ledger: Ledger) -> None:
    """Invariant 2: the role fits but the crew does not: nothing is charged."""
    role, crew = bucket(ledger, "role:r", 10_000), bucket(ledger, "crew:c", 500)
    reserve(ledger, [crew], 400)
    denied = reserve(ledger, [role, crew], 200)
    assert isinstance(denied, Denial)
    assert denied.state.bucket.scope == "crew:c"
    assert spent_reserved(ledger, role) == (0, 0)
    assert spent_reserved(ledger, crew) == (0, 400)
    blocked = [r for r in ledger.records() if r.outcome == "blocked"]
    assert len(blocked) == 1
    assert blocked[0].scope == "crew:c"
    assert blocked[0].estimate_nano == 200
    assert blocked[0].cost_nano == 0


def test_unlimited_bucket_tracks_but_never_denies(ledger: Ledger) -> None:
    tracking = bucket(ledger, "role:t", None)
    for _ in range(3):
        assert isinstance(reserve(ledger, [tracking], 10**12), Reservation)
    assert spent_reserved(ledger, tracking) == (0, 3 * 10**12)


def test_settle_moves_reserved_to_actual_cost_and_records_usage(ledger: Ledger) -> None:
    role, crew = bucket(ledger, "role:r", 10_000), bucket(ledger, "crew:c", 10_000)
    res = reserve(ledger, [role, crew], 900)
    assert isinstance(res, Reservation)
    usage = Usage(
        input_tokens=100,
        cached_input_tokens=20,
        cache_write_tokens=5,
        output_tokens=50,
        reasoning_tokens=10,
    )
    out = ledger.settle(res.reservation_id, 640, usage)
    assert (out.state, out.applied, out.cost_nano) == ("settled", True, 640)
    assert spent_reserved(ledger, role) == (640, 0)
    assert spent_reserved(ledger, crew) == (640, 0)
    (rec,) = [r for r in ledger.records() if r.outcome == "settled"]
    assert rec.reservation_id == res.reservation_id
    assert (rec.role, rec.model, rec.crew) == ("researcher", "gpt-4o-mini", "c")
    assert (rec.input_tokens, rec.cached_input_tokens, rec.cache_write_tokens) == (100, 20, 5)
    assert (rec.output_tokens, rec.reasoning_tokens) == (50, 10)
    assert (rec.estimate_nano, rec.cost_nano) == (900, 640)
    assert rec.metadata == {"k": "v"}


def test_settle_may_exceed_reservation_by_estimation_error(ledger: Ledger) -> None:
    b = bucket(ledger, "role:r", 1000)
    res = reserve(ledger, [b], 500)
    assert isinstance(res, Reservation)
    ledger.settle(res.reservation_id, 700, Usage(input_tokens=1))
    assert spent_reserved(ledger, b) == (700, 0)


def test_settle_and_release_are_idempotent(ledger: Ledger) -> None:
    """Invariant 4."""
    b = bucket(ledger, "role:r", 10_000)
    res = reserve(ledger, [b], 800)
    assert isinstance(res, Reservation)
    assert ledger.settle(res.reservation_id, 300, Usage(output_tokens=3)).applied
    again = ledger.settle(res.reservation_id, 999, Usage(output_tokens=9))
    assert (again.state, again.applied, again.cost_nano) == ("settled", False, 300)
    late_release = ledger.release(res.reservation_id)
    assert (late_release.state, late_release.applied) == ("settled", False)
    assert spent_reserved(ledger, b) == (300, 0)
    assert len([r for r in ledger.records() if r.reservation_id == res.reservation_id]) == 1

    res2 = reserve(ledger, [b], 800)
    assert isinstance(res2, Reservation)
    first = ledger.release(res2.reservation_id)
    assert (first.state, first.applied, first.cost_nano) == ("released", True, 0)
    assert not ledger.release(res2.reservation_id).applied
    assert not ledger.settle(res2.reservation_id, 500, Usage(output_tokens=5)).applied
    assert spent_reserved(ledger, b) == (300, 0)


def test_unknown_reservation_is_an_error(ledger: Ledger) -> None:
    with pytest.raises(ReservationError, match="unknown reservation"):
        ledger.settle("no-such-id", 1, Usage(output_tokens=1))
    with pytest.raises(ReservationError):
        ledger.release("no-such-id")


def test_retried_reserve_with_same_id_does_not_double_charge(ledger: Ledger) -> None:
    b = bucket(ledger, "role:r", 10_000)
    rid = new_reservation_id()
    first = reserve(ledger, [b], 700, rid=rid)
    second = reserve(ledger, [b], 700, rid=rid)
    assert isinstance(first, Reservation)
    assert isinstance(second, Reservation)
    assert spent_reserved(ledger, b) == (0, 700)


def test_expired_lease_is_charged_at_reservation(ledger: Ledger) -> None:
    """Invariant 3: a crash between reserve and settle over-counts, never under-counts."""
    b = bucket(ledger, "role:r", 10_000)
    crew = bucket(ledger, "crew:c", 10_000)
    res = reserve(ledger, [b, crew], 1234, lease=0.05)
    assert isinstance(res, Reservation)
    time.sleep(0.15)
    assert ledger.reap() == 1
    assert ledger.reservation_state(res.reservation_id) == "expired"
    assert spent_reserved(ledger, b) == (1234, 0)
    assert spent_reserved(ledger, crew) == (1234, 0)
    (rec,) = [r for r in ledger.records() if r.outcome == "expired"]
    assert rec.cost_nano == 1234
    # A late settle after expiry changes nothing: the state is final.
    late = ledger.settle(res.reservation_id, 10, Usage(output_tokens=1))
    assert (late.state, late.applied) == ("expired", False)
    assert spent_reserved(ledger, b) == (1234, 0)
    assert ledger.reap() == 0


def test_reserve_reaps_expired_leases_first(ledger: Ledger) -> None:
    """A leaked reservation must not block the budget forever (phantom 429s)."""
    b = bucket(ledger, "role:r", 1000)
    leaked = reserve(ledger, [b], 600, lease=0.05)
    assert isinstance(leaked, Reservation)
    time.sleep(0.15)
    # The reap charges the leaked 600 as spent; 400 still fits, 401 does not.
    assert isinstance(reserve(ledger, [b], 401), Denial)
    assert ledger.reservation_state(leaked.reservation_id) == "expired"
    assert isinstance(reserve(ledger, [b], 400), Reservation)


def test_settle_lands_in_the_period_it_was_reserved_in(ledger: Ledger) -> None:
    day1 = bucket(ledger, "role:r", 10_000, period="2026-11-25")
    res = reserve(ledger, [day1], 500)
    assert isinstance(res, Reservation)
    day2 = bucket(ledger, "role:r", 10_000, period="2026-11-26")
    ledger.settle(res.reservation_id, 450, Usage(output_tokens=1))
    assert spent_reserved(ledger, day1) == (450, 0)
    assert spent_reserved(ledger, day2) == (0, 0)


def test_bucket_outside_ledger_clock_raises_clock_skew(ledger: Ledger) -> None:
    now = ledger.now()
    stale = Bucket("role:r", "day", "yesterday", 1000, now - 2 * 86400, now - 86400)
    with pytest.raises(ClockSkew) as info:
        reserve(ledger, [stale], 10)
    assert abs(info.value.ledger_now - now) < 5
    fresh = bucket(ledger, "role:r", 1000)
    assert spent_reserved(ledger, fresh) == (0, 0)


def test_records_filter_by_time_and_keep_order(ledger: Ledger) -> None:
    b = bucket(ledger, "role:r", None)
    ids = []
    for cost in (1, 2, 3):
        res = reserve(ledger, [b], 10)
        assert isinstance(res, Reservation)
        ledger.settle(res.reservation_id, cost, Usage(output_tokens=cost))
        ids.append(res.reservation_id)
    recs = ledger.records()
    assert [r.reservation_id for r in recs] == ids
    assert [r.cost_nano for r in recs] == [1, 2, 3]
    assert ledger.records(since=recs[-1].ts + 1) == []
    assert len(ledger.records(since=recs[0].ts - 1, until=recs[-1].ts + 1)) == 3


def test_append_record_round_trips(ledger: Ledger) -> None:
    rec = SpendRecord(
        ts=ledger.now(),
        reservation_id="",
        outcome="unguarded",
        role="r",
        model="gpt-4o-mini",
        output_tokens=7,
        cost_nano=42,
        metadata={"a": 1},
    )
    ledger.append_record(rec)
    assert ledger.records() == [rec]


def test_claim_is_granted_once(ledger: Ledger) -> None:
    assert ledger.claim("alert:role:r|day|p1:80", 60) is True
    assert ledger.claim("alert:role:r|day|p1:80", 60) is False
    assert ledger.claim("alert:role:r|day|p1:100", 60) is True


def test_reset_zeroes_spend_and_is_recorded(ledger: Ledger) -> None:
    b = bucket(ledger, "role:r", 1000)
    res = reserve(ledger, [b], 900)
    assert isinstance(res, Reservation)
    ledger.settle(res.reservation_id, 900, Usage(output_tokens=1))
    assert isinstance(reserve(ledger, [b], 200), Denial)
    st = ledger.reset(b, reason="test")
    assert (st.spent_nano, st.reserved_nano) == (0, 0)
    assert isinstance(reserve(ledger, [b], 200), Reservation)
    (rec,) = [r for r in ledger.records() if r.outcome == "reset"]
    assert (rec.scope, rec.role, rec.cost_nano) == ("role:r", "r", -900)


# -- rollups: the hourly aggregates reports read ---------------------------------


def _mixed_traffic(led: Ledger) -> None:
    """Settles, a release, a block, an expiry, an unguarded record and a reset."""
    role = bucket(led, "role:r", 10_000)
    for cost, tokens in ((1_234, 10), (2_345, 20), (3_456, 30)):
        res = reserve(led, [role], 1_000)
        assert isinstance(res, Reservation)
        led.settle(res.reservation_id, cost, Usage(input_tokens=tokens, cached_input_tokens=2,
                                                    cache_write_tokens=1, output_tokens=5,
                                                    reasoning_tokens=3))
    released = reserve(led, [role], 500)
    assert isinstance(released, Reservation)
    led.release(released.reservation_id)
    assert isinstance(reserve(led, [role], 9_999), Denial)  # blocked: 7,035 spent
    abandoned = reserve(led, [role], 700, lease=0.05)
    assert isinstance(abandoned, Reservation)
    time.sleep(0.1)
    assert led.reap() == 1
    led.append_record(SpendRecord(
        ts=led.now(), reservation_id="u1", outcome="unguarded", role="other", model="m2",
        input_tokens=7, output_tokens=1, cost_nano=11, estimate_nano=13))
    led.reset(role, reason="test")


def test_rollups_equal_the_records_to_the_nano_dollar(ledger: Ledger) -> None:
    # Contract: every settle, release, expiry, block and unguarded record
    # adds to its hourly rollup in the same atomic step (resets do not).
    since = ledger.now() - 1
    _mixed_traffic(ledger)
    records = ledger.records(since=since)
    assert [r.outcome for r in records].count("reset") == 1
    rollups = ledger.rollups(since=since)
    assert rollups == fold_rollups(records)
    total = {m: sum(getattr(r, m) for r in rollups) for m in ROLLUP_METRICS}
    assert total == {
        "calls": 5, "blocked": 1, "released": 1, "expired": 1,
        "input_tokens": 10 + 20 + 30 + 7, "cached_input_tokens": 6, "cache_write_tokens": 3,
        "output_tokens": 16, "reasoning_tokens": 9,
        "cost_nano": 1_234 + 2_345 + 3_456 + 700 + 11,
        "estimate_nano": 3 * 1_000 + 700 + 13,
        "shadow_blocked": 0, "shadow_blocked_nano": 0,
    }
    blocked = [r for r in rollups if r.blocked]
    assert [(r.scope, r.role, r.model, r.crew) for r in blocked] == [
        ("role:r", "researcher", "gpt-4o-mini", "c")]
    assert {r.role for r in rollups} == {"researcher", "other"}
    hour = rollups[0].hour
    assert hour % 3600 == 0 and hour <= ledger.now() < hour + 3600
    # The span selects whole hours: one that ended before, or starts after, is empty.
    assert ledger.rollups(since=hour + 3600) == []
    assert ledger.rollups(until=hour) == []
    assert ledger.rollups(since=hour + 10, until=hour + 20) == rollups
    # Resets are not rolled up; they are kept as records of their own.
    (reset,) = ledger.resets(since=since)
    assert (reset.scope, reset.cost_nano) == ("role:r", -(1_234 + 2_345 + 3_456 + 700))
    assert reset.metadata["reason"] == "test"


def test_rollups_count_every_call_with_no_records_kept(
        request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    # records_retention_days=0: no raw record is stored, yet the rollups
    # hold every call, exactly.
    if backend == "memory":
        led = open_ledger("memory://", records_retention_days=0)
    elif backend == "sqlite":
        led = open_ledger(f"sqlite:///{tmp_path / 'l.db'}", records_retention_days=0)
    else:
        led = redis_ledger(request.getfixturevalue("redis_url"), "hiredis",
                           records_retention_days=0)
    with led:
        since = led.now() - 1
        _mixed_traffic(led)
        assert led.records(since=since) == []
        rollups = led.rollups(since=since)
        assert sum(r.cost_nano for r in rollups) == 1_234 + 2_345 + 3_456 + 700 + 11
        assert sum(r.calls for r in rollups) == 5
        assert sum(r.blocked for r in rollups) == 1
        assert sum(r.expired for r in rollups) == 1
        assert [r.cost_nano for r in led.resets(since=since)] == [-(1_234 + 2_345 + 3_456 + 700)]
        assert led.records_retention_days == 0



def test_rollups_count_shadow_blocked_calls_and_their_dollars(ledger: Ledger) -> None:
    """A charged call whose metadata has the guard's ``shadow_blocked`` mark counts
    in ``shadow_blocked`` and ``shadow_blocked_nano`` (settled, expired or
    unguarded); a released one, and a value merely *containing* the mark, do not."""
    from crew_budget.ledger.base import SHADOW_KEY

    since = ledger.now() - 1
    role = bucket(ledger, "role:r", None)

    def shadow_reserve(meta: dict[str, str], lease: float = 600.0) -> Reservation:
        draft = RecordDraft(role="researcher", model="gpt-4o-mini", crew="c",
                            estimate_nano=900, metadata=meta)
        res = ledger.reserve(ReserveRequest(new_reservation_id(), (role,), 900, lease, draft))
        assert isinstance(res, Reservation)
        return res

    mark = {SHADOW_KEY: "role:r|day"}
    settled = shadow_reserve({"k": "v", **mark})
    ledger.settle(settled.reservation_id, 321, Usage(input_tokens=10, output_tokens=2))
    ledger.release(shadow_reserve(mark).reservation_id)
    shadow_reserve(mark, lease=0.05)
    plain = shadow_reserve({"note": '"shadow_blocked":"x"'})  # a value, not the key
    ledger.settle(plain.reservation_id, 50, Usage(input_tokens=1, output_tokens=1))
    time.sleep(0.1)
    assert ledger.reap() == 1  # the expired shadow call: charged its 900
    ledger.append_record(SpendRecord(
        ts=ledger.now(), reservation_id="u2", outcome="unguarded", role="other", model="m2",
        cost_nano=17, metadata=mark))
    rollups = ledger.rollups(since=since)
    assert rollups == fold_rollups(ledger.records(since=since))
    total = {m: sum(getattr(r, m) for r in rollups)
             for m in ("calls", "released", "shadow_blocked", "shadow_blocked_nano", "cost_nano")}
    assert total == {"calls": 4, "released": 1, "shadow_blocked": 3,
                     "shadow_blocked_nano": 321 + 900 + 17, "cost_nano": 321 + 900 + 50 + 17}

@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


_KILLED_WORKER = """
import os, sys, time
from crew_budget.ledger import Bucket, RecordDraft, ReserveRequest, open_ledger
led = open_ledger(sys.argv[1])
now = led.now()
b = Bucket("role:r", "day", "p1", 10_000, now - 3600, now + 3600)
for i in range(3):
    led.reserve(ReserveRequest("killed%d" % i, (b,), 1_000 + i, 0.2,
                               RecordDraft("researcher", "gpt-4o-mini", "c", 1_000 + i)))
print("reserved", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_rollups_count_reservations_of_a_sigkilled_process(
        request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> None:
    # A worker reserves three calls and is SIGKILLed before settling: the
    # reaper expires them at their reserved amounts, and the rollups show
    # exactly that money, as the records do.
    import os
    import signal
    import subprocess
    import sys

    url = (f"sqlite:///{tmp_path / 'k.db'}" if kind == "sqlite"
           else request.getfixturevalue("redis_url"))
    led = open_ledger(url)
    since = led.now() - 1
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WORKER, url],
                            stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "reserved"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    time.sleep(0.3)
    assert led.reap() == 3
    rollups = led.rollups(since=since)
    assert rollups == fold_rollups(led.records(since=since))
    assert sum(r.cost_nano for r in rollups) == 1_000 + 1_001 + 1_002
    assert sum(r.expired for r in rollups) == 3
    led.close()


def test_estimate_margin_histograms_merge_atomically_and_halve(ledger: Ledger) -> None:
    """Contract: ``margin_merge`` adds bin counts to one family's histogram and
    returns the merge; past ``history`` samples every count is halved (rounded
    down, empty bins dropped); ``margin_read`` returns what is stored, for the
    families asked (None: all), and knows nothing of families never merged."""
    from crew_budget.ledger.base import merge_margin_bins

    fam, other = "anthropic/claude-sonnet-4", "openai/gpt-4o"
    assert ledger.margin_read([fam]) == {}
    assert ledger.margin_merge(fam, {0: 10, 20: 3}, 100) == {0: 10, 20: 3}
    assert ledger.margin_merge(fam, {20: 2, 200: 1}, 100) == {0: 10, 20: 5, 200: 1}
    assert ledger.margin_merge(other, {7: 1}, 100) == {7: 1}
    assert ledger.margin_read([fam, "openai/none"]) == {fam: {0: 10, 20: 5, 200: 1}}
    assert ledger.margin_read(None) == {fam: {0: 10, 20: 5, 200: 1}, other: {7: 1}}
    # 16 + 3 more = 19 > history 18: halved, the lone 200 sample dropped.
    halved = ledger.margin_merge(fam, {1: 3}, 18)
    assert halved == {0: 5, 1: 1, 20: 2}
    assert halved == merge_margin_bins({0: 10, 20: 5, 200: 1}, {1: 3}, 18)
    assert ledger.margin_read([fam]) == {fam: {0: 5, 1: 1, 20: 2}}
