"""Token and call limits (issue 12, item 3): the ledger contract for units.

A bucket of unit ``input_tokens`` takes the call's estimated prompt tokens,
``output_tokens`` its reserved output tokens, ``calls`` one call, all in the
same all-or-nothing reservation as the dollars; settle, release and expiry
move each by its own amount. Run unchanged on every backend of the
conformance suite (memory, SQLite, Redis with both reply parsers, a real
Redis Cluster).
"""

from __future__ import annotations

from crew_budget.ledger import (
    Bucket,
    Denial,
    Ledger,
    RecordDraft,
    Reservation,
    ReserveRequest,
    Unit,
    new_reservation_id,
)
from crew_budget.usage import Usage
from tests.ledger.test_conformance import ledger, spent_reserved

__all__ = ["ledger"]  # the parametrized backend fixture, shared with the conformance suite

PROMPT, OUTPUT = 4_100, 500


def ubucket(led: Ledger, scope: str, limit: int | None, unit: Unit = "usd",
            period: str = "p1") -> Bucket:
    now = led.now()
    return Bucket(scope, "day", period, limit, now - 3600, now + 3600, unit)


def reserve(led: Ledger, buckets: list[Bucket], amount: int, *, prompt: int = PROMPT,
            output: int = OUTPUT, lease: float = 600.0, rid: str | None = None
            ) -> Reservation | Denial:
    draft = RecordDraft(role="researcher", model="gpt-4o-mini", crew="c", estimate_nano=amount,
                        prompt_tokens_estimate=prompt, output_tokens_reserved=output)
    return led.reserve(
        ReserveRequest(rid or new_reservation_id(), tuple(buckets), amount, lease, draft))


def four(led: Ledger, scope: str = "role:r", limits: tuple[int | None, ...] = (None,) * 4
         ) -> list[Bucket]:
    """One scope's usd, input_tokens, output_tokens and calls buckets."""
    units: tuple[Unit, ...] = ("usd", "input_tokens", "output_tokens", "calls")
    return [ubucket(led, scope, lim, u) for u, lim in zip(units, limits, strict=True)]


def test_each_unit_takes_its_own_amount_in_one_reservation(ledger: Ledger) -> None:
    buckets = four(ledger, limits=(10_000, 1_000_000, 100_000, 50))
    res = reserve(ledger, buckets, 300)
    assert isinstance(res, Reservation)
    assert [spent_reserved(ledger, b) for b in buckets] == [
        (0, 300), (0, PROMPT), (0, OUTPUT), (0, 1)]
    # Distinct counters: the USD bucket's key is the one it always had.
    assert [b.key for b in buckets] == [
        "role:r|day|p1", "role:r|day|p1|input_tokens", "role:r|day|p1|output_tokens",
        "role:r|day|p1|calls"]


def test_settle_charges_each_unit_from_the_usage(ledger: Ledger) -> None:
    buckets = four(ledger, limits=(10_000, 1_000_000, 100_000, 50))
    res = reserve(ledger, buckets, 900)
    assert isinstance(res, Reservation)
    usage = Usage(input_tokens=3_000, cached_input_tokens=1_000, cache_write_tokens=50,
                  output_tokens=420, reasoning_tokens=100)
    result = ledger.settle(res.reservation_id, 777, usage)
    assert (result.state, result.applied, result.cost_nano) == ("settled", True, 777)
    # input: uncached + cached + cache writes (the prompt as billed);
    # output: reasoning included in output_tokens; one call.
    assert [spent_reserved(ledger, b) for b in buckets] == [
        (777, 0), (4_050, 0), (420, 0), (1, 0)]
    again = ledger.settle(res.reservation_id, 5, usage)
    assert (again.applied, again.cost_nano) == (False, 777)
    assert [spent_reserved(ledger, b) for b in buckets] == [
        (777, 0), (4_050, 0), (420, 0), (1, 0)]


def test_release_charges_no_unit(ledger: Ledger) -> None:
    buckets = four(ledger, limits=(10_000, 1_000_000, 100_000, 50))
    res = reserve(ledger, buckets, 900)
    assert isinstance(res, Reservation)
    assert ledger.release(res.reservation_id).state == "released"
    assert [spent_reserved(ledger, b) for b in buckets] == [(0, 0)] * 4


def test_expiry_charges_each_unit_at_its_reservation(ledger: Ledger) -> None:
    import time

    buckets = four(ledger, limits=(10_000, 1_000_000, 100_000, 50))
    res = reserve(ledger, buckets, 900, lease=0.05)
    assert isinstance(res, Reservation)
    time.sleep(0.2)
    assert ledger.reap() == 1
    assert ledger.reservation_state(res.reservation_id) == "expired"
    assert [spent_reserved(ledger, b) for b in buckets] == [
        (900, 0), (PROMPT, 0), (OUTPUT, 0), (1, 0)]


def test_unreadable_usage_charges_tokens_at_the_reservation(ledger: Ledger) -> None:
    """The guard settles a call whose usage it could not read with Usage() at
    the reserved cost: the token counters then over-count, never under-count."""
    buckets = four(ledger, limits=(10_000, 1_000_000, 100_000, 50))
    res = reserve(ledger, buckets, 900)
    assert isinstance(res, Reservation)
    ledger.settle(res.reservation_id, 900, Usage())
    assert [spent_reserved(ledger, b) for b in buckets] == [
        (900, 0), (PROMPT, 0), (OUTPUT, 0), (1, 0)]


def test_calls_limit_is_all_or_nothing_with_the_dollars(ledger: Ledger) -> None:
    usd, calls = ubucket(ledger, "role:r", 10_000), ubucket(ledger, "role:r", 2, "calls")
    crew = ubucket(ledger, "crew:c", 10_000)
    for _ in range(2):
        assert isinstance(reserve(ledger, [usd, calls, crew], 100), Reservation)
    denied = reserve(ledger, [usd, calls, crew], 100)
    assert isinstance(denied, Denial)
    assert denied.state.bucket == calls
    assert (denied.state.spent_nano, denied.state.reserved_nano, denied.amount_nano) == (0, 2, 1)
    # Nothing of the refused call was charged anywhere.
    assert spent_reserved(ledger, usd) == (0, 200)
    assert spent_reserved(ledger, crew) == (0, 200)
    assert spent_reserved(ledger, calls) == (0, 2)
    blocked = [r for r in ledger.records() if r.outcome == "blocked"]
    assert [(r.scope, r.estimate_nano, r.cost_nano) for r in blocked] == [("role:r", 100, 0)]


def test_token_limit_is_inclusive_per_unit(ledger: Ledger) -> None:
    inp = ubucket(ledger, "role:r", 10_000, "input_tokens")
    out = ubucket(ledger, "role:r", 1_000, "output_tokens")
    assert isinstance(reserve(ledger, [inp, out], 1, prompt=6_000, output=400), Reservation)
    denied = reserve(ledger, [inp, out], 1, prompt=4_001, output=400)
    assert isinstance(denied, Denial)
    assert denied.state.bucket == inp
    assert denied.amount_nano == 4_001
    assert isinstance(reserve(ledger, [inp, out], 1, prompt=4_000, output=600), Reservation)
    assert spent_reserved(ledger, inp) == (0, 10_000)
    assert spent_reserved(ledger, out) == (0, 1_000)
    denied = reserve(ledger, [inp, out], 1, prompt=0, output=1)
    assert isinstance(denied, Denial)
    assert (denied.state.bucket, denied.amount_nano) == (out, 1)


def test_zero_token_limit_blocks_and_unlimited_unit_only_counts(ledger: Ledger) -> None:
    counting = ubucket(ledger, "role:r", None, "output_tokens")
    for _ in range(3):
        assert isinstance(reserve(ledger, [counting], 1), Reservation)
    assert spent_reserved(ledger, counting) == (0, 3 * OUTPUT)
    zero = ubucket(ledger, "role:z", 0, "calls")
    denied = reserve(ledger, [zero], 0, prompt=0, output=0)
    assert isinstance(denied, Denial)
    assert denied.amount_nano == 1


def test_retried_reserve_returns_the_unit_buckets(ledger: Ledger) -> None:
    buckets = four(ledger, limits=(10_000, 1_000_000, 100_000, 50))
    rid = new_reservation_id()
    first = reserve(ledger, buckets, 300, rid=rid)
    again = reserve(ledger, buckets, 300, rid=rid)
    assert isinstance(first, Reservation) and isinstance(again, Reservation)
    assert again.buckets == tuple(buckets)
    assert [spent_reserved(ledger, b) for b in buckets] == [
        (0, 300), (0, PROMPT), (0, OUTPUT), (0, 1)]


def test_settle_lands_each_unit_in_the_period_it_was_reserved_in(ledger: Ledger) -> None:
    old = ubucket(ledger, "role:r", 100, "calls", period="p-old")
    res = reserve(ledger, [old], 5)
    assert isinstance(res, Reservation)
    new = ubucket(ledger, "role:r", 100, "calls", period="p-new")
    ledger.settle(res.reservation_id, 5, Usage(input_tokens=10, output_tokens=3))
    assert spent_reserved(ledger, old) == (1, 0)
    assert spent_reserved(ledger, new) == (0, 0)


def test_charge_books_each_unit_of_a_journaled_call_once(ledger: Ledger) -> None:
    """A call fail_open let through is booked later from the local journal:
    its cost, the prompt and output tokens of its usage and one call, past
    any limit (they were spent), exactly once."""
    from crew_budget.ledger import SpendRecord

    buckets = four(ledger, limits=(500, 100, 10, 1))
    record = SpendRecord(ts=ledger.now(), reservation_id="j1", outcome="unguarded",
                         role="researcher", model="gpt-4o-mini", input_tokens=100,
                         cached_input_tokens=20, cache_write_tokens=5, output_tokens=40,
                         reasoning_tokens=0, cost_nano=700)
    assert ledger.charge("j1", buckets, 700, record) is True
    assert ledger.charge("j1", buckets, 700, record) is False
    assert [spent_reserved(ledger, b) for b in buckets] == [(700, 0), (125, 0), (40, 0), (1, 0)]
    assert [r.outcome for r in ledger.records()] == ["unguarded"]


# -- Redis: the units argument is validated before any write ------------------------


def test_reserve_script_refuses_a_bad_units_argument_before_its_first_write(
        redis_url: str) -> None:
    import json
    import time
    from importlib import resources

    import pytest
    import redis

    lua = resources.files("crew_budget.ledger") / "lua"
    script = (lua / "_common.lua").read_text() + "\n" + (lua / "reserve.lua").read_text()
    client = redis.Redis.from_url(redis_url)
    try:
        p = "cb:{units-argv}:"
        now = int(time.time())
        keys = [p + "leases", p + "records", p + "r:x1", p + "b:role:r|day|p|input_tokens"]
        meta = json.dumps([[keys[3], "role:r|day|p|input_tokens", 100, now - 60, now + 60,
                            now + 999, '"role:r"', "input_tokens"]])

        def argv(units: str) -> list[str]:
            return ["x1", '"x1"', "1000", "60000", "86400000",
                    '"role":"r","model":"m","crew":null,"estimate_nano":1000,"metadata":{}',
                    "1000", "100", meta, str(now - 60.0), str(now + 60.0),
                    str((now + 999) * 1000), "", "100", str(now + 999), '"role:r"', "", "",
                    units]

        cases = [
            ("x5", "CBINVALID a bucket unit must be"),
            ("5", "CBINVALID a bucket unit must be"),
            ("i1e9", "CBINVALID a bucket unit amount must be an integer"),
            ("i-5", "CBINVALID a bucket unit must be"),
            ("i9007199254740992", "CBINVALID a bucket unit amount must be an integer"),
            ("i5,c1", "CBINVALID the units must have one entry per bucket"),
            ("i5\n", "CBINVALID a bucket unit amount must be an integer"),
        ]
        for units, needle in cases:
            with pytest.raises(redis.ResponseError) as info:
                client.eval(script, 4, *keys, *argv(units))
            assert str(info.value).startswith(needle), (units, str(info.value))
            assert client.keys(p + "*") == []  # nothing written, not even a record
        # Over the limit: denied, and a blocked record is the only write.
        reply = client.eval(script, 4, *keys, *argv("i101"))
        assert reply == [b"deny", 1, b"0", b"0"]
        assert client.hgetall(keys[3]) == {}
        reply = client.eval(script, 4, *keys, *argv("i100"))
        assert reply[0] == b"ok"
        assert client.hgetall(keys[3]) == {b"reserved": b"100"}
        value = client.get(keys[2])
        assert value is not None and value.split(b"\n")[1] == b"#i100"
    finally:
        client.close()
