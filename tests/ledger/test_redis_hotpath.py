"""The Redis ledger's per-call fast path, against a real redis-server.

reserve/settle/release send pre-encoded ``EVALSHA`` on connections the
ledger keeps, and finish cuts the counter keys out of a reservation by their
byte spans instead of decoding its JSON (see ``lua/_common.lua``). Here:
keys that JSON escapes (the decode fallback), multi-byte keys (byte, not
character, offsets), values written by crew-budget 0.1.0 (no spans), kept
connections that the server closed, and a forked child.

Amounts are plain integers chosen here; the expected counters are their
sums and differences.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
from collections.abc import Iterator
from datetime import timezone
from pathlib import Path
from typing import Any

import pytest
import redis

from crew_budget.ledger import Bucket, RecordDraft, Reservation, ReserveRequest, new_reservation_id
from crew_budget.ledger.redis import RedisLedger
from crew_budget.usage import Usage
from crew_budget.windows import span
from tests.fixtures.redis_server import RedisServer

UTC = timezone.utc


def day_bucket(ledger: RedisLedger, scope: str, limit: int | None) -> Bucket:
    s = span("day", ledger.now(), UTC)
    return Bucket(scope, "day", s.period, limit, s.starts_at, s.ends_at)


def reserve(ledger: RedisLedger, buckets: list[Bucket], amount: int, lease: float = 600.0
            ) -> Reservation:
    draft = RecordDraft(role="researcher", model="test-model", estimate_nano=amount)
    res = ledger.reserve(ReserveRequest(new_reservation_id(), tuple(buckets), amount, lease, draft))
    assert isinstance(res, Reservation)
    return res


def counters(ledger: RedisLedger, buckets: list[Bucket]) -> list[tuple[int, int]]:
    return [(s.spent_nano, s.reserved_nano) for s in ledger.status(buckets)]


def stored(url: str, ledger: RedisLedger, rid: str) -> list[str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        value = client.get(ledger.prefix + "r:" + rid)
    finally:
        client.close()
    assert value is not None
    return value.split("\n", 7)


@pytest.mark.parametrize(
    ("scopes", "spans"),
    [
        # Every key verbatim in the JSON (multi-byte UTF-8 included): spans.
        (["role:researcher", "role:Forscherin Müller", "role:研究員", "global"], True),
        # A newline (a YAML folded `role: >` ends with one) and a quote are
        # escaped in JSON: no spans, finish decodes the JSON.
        (["role:Senior Researcher\n", 'role:the "analyst"', "global"], False),
    ],
)
def test_settle_moves_exactly_the_buckets_charged_whatever_their_keys(
    redis_url: str, scopes: list[str], spans: bool
) -> None:
    ledger = RedisLedger(redis_url, namespace="keys")
    buckets = [day_bucket(ledger, scope, 10_000) for scope in scopes]
    res = reserve(ledger, buckets, 1000)
    field = stored(redis_url, ledger, res.reservation_id)
    assert field[1].startswith("@") is spans
    # The JSON stays whole: what 0.1.0 clients decode (counter key first).
    assert [b[0] for b in json.loads(field[7])] == [ledger.prefix + "b:" + b.key for b in buckets]
    assert counters(ledger, buckets) == [(0, 1000)] * len(buckets)

    result = ledger.settle(res.reservation_id, 700, Usage(7, 0, 0, 0, 0))
    assert (result.state, result.applied, result.cost_nano) == ("settled", True, 700)
    assert counters(ledger, buckets) == [(700, 0)] * len(buckets)
    tomb = stored(redis_url, ledger, res.reservation_id)
    # The tombstone: final state and cost, expiry, amount, tombstone time and
    # id kept; record tail and buckets dropped (see TOMBSTONE in _common.lua).
    assert tomb[:2] == ["settled", "700"] and tomb[2:6] == field[2:6]
    assert tomb[6:] == ["", "[]"]

    # Release of a second reservation on the same buckets: back to 700 spent.
    res2 = reserve(ledger, buckets, 300)
    assert ledger.release(res2.reservation_id).state == "released"
    assert counters(ledger, buckets) == [(700, 0)] * len(buckets)
    ledger.close()


def as_0_1_0(url: str, ledger: RedisLedger, rid: str) -> None:
    """Rewrite a reservation as crew-budget 0.1.0 stored it: cost field "", no spans."""
    client = redis.Redis.from_url(url, decode_responses=True)
    key = ledger.prefix + "r:" + rid
    fields = client.get(key).split("\n", 7)  # type: ignore[union-attr]
    assert fields[0] == "reserved" and fields[1].startswith("@")
    fields[1] = ""
    client.set(key, "\n".join(fields), keepttl=True)
    client.close()


def test_reservations_written_by_0_1_0_settle_and_expire(redis_url: str) -> None:
    ledger = RedisLedger(redis_url, namespace="old")
    buckets = [day_bucket(ledger, "role:researcher", 10_000), day_bucket(ledger, "global", None)]
    settled = reserve(ledger, buckets, 1000)
    expiring = reserve(ledger, buckets, 400, lease=0.05)
    as_0_1_0(redis_url, ledger, settled.reservation_id)
    as_0_1_0(redis_url, ledger, expiring.reservation_id)
    assert counters(ledger, buckets) == [(0, 1400)] * 2

    assert ledger.settle(settled.reservation_id, 600, Usage(6, 0, 0, 0, 0)).applied is True
    time.sleep(0.1)
    assert ledger.reap() == 1  # charged at its reserved amount: 600 + 400
    assert counters(ledger, buckets) == [(1000, 0)] * 2
    outcomes = sorted((r.outcome, r.cost_nano) for r in ledger.records())
    assert outcomes == [("expired", 400), ("settled", 600)]
    ledger.close()


def test_kept_connections_the_server_closed_are_replaced_unnoticed(tmp_path: Path) -> None:
    # Redis closes connections idle for `timeout` seconds; the kept ones
    # must reconnect instead of failing the call.
    server = RedisServer(directory=tmp_path / "idle", extra_args=("--timeout", "1"))
    server.directory.mkdir()
    server.start()
    try:
        ledger = RedisLedger(server.url, namespace="idle")
        b = day_bucket(ledger, "role:researcher", 100_000)
        done: list[str] = []

        def work() -> None:  # several threads: several kept connections
            for _ in range(20):
                res = reserve(ledger, [b], 10)
                ledger.settle(res.reservation_id, 10, Usage(1, 0, 0, 0, 0))
            done.append("ok")

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert done == ["ok"] * 4
        time.sleep(2.5)  # every kept connection is closed by the server now
        for _ in range(6):
            res = reserve(ledger, [b], 10)
            assert ledger.settle(res.reservation_id, 10, Usage(1, 0, 0, 0, 0)).applied is True
        assert counters(ledger, [b]) == [(86 * 10, 0)]
        ledger.close()
    finally:
        server.stop()


def _child(url: str, bucket: Bucket, ledger: RedisLedger, out: Any) -> None:
    res = reserve(ledger, [bucket], 5)
    out.put(ledger.settle(res.reservation_id, 5, Usage(1, 0, 0, 0, 0)).applied)


@pytest.fixture
def fork() -> Iterator[Any]:
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("needs os.fork")
    yield mp.get_context("fork")


def test_a_forked_child_takes_its_own_connections(redis_url: str, fork: Any) -> None:
    ledger = RedisLedger(redis_url, namespace="fork")
    b = day_bucket(ledger, "role:researcher", 100_000)
    first = reserve(ledger, [b], 100)  # the parent now keeps a connection
    out = fork.Queue()
    children = [fork.Process(target=_child, args=(redis_url, b, ledger, out)) for _ in range(3)]
    for c in children:
        c.start()
    assert [out.get(timeout=30) for _ in children] == [True] * 3
    for c in children:
        c.join(timeout=30)
        assert c.exitcode == 0
    # The parent's kept connection was not shared: it still works.
    assert ledger.settle(first.reservation_id, 100, Usage(1, 0, 0, 0, 0)).applied is True
    assert counters(ledger, [b]) == [(115, 0)]
    ledger.close()


# -- the reply reader (RESP read straight from the socket) ----------------------

RESP_CASES = [
    # (bytes as Redis sends them, what redis-py's parser returns with
    # decode_responses=True); shapes from the Redis protocol spec.
    (b"*2\r\n$2\r\nok\r\n$13\r\n1764000000123\r\n", ["ok", "1764000000123"]),
    (b"*3\r\n$7\r\nsettled\r\n:1\r\n$3\r\n900\r\n", ["settled", 1, "900"]),
    (b"*1\r\n$7\r\nunknown\r\n", ["unknown"]),
    (b"*4\r\n$4\r\ndeny\r\n:2\r\n$1\r\n0\r\n$0\r\n\r\n", ["deny", 2, "0", ""]),
    (b"*2\r\n$3\r\ndup\r\n$9\r\nr\xc3\xa9serv\xc3\xa9\r\n", ["dup", "réservé"]),  # UTF-8
    (b"*2\r\n$-1\r\n_\r\n", [None, None]),  # RESP2 and RESP3 nil
    (b":-7\r\n", -7),
    (b"+OK\r\n", "OK"),
]


@pytest.mark.parametrize(("wire", "value"), RESP_CASES)
def test_reply_parser_reads_every_shape_and_waits_for_the_whole_reply(
    wire: bytes, value: Any
) -> None:
    from crew_budget.ledger.redis import _Incomplete, _parse

    assert _parse(wire, 0) == (value, len(wire))
    for cut in range(len(wire)):  # any prefix is incomplete, never a wrong value
        with pytest.raises(_Incomplete):
            _parse(wire[:cut], 0)


def test_reply_reader_matches_redis_py_on_real_replies_and_errors(redis_url: str) -> None:
    """Every reply shape our scripts return, read by ours and by redis-py."""
    from crew_budget.ledger.redis import _read_reply

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.set("cb:plain", "x")
    scripts = [
        "return {'ok', '1764000000123'}",
        "return {'settled', 1, '900'}",
        "return {'dup', ARGV[1]}",
        "return {'deny', 2, false, ''}",
        "return redis.call('GET', 'cb:plain')",
        "return 42",
    ]
    long_value = "é" * 40_000  # 80 kB: more than one recv
    for source in scripts:
        sha = client.script_load(source)
        conn: Any = client.connection_pool.get_connection()
        try:
            for reader in (_read_reply, lambda c: c.read_response()):
                conn.send_command("EVALSHA", sha, 0, long_value)
                ours = reader(conn)
                conn.send_command("EVALSHA", sha, 0, long_value)
                assert ours == conn.read_response()
        finally:
            client.connection_pool.release(conn)
    conn2: Any = client.connection_pool.get_connection()
    conn = conn2
    try:
        conn.send_command("EVALSHA", "0" * 40, 0)
        with pytest.raises(redis.exceptions.NoScriptError):
            _read_reply(conn)
        conn.send_command("EVAL", "return redis.call('HGET', 'cb:plain', 'f')", 0)
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            _read_reply(conn)
        conn.send_command("PING")  # the connection is still in step after both
        assert _read_reply(conn) == "PONG"
    finally:
        client.connection_pool.release(conn)
    client.close()


def test_settle_leaves_other_leases_to_reserve_which_still_reaps_them(redis_url: str) -> None:
    """Settle no longer reaps (it is on every call's path); reserve still does."""
    ledger = RedisLedger(redis_url, namespace="reaping")
    buckets = [day_bucket(ledger, "role:researcher", 10_000)]
    running = reserve(ledger, buckets, 1000)
    lapsed = reserve(ledger, buckets, 400, lease=0.05)
    time.sleep(0.1)
    assert ledger.settle(running.reservation_id, 700, Usage(7, 0, 0, 0, 0)).applied is True
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    # The lapsed lease is still "reserved" after the settle: 700 spent + its 400.
    lapsed_key = ledger.prefix + "r:" + lapsed.reservation_id
    assert str(client.get(lapsed_key)).startswith("reserved\n")
    third = reserve(ledger, buckets, 100)  # reserve reaps it first: charged 400 (its amount)
    assert str(client.get(lapsed_key)).startswith("expired\n400\n")
    assert counters(ledger, buckets) == [(700 + 400, 100)]
    # ... and its own late settle is refused as expired, charging nothing more.
    late = ledger.settle(lapsed.reservation_id, 50, Usage(1, 0, 0, 0, 0))
    assert (late.state, late.applied, late.cost_nano) == ("expired", False, 400)
    assert ledger.settle(third.reservation_id, 100, Usage(1, 0, 0, 0, 0)).applied is True
    outcomes = [r.outcome for r in ledger.records()]
    assert sorted(outcomes) == ["expired", "settled", "settled"]
    client.close()
    ledger.close()


def test_reply_reader_leaves_parsers_without_a_python_buffer_to_redis_py(redis_url: str) -> None:
    """E.g. hiredis keeps its own buffer (no ``unread_bytes``): redis-py reads the reply."""
    from crew_budget.ledger.redis import _read_reply

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    conn: Any = client.connection_pool.get_connection()
    real_read, real_buffer = conn.read_response, conn._parser._buffer
    calls: list[int] = []

    def read_response() -> Any:
        calls.append(1)
        conn._parser._buffer = real_buffer  # so redis-py can read
        return real_read()

    conn.read_response = read_response
    try:
        conn.send_command("PING")
        assert _read_reply(conn) == "PONG" and calls == []  # ours
        conn._parser._buffer = bytearray(16)  # what the hiredis parser holds
        conn.send_command("ECHO", "x")
        assert _read_reply(conn) == "x" and calls == [1]  # redis-py's
    finally:
        conn._parser._buffer = real_buffer
        client.connection_pool.release(conn)
        client.close()


@pytest.mark.parametrize("namespace", ["fast", "Etat-Général"])
def test_the_fast_frames_are_byte_for_byte_the_generic_request(
    redis_url: str, namespace: str
) -> None:
    """reserve/settle build their request from bytes encoded once per set of
    buckets; it must be exactly what the generic encoder makes of the same
    arguments (multi-byte namespace, metadata and lease changes included)."""
    from crew_budget.ledger import redis as lr

    ledger = RedisLedger(redis_url, namespace=namespace)
    buckets = [day_bucket(ledger, "role:研究員", 10_000), day_bucket(ledger, "global", None)]
    sent: list[bytes] = []
    original = lr._Wire.call

    def spy(self: Any, frame: bytes, script: Any, fresh: bool) -> Any:
        sent.append(frame)
        return original(self, frame, script, fresh)

    with pytest.MonkeyPatch.context() as mp_:
        mp_.setattr(lr._Wire, "call", spy)
        for lease, meta in ((600.0, {}), (5.5, {"task": "Zusammenfassung ü", "n": 3})):
            draft = RecordDraft(role="researcher", model="test-model", crew="crew é",
                                estimate_nano=1234, metadata=meta)
            rid = new_reservation_id()
            seen = ledger.epoch  # "" on the first reserve, then the epoch it adopted
            res = ledger.reserve(ReserveRequest(rid, tuple(buckets), 1234, lease, draft))
            assert isinstance(res, Reservation)
            ledger.settle(rid, 1000, Usage(1, 2, 3, 4, 0))
            plan = ledger._plans[tuple(buckets)]
            lease_ms = int(lease * 1000)
            expected_reserve = lr._frame(ledger._heads["reserve"], [
                str(3 + len(buckets)), ledger._lsr, ledger.prefix + "r:" + rid, plan.fixed_keys,
                rid, f'"{rid}"', "1234", str(lease_ms), str(lease_ms + lr._DAY_MS),
                lr._tail("researcher", "test-model", "crew é", 1234, meta), plan.fixed_args,
                seen])
            fragment = ('"input_tokens":1,"cached_input_tokens":2,"cache_write_tokens":3,'
                        '"output_tokens":4,"reasoning_tokens":0')
            expected_settle = lr._frame(ledger._heads["settle"], [
                "3", ledger._lsr, ledger.prefix + "r:" + rid, rid, "1000", fragment,
                str(ledger.retention_ms)])
            assert sent[-2:] == [expected_reserve, expected_settle]
    assert counters(ledger, buckets) == [(2000, 0), (2000, 0)]
    ledger.close()
