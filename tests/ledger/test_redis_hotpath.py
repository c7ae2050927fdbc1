"""The Redis ledger's per-call path, against a real redis-server.

reserve/settle/release are redis-py ``Script`` calls on a plain client, run
here with both of redis-py's reply parsers (hiredis and pure Python, see
``tests/ledger/_parsers.py``). finish cuts the counter keys out of a
reservation by their byte spans instead of decoding its JSON (see
``lua/_common.lua``). Here: keys that JSON escapes (the decode fallback),
multi-byte keys (byte, not character, offsets), values written by
crew-budget 0.1.0 (no spans), pooled connections that the server closed,
a forked child, and the same calls through redis-py's generic EVALSHA.

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
from crew_budget.ledger.redis import RedisLedger, _library
from crew_budget.usage import Usage
from crew_budget.windows import span
from tests.fixtures.redis_server import RedisServer
from tests.ledger._parsers import PARSERS, redis_ledger, used_parser

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
@pytest.mark.parametrize("parser", PARSERS)
def test_settle_moves_exactly_the_buckets_charged_whatever_their_keys(
    redis_url: str, scopes: list[str], spans: bool, parser: str
) -> None:
    ledger = redis_ledger(redis_url, parser, namespace="keys")
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
    # The key is gone; its TOMBSTONE (see _common.lua) answers a repeat.
    assert ledger.reservation_state(res.reservation_id) == "settled"
    again = ledger.settle(res.reservation_id, 999, Usage(9, 0, 0, 0, 0))
    assert (again.state, again.applied, again.cost_nano) == ("settled", False, 700)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.exists(ledger.prefix + "r:" + res.reservation_id) == 0
    client.close()

    # Release of a second reservation on the same buckets: back to 700 spent.
    res2 = reserve(ledger, buckets, 300)
    assert ledger.release(res2.reservation_id).state == "released"
    assert counters(ledger, buckets) == [(700, 0)] * len(buckets)
    assert used_parser(ledger) == parser
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


@pytest.mark.parametrize("parser", PARSERS)
def test_pooled_connections_the_server_closed_are_replaced_unnoticed(
    tmp_path: Path, parser: str
) -> None:
    # Redis closes connections idle for `timeout` seconds; the pooled ones
    # must reconnect instead of failing the call.
    server = RedisServer(directory=tmp_path / "idle", extra_args=("--timeout", "1"))
    server.directory.mkdir()
    server.start()
    try:
        ledger = redis_ledger(server.url, parser, namespace="idle")
        b = day_bucket(ledger, "role:researcher", 100_000)
        done: list[str] = []

        def work() -> None:  # several threads: several pooled connections
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
        time.sleep(2.5)  # every pooled connection is closed by the server now
        for _ in range(6):
            res = reserve(ledger, [b], 10)
            assert ledger.settle(res.reservation_id, 10, Usage(1, 0, 0, 0, 0)).applied is True
        assert counters(ledger, [b]) == [(86 * 10, 0)]
        assert used_parser(ledger) == parser
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


@pytest.mark.parametrize("parser", PARSERS)
def test_a_forked_child_takes_its_own_connections(redis_url: str, fork: Any, parser: str
                                                  ) -> None:
    """redis-py's pool sees the child's new pid and opens new connections:
    parent and children never share a socket (replies would cross)."""
    ledger = redis_ledger(redis_url, parser, namespace="fork")
    b = day_bucket(ledger, "role:researcher", 100_000)
    first = reserve(ledger, [b], 100)  # the parent now has a pooled connection
    out = fork.Queue()
    children = [fork.Process(target=_child, args=(redis_url, b, ledger, out)) for _ in range(3)]
    for c in children:
        c.start()
    assert [out.get(timeout=30) for _ in children] == [True] * 3
    for c in children:
        c.join(timeout=30)
        assert c.exitcode == 0
    # The parent's pooled connection was not shared: it still works.
    assert ledger.settle(first.reservation_id, 100, Usage(1, 0, 0, 0, 0)).applied is True
    assert counters(ledger, [b]) == [(115, 0)]
    ledger.close()


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
    assert client.get(lapsed_key) is None  # ended: only its tombstone is left
    assert ledger.reservation_state(lapsed.reservation_id) == "expired"
    assert counters(ledger, buckets) == [(700 + 400, 100)]
    # ... and its own late settle is refused as expired, charging nothing more.
    late = ledger.settle(lapsed.reservation_id, 50, Usage(1, 0, 0, 0, 0))
    assert (late.state, late.applied, late.cost_nano) == ("expired", False, 400)
    assert ledger.settle(third.reservation_id, 100, Usage(1, 0, 0, 0, 0)).applied is True
    outcomes = [r.outcome for r in ledger.records()]
    assert sorted(outcomes) == ["expired", "settled", "settled"]
    client.close()
    ledger.close()


@pytest.mark.parametrize("how", ["fcall", "evalsha"])
def test_the_calls_are_what_redis_py_sends_for_the_same_evalsha(redis_url: str, how: str
                                                                 ) -> None:
    """The ledger's reserve and settle are the scripts' FCALL (the function
    library, Redis >= 7) or EVALSHA with the arguments documented in
    lua/reserve.lua and lua/settle.lua: the same request sent by hand through
    redis-py's generic ``fcall`` or ``evalsha`` on another client moves the
    counters exactly as the ledger's own calls do."""
    ledger = RedisLedger(redis_url, namespace="same-" + how)
    buckets = [day_bucket(ledger, "role:研究員", 10_000), day_bucket(ledger, "global", None)]
    res = reserve(ledger, buckets, 1234)
    assert ledger.settle(res.reservation_id, 1000, Usage(1, 2, 3, 4, 0)).applied is True
    plan = ledger._plan(tuple(buckets))
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    library = _library()[0]

    def run(op: str, *keys_args: Any) -> Any:
        if how == "fcall":  # the library the ledger's own calls loaded
            return client.fcall(f"{library}_{op}", *keys_args)
        client.script_load(ledger._lua[op].script)
        return client.evalsha(ledger._lua[op].sha, *keys_args)

    try:
        rid = new_reservation_id()
        reply = run(
            "reserve", 3 + len(buckets), ledger.prefix + "leases",
            ledger.prefix + "records", ledger.prefix + "r:" + rid, *plan.keys, rid, f'"{rid}"',
            "1234", "600000", str(600_000 + 86_400_000),
            '"role":"researcher","model":"test-model","crew":null,"estimate_nano":1234,'
            '"metadata":{}', *plan.fixed_args, ledger.epoch)
        assert reply[0] == "ok"
        assert counters(ledger, buckets) == [(1000, 1234)] * 2
        reply = run(
            "settle", 3, ledger.prefix + "leases", ledger.prefix + "records",
            ledger.prefix + "r:" + rid, rid, "1000",
            '"input_tokens":1,"cached_input_tokens":2,"cache_write_tokens":3,'
            '"output_tokens":4,"reasoning_tokens":0', str(ledger.retention_ms))
        assert reply == ["settled", 1, "1000"]
    finally:
        client.close()
    assert counters(ledger, buckets) == [(2000, 0)] * 2
    records = sorted((r.reservation_id == rid, r.cost_nano, r.input_tokens, r.output_tokens)
                     for r in ledger.records())
    assert records == [(False, 1000, 1, 4), (True, 1000, 1, 4)]
    ledger.close()


def test_without_hiredis_installed_the_ledger_runs_on_redis_py_alone(redis_url: str) -> None:
    """hiredis is optional (an extra of redis-py): with it unimportable, a
    fresh process reserves and settles exactly, on the pure-Python parser."""
    code = (
        "import sys; sys.modules['hiredis'] = None\n"
        "import redis.utils\n"
        "from crew_budget.ledger import Bucket, RecordDraft, ReserveRequest\n"
        "from crew_budget.ledger.redis import RedisLedger\n"
        "from crew_budget.usage import Usage\n"
        f"led = RedisLedger({redis_url!r}, namespace='nohiredis')\n"
        "now = led.now()\n"
        "b = Bucket('role:r', 'day', 'p', 5000, now - 60, now + 60)\n"
        "res = led.reserve(ReserveRequest('rid1', (b,), 1200, 60.0, RecordDraft('r', 'm')))\n"
        "out = led.settle('rid1', 700, Usage(7, 0, 0, 3, 0))\n"
        "(st,) = led.status([b])\n"
        "print(redis.utils.HIREDIS_AVAILABLE, out.state, out.cost_nano, st.spent_nano,\n"
        "      st.reserved_nano, 'hiredis' in sys.modules and sys.modules['hiredis'] is not None)\n"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "settled", "700", "700", "0", "False"]


def test_hot_commands_are_the_bytes_redis_py_would_send(redis_url: str) -> None:
    """reserve and settle are packed by ``hiredis.pack_command`` and sent with
    ``send_packed_command`` (``_send_args``): byte for byte what redis-py's own
    ``pack_command`` makes of the same arguments (str, non-ASCII str, bytes,
    int), so the server sees the same request either way."""
    from crew_budget.ledger import redis as module

    assert module._hiredis_pack is not None  # the redis extra brings hiredis
    ledger = RedisLedger(redis_url, namespace="bytes")
    buckets = (day_bucket(ledger, "role:研究員", 10_000), day_bucket(ledger, "global", None))
    plan = ledger._plan(buckets)
    args = ("FCALL", "crewbudget_x_reserve", 3 + len(buckets), ledger.prefix + "leases",
            ledger.prefix + "records", ledger.prefix + "r:abc", *plan.keys, "abc", '"abc"',
            "1234", "600000", "87000000", '"role":"研究員","model":"m","crew":null,'
            '"estimate_nano":1234,"metadata":{"k":"é"}', *plan.fixed_args, "", 0)
    client = redis.Redis.from_url(redis_url)
    try:
        conn = client.connection_pool.get_connection()
        assert module._hiredis_pack(args) == b"".join(conn.pack_command(*args))
        client.connection_pool.release(conn)
    finally:
        client.close()
    ledger.close()
