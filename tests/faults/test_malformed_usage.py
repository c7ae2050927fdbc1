"""Bad values never corrupt the books (issue 9, item 3).

A usage that cannot be trusted is charged at its reservation (never $0,
never the absurd amount), logged, counted in ``guard.counters``, and the
settle returns normally; on every ledger backend. Bad amounts handed to a
ledger are refused before anything is written, by the client and again by
each Redis script; and a Redis counter that still holds ``spent`` is never
deleted when its ``reserved`` would go negative.

Prices are configured in the test ("m": $1 per million input tokens, $10
per million output tokens), so each reservation is known to the nano-dollar
from the ticket the guard returns.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import redis

from crew_budget import Guard
from crew_budget.errors import AmountError, BudgetExceeded, UsageError
from crew_budget.ledger import (
    Bucket,
    Ledger,
    RecordDraft,
    Reservation,
    ReserveRequest,
    new_reservation_id,
    open_ledger,
)
from crew_budget.ledger.redis import RedisLedger
from crew_budget.money import MAX_NANO, to_nano
from crew_budget.usage import Usage, parse_usage

BACKENDS = ["memory", "sqlite", "redis"]
PRICES = {"m": {"input_per_million": 1, "output_per_million": 10}}
MSG = [{"role": "user", "content": "hello there"}]


def _url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture(params=BACKENDS)
def guard(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Guard]:
    g = Guard({"roles": {"r": {"daily": 10}}, "prices": PRICES},
              _url(request.param, request, tmp_path))
    yield g
    g.close()


@pytest.fixture(params=BACKENDS)
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    led = open_ledger(_url(request.param, request, tmp_path))
    yield led
    led.close()


# -- the table: malformed usages and what each must say --------------------------


class _Dumps:
    """An SDK-like object whose model_dump fails."""

    def model_dump(self) -> dict[str, Any]:
        raise ValueError("validator exploded")


def _self_nested() -> dict[str, Any]:
    d: dict[str, Any] = {}
    d["usage"] = d
    return d


MALFORMED: list[tuple[str, Any, str]] = [
    ("negative", {"prompt_tokens": -5, "completion_tokens": 3}, "non-negative whole number"),
    ("nan", {"prompt_tokens": math.nan, "completion_tokens": 3}, "not a finite token count"),
    ("inf", {"prompt_tokens": 10, "completion_tokens": math.inf}, "not a finite token count"),
    ("minus-inf", {"input_tokens": -math.inf, "output_tokens": 1}, "not a finite token count"),
    ("bool", {"prompt_tokens": True, "completion_tokens": 3}, "is True, not a token count"),
    ("digit-string", {"prompt_tokens": "12", "completion_tokens": 3}, "not a token count"),
    ("word-string", {"input_tokens": 4, "output_tokens": "lots"}, "not a token count"),
    ("huge-int-prompt", {"prompt_tokens": 10**30, "completion_tokens": 3},
     "more than the 1,000,000,000 tokens one call can report"),
    ("huge-int-output", {"prompt_tokens": 10, "completion_tokens": 10**30},
     "more than the 1,000,000,000 tokens one call can report"),
    ("huge-float", {"input_tokens": 1e30, "output_tokens": 1},
     "more than the 1,000,000,000 tokens one call can report"),
    ("fraction", {"prompt_tokens": 10.5, "completion_tokens": 1}, "non-negative whole number"),
    ("no-completion", {"prompt_tokens": 10}, "no completion_tokens"),
    ("no-output", {"input_tokens": 10}, "no output_tokens"),
    ("only-completion", {"completion_tokens": 5}, "no token counts in usage"),
    ("empty", {}, "no token counts in usage"),
    ("none", None, "has no usage"),
    ("a-string", "garbage", "has no usage"),
    ("a-list", [1, 2, 3], "has no usage"),
    ("an-int", 42, "has no usage"),
    ("nested-dict-count", {"prompt_tokens": {"n": 1}, "completion_tokens": 3},
     "not a token count"),
    ("list-count", {"prompt_tokens": [1], "completion_tokens": 3}, "not a token count"),
    ("negative-detail", {"prompt_tokens": 10, "completion_tokens": 3,
                         "prompt_tokens_details": {"cached_tokens": -1}},
     "non-negative whole number"),
    ("reasoning-gt-output", {"prompt_tokens": 10, "completion_tokens": 5,
                             "completion_tokens_details": {"reasoning_tokens": 9}},
     "reports 9 reasoning tokens but only 5 output tokens"),
    ("gemini-negative", {"promptTokenCount": 10, "candidatesTokenCount": -1},
     "non-negative whole number"),
    ("deep-wrappers", {"usage": {"usage": {"usage": {"usage": {"usage": {"prompt_tokens": 1}}}}}},
     "nested more than 4 levels deep"),
    ("self-nested", _self_nested(), "nested more than 4 levels deep"),
    ("model-dump-raises", _Dumps(), "cannot read token usage from _Dumps (ValueError"),
    ("usage-negative", Usage(input_tokens=-3, output_tokens=1), "non-negative whole number"),
    ("usage-huge", Usage(output_tokens=10**12), "more than the 1,000,000,000 tokens"),
    ("usage-float", Usage(input_tokens=1.5, output_tokens=1),  # type: ignore[arg-type]
     "non-negative whole number"),
    ("converse-no-output", {"inputTokens": 10, "cacheReadInputTokens": 5},
     "usage has inputTokens but no outputTokens"),
    ("converse-negative-cache-write", {"inputTokens": 10, "outputTokens": 2,
                                       "cacheWriteInputTokens": -4},
     "non-negative whole number"),
    ("gemini-tool-use-string", {"promptTokenCount": 10, "candidatesTokenCount": 1,
                                "toolUsePromptTokenCount": "500"}, "not a token count"),
    ("converse-cache-detail-nan", {"inputTokens": 10, "outputTokens": 2,
                                   "cacheWriteInputTokens": 4,
                                   "cacheDetails": [{"ttl": "1h", "inputTokens": math.nan}]},
     "not a finite token count"),
]


def test_the_table_is_at_least_twenty_cases() -> None:
    assert len(MALFORMED) == 34


@pytest.mark.parametrize(("raw", "needle"), [(r, n) for _, r, n in MALFORMED],
                         ids=[i for i, _, _ in MALFORMED])
def test_parse_usage_raises_only_usage_error(raw: Any, needle: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_usage(raw)
    assert needle in str(info.value)


@pytest.mark.parametrize(("raw", "needle"), [(r, n) for _, r, n in MALFORMED],
                         ids=[i for i, _, _ in MALFORMED])
def test_malformed_usage_is_charged_at_the_reservation_and_counted(
    guard: Guard, raw: Any, needle: str, caplog: pytest.LogCaptureFixture
) -> None:
    ticket = guard.preflight("r", "m", MSG, max_tokens=200)
    reserved = to_nano(ticket.estimate)
    assert reserved >= 2000  # 200 output tokens x $10/M = $0.002, plus the prompt
    with caplog.at_level(logging.ERROR, logger="crew_budget"):
        s = guard.settle(ticket, raw)
    assert (s.state, s.applied, s.usage) == ("settled", True, None)
    assert to_nano(s.cost) == reserved  # the reservation, exactly: never $0, never absurd
    assert guard.counters == {"usage_errors": 1, "overruns": 0, "dropped_settles": 0}
    (st,) = guard.status("r")
    assert (to_nano(st.spent), st.reserved) == (reserved, Decimal(0))
    (rec,) = [r for r in guard.ledger.records() if r.outcome == "settled"]
    assert (rec.cost_nano, rec.input_tokens, rec.output_tokens) == (reserved, 0, 0)
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert needle in line
    assert f"charged at the reservation, ${ticket.estimate}" in line
    # A repeat changes nothing and counts nothing more.
    again = guard.settle(ticket, raw)
    assert (again.applied, to_nano(again.cost)) == (False, reserved)
    assert to_nano(guard.status("r")[0].spent) == reserved


def test_a_usage_priced_above_the_bound_is_charged_at_the_reservation(guard: Guard) -> None:
    # Valid counts at an absurd configured price: 10^9 output tokens at
    # $0.10 per token is $10^8, beyond 2^53 nano-USD (~ $9.0M).
    guard.config = guard.config.model_copy(update={"prices": {**guard.config.prices, **{
        "pricey": guard.config.prices["m"].model_copy(
            update={"output_per_million": Decimal(10**5)})}}})
    guard.prices = type(guard.prices)(guard.config.prices)
    ticket = guard.preflight("r", "pricey", MSG, max_tokens=1)
    assert ticket.estimate == Decimal("0.1") + Decimal(ticket.prompt_tokens) / 10**6
    s = guard.settle(ticket, {"prompt_tokens": 1, "completion_tokens": 10**9})
    assert s.cost == ticket.estimate
    assert guard.counters["usage_errors"] == 1
    assert guard.status("r")[0].spent == ticket.estimate


# -- ledgers refuse bad amounts before writing anything -------------------------------


def _bucket(led: Ledger, limit: int | None = 10**9) -> Bucket:
    now = led.now()
    return Bucket("role:r", "day", "p1", limit, now - 3600, now + 3600)


def _reserve(led: Ledger, b: Bucket, amount: Any, lease: float = 600.0) -> Any:
    draft = RecordDraft(role="r", model="m", estimate_nano=0)
    return led.reserve(ReserveRequest(new_reservation_id(), (b,), amount, lease, draft))


BAD_AMOUNTS: list[tuple[Any, str]] = [
    (-1, "outside the range a ledger accepts"),
    (MAX_NANO, "outside the range a ledger accepts"),
    (2**63, "outside the range a ledger accepts"),
    (10**30, "outside the range a ledger accepts"),
    (1.5, "(float) is not an integer of nano-USD"),
    (True, "(bool) is not an integer of nano-USD"),
    ("5", "(str) is not an integer of nano-USD"),
    (Decimal(5), "(Decimal) is not an integer of nano-USD"),
]


@pytest.mark.parametrize(("amount", "needle"), BAD_AMOUNTS,
                         ids=["neg", "2^53", "2^63", "1e30", "float", "bool", "str", "decimal"])
def test_bad_amounts_are_refused_before_any_write(ledger: Ledger, amount: Any,
                                                  needle: str) -> None:
    b = _bucket(ledger)
    good = _reserve(ledger, b, 1000)
    assert isinstance(good, Reservation)
    with pytest.raises(AmountError) as info:
        _reserve(ledger, b, amount)
    assert needle in str(info.value) and "nothing was written" in str(info.value)
    with pytest.raises(AmountError) as info:
        ledger.settle(good.reservation_id, amount, Usage(1, 0, 0, 1, 0))
    assert needle in str(info.value)
    (st,) = ledger.status([b])
    assert (st.spent_nano, st.reserved_nano) == (0, 1000)
    assert ledger.reservation_state(good.reservation_id) == "reserved"
    assert [r.outcome for r in ledger.records()] == []
    # The largest amount accepted is 2^53 - 1, exactly.
    assert ledger.settle(good.reservation_id, MAX_NANO - 1, Usage()).cost_nano == MAX_NANO - 1
    assert ledger.status([b])[0].spent_nano == MAX_NANO - 1


def test_ledger_settle_refuses_a_bad_usage_before_any_write(ledger: Ledger) -> None:
    b = _bucket(ledger)
    res = _reserve(ledger, b, 1000)
    with pytest.raises(UsageError, match="more than the 1,000,000,000 tokens"):
        ledger.settle(res.reservation_id, 5, Usage(input_tokens=10**30))
    with pytest.raises(UsageError, match="reports 3 reasoning tokens but only 1 output"):
        ledger.settle(res.reservation_id, 5, Usage(output_tokens=1, reasoning_tokens=3))
    assert ledger.reservation_state(res.reservation_id) == "reserved"
    assert ledger.status([b])[0].reserved_nano == 1000


# -- Redis: the "spent erased" bug, and each script's validation ----------------------


def _lua(name: str) -> str:
    lua = resources.files("crew_budget.ledger") / "lua"
    return (lua / "_common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


def _counter(client: redis.Redis, led: RedisLedger, b: Bucket) -> dict[bytes, bytes]:
    return client.hgetall(led.prefix + "b:" + b.key)  # type: ignore[return-value]


def test_absurd_usage_then_lease_expiry_keeps_spent_and_grants_nothing_extra(
    redis_url: str,
) -> None:
    """Issue 9 item 3, measured before the fix: the absurd usage overflowed
    inside the settle script, which stopped half way; at lease expiry
    ``reserved`` went negative, the counter was deleted, spent became $0 and
    90 more calls were granted."""
    guard = Guard({"roles": {"r": {"daily": "0.05"}}, "prices": PRICES, "lease_seconds": 1},
                  redis_url)
    try:
        first = guard.preflight("r", "m", MSG, max_tokens=1000)
        # A normal call: 100 prompt + 400 output tokens = $0.0001 + $0.004.
        ok = guard.settle(first, {"prompt_tokens": 100, "completion_tokens": 400})
        assert ok.cost == Decimal("0.0041")
        bad = guard.preflight("r", "m", MSG, max_tokens=1000)
        r = to_nano(bad.estimate)
        assert r == 10_000_000 + bad.prompt_tokens * 1000  # $0.01 output + $1/M prompt
        s = guard.settle(bad, {"prompt_tokens": 10**30, "completion_tokens": 2**70})
        assert (s.state, to_nano(s.cost)) == ("settled", r)
        # A second ticket left to expire after an absurd settle that never got through.
        leaked = guard.preflight("r", "m", MSG, max_tokens=1000)
        assert to_nano(leaked.estimate) == r
        with pytest.raises(AmountError):
            guard.ledger.settle(leaked.reservation_id, 2**63 - 1, Usage(1, 0, 0, 1, 0))
        time.sleep(1.2)
        assert guard.ledger.reap() == 1
        spent = 4_100_000 + r + r  # settled + absurd (at its reservation) + expired
        (st,) = guard.status("r")
        assert (to_nano(st.spent), st.reserved) == (spent, Decimal(0))
        granted = 0
        with pytest.raises(BudgetExceeded):
            for _ in range(100):
                guard.preflight("r", "m", MSG, max_tokens=1000)
                granted += 1
        assert granted == (50_000_000 - spent) // r == 2  # not 90
    finally:
        guard.close()


def test_settle_script_refuses_bad_arguments_before_its_first_write(redis_url: str) -> None:
    led = open_ledger(redis_url)
    assert isinstance(led, RedisLedger)
    client = redis.Redis.from_url(redis_url)
    try:
        b = _bucket(led)
        done = _reserve(led, b, 700)
        led.settle(done.reservation_id, 300, Usage(1, 0, 0, 1, 0))  # spent 300
        res = _reserve(led, b, 1000)
        p = led.prefix
        keys = [p + "leases", p + "records", p + "r:" + res.reservation_id]
        usage = ('"input_tokens":1,"cached_input_tokens":0,"cache_write_tokens":0,'
                 '"output_tokens":1,"reasoning_tokens":0')
        before = _counter(client, led, b)
        assert before == {b"spent": b"300", b"reserved": b"1000"}
        stream_len = client.xlen(led.prefix + "records")
        cases = [
            (str(2**63), usage, "the settled cost (nano-USD) must be an integer"),
            (str(MAX_NANO), usage, "the settled cost (nano-USD) must be an integer"),
            ("-5", usage, "the settled cost (nano-USD) must be an integer"),
            ("1e9", usage, "the settled cost (nano-USD) must be an integer"),
            ("nan", usage, "the settled cost (nano-USD) must be an integer"),
            ("5", usage.replace(":1,", ":99999999999,", 1), "JSON fields of at most 10 digits"),
            ("5", usage + ',"x":1', "must be the five usage counts"),
            ("5", '"input_tokens":-1' + usage[16:], "must be the five usage counts"),
        ]
        for cost, frag, needle in cases:
            with pytest.raises(redis.ResponseError) as info:
                client.eval(_lua("settle"), 3, *keys, res.reservation_id, cost, frag, "1000")
            assert str(info.value).startswith("CBINVALID ") and needle in str(info.value)
            assert _counter(client, led, b) == before
            assert client.xlen(led.prefix + "records") == stream_len
            assert led.reservation_state(res.reservation_id) == "reserved"
        with pytest.raises(redis.ResponseError, match="CBINVALID the reap limit"):
            client.eval(_lua("release"), 3, *keys, res.reservation_id, "1000", "-1")
        with pytest.raises(redis.ResponseError, match="CBINVALID the retention"):
            client.eval(_lua("reap"), 2, *keys[:2], "soon", "10")
        with pytest.raises(redis.ResponseError, match="CBINVALID the record must be"):
            client.eval(_lua("append_record"), 3, led.prefix + "records", led.prefix + "odd",
                        led.prefix + "oddseq", "1.0", "not json", "1000", "1000")
        assert _counter(client, led, b) == before
        assert led.settle(res.reservation_id, 250, Usage(1, 0, 0, 1, 0)).cost_nano == 250
        assert _counter(client, led, b) == {b"spent": b"550", b"reserved": b"0"}
    finally:
        client.close()
        led.close()


def test_reserve_script_refuses_bad_arguments_before_its_first_write(redis_url: str) -> None:
    """Each of these once got past ``tonumber`` and failed in a Redis command
    after the counters had been charged (``EXPIREAT 1e9``, ``HINCRBY 0x10``),
    or would have broken the reservation's framing (a newline)."""
    client = redis.Redis.from_url(redis_url)
    try:
        p = "cb:{t}:"
        now = int(time.time())
        keys = [p + "leases", p + "records", p + "r:x1", p + "b:role:r|day|p"]
        meta = json.dumps([[keys[3], "role:r|day|p", 10**9, now - 60, now + 60, now + 999,
                            '"role:r"']])

        def argv(**bad: str) -> list[str]:
            args = {"rid": "x1", "amount": "1000", "expiry": str(now + 999), "scope": '"role:r"',
                    "limit": str(10**9)}
            args.update(bad)
            return [args["rid"], '"x1"', args["amount"], "60000", "86400000",
                    '"role":"r","model":"m","crew":null,"estimate_nano":1000,"metadata":{}',
                    "1000", "100", meta, str(now - 60.0), str(now + 60.0), str((now + 999) * 1000),
                    "", args["limit"], args["expiry"], args["scope"]]

        cases = [
            ({"expiry": "1e9"}, "a counter expiry (s) must be an integer"),
            ({"amount": "0x10"}, "the reservation amount (nano-USD) must be an integer"),
            ({"amount": str(MAX_NANO)}, "the reservation amount (nano-USD) must be an integer"),
            ({"limit": "-5"}, "a bucket limit (nano-USD) must be a whole number"),
            ({"limit": "nan"}, "a bucket limit (nano-USD) must be a whole number"),
            ({"scope": '"role:r\n"'}, "a bucket scope must be one line of JSON"),
            ({"rid": "x\ny"}, "the reservation id must be one line of JSON"),
        ]
        for bad, needle in cases:
            with pytest.raises(redis.ResponseError) as info:
                client.eval(_lua("reserve"), 4, *keys, *argv(**bad))
            assert str(info.value).startswith("CBINVALID ") and needle in str(info.value)
            assert client.keys(p + "*") == []  # nothing written, not even a record
        assert client.eval(_lua("reserve"), 4, *keys, *argv())[0] == b"ok"
        assert client.hgetall(keys[3]) == {b"reserved": b"1000"}
    finally:
        client.close()


def test_scripts_refuse_what_a_client_without_checks_sends(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the client's own check switched off, the bad amount reaches the
    reserve and settle scripts: they refuse it before writing, and the ledger
    raises AmountError."""
    led = open_ledger(redis_url)
    assert isinstance(led, RedisLedger)
    client = redis.Redis.from_url(redis_url)
    try:
        b = _bucket(led)
        res = _reserve(led, b, 1000)
        monkeypatch.setattr("crew_budget.ledger.redis.check_nano", lambda what, value: value)
        with pytest.raises(AmountError) as info:
            _reserve(led, b, 2**60)
        assert "refused a bad value before writing anything: the reservation amount " \
               "(nano-USD) must be an integer from 0 to 9007199254740991" in str(info.value)
        with pytest.raises(AmountError) as info:
            led.settle(res.reservation_id, -7, Usage(1, 0, 0, 1, 0))
        assert 'the settled cost (nano-USD) must be an integer from 0 to 9007199254740991, ' \
               'got "-7"' in str(info.value)
        assert _counter(client, led, b) == {b"reserved": b"1000"}
        assert led.reservation_state(res.reservation_id) == "reserved"
        assert [r.outcome for r in led.records()] == []
    finally:
        client.close()
        led.close()


def test_finish_never_deletes_a_counter_that_holds_spent(redis_url: str) -> None:
    """``reserved`` already wrong (as a half-applied settle of an older
    version left it): ending a reservation must clamp it, keep ``spent``."""
    led = open_ledger(redis_url)
    assert isinstance(led, RedisLedger)
    client = redis.Redis.from_url(redis_url)
    try:
        b = _bucket(led)
        done = _reserve(led, b, 5000)
        led.settle(done.reservation_id, 4321, Usage(1, 0, 0, 1, 0))
        res = _reserve(led, b, 1000, lease=0.2)
        client.hset(led.prefix + "b:" + b.key, "reserved", "0")  # the corruption
        time.sleep(0.3)
        assert led.reap() == 1  # expired: reserved 0 - 1000 < 0
        assert _counter(client, led, b) == {b"spent": b"5321", b"reserved": b"0"}
        assert client.pttl(led.prefix + "b:" + b.key) > 0  # still the same counter
        assert led.reservation_state(res.reservation_id) == "expired"
    finally:
        client.close()
        led.close()


def test_an_expired_counter_is_still_not_recreated(redis_url: str) -> None:
    """The other reason ``reserved`` goes negative (the counter expired and
    HINCRBY recreated it) still deletes the recreated hash."""
    led = open_ledger(redis_url)
    assert isinstance(led, RedisLedger)
    client = redis.Redis.from_url(redis_url)
    try:
        b = _bucket(led)
        res = _reserve(led, b, 1000)
        client.delete(led.prefix + "b:" + b.key)  # as if its retention ran out
        assert led.settle(res.reservation_id, 900, Usage(1, 0, 0, 1, 0)).cost_nano == 900
        assert client.exists(led.prefix + "b:" + b.key) == 0
    finally:
        client.close()
        led.close()


def test_amount_error_is_ours_and_a_value_error() -> None:
    from crew_budget.errors import CrewBudgetError, LedgerError

    assert issubclass(AmountError, CrewBudgetError) and issubclass(AmountError, ValueError)
    assert not issubclass(AmountError, LedgerError)  # a bad input, not a ledger failure
    assert issubclass(UsageError, CrewBudgetError) and issubclass(UsageError, ValueError)
