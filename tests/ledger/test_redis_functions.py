"""The Redis ledger's function library (``FUNCTION LOAD`` once, ``FCALL`` per call).

On Redis >= 7 the hot operations (reserve, settle, release, reap, status,
charge, state) run as functions of one library (``_library`` in
ledger/redis.py), so the shared Lua helpers are built once per server
instead of on every ``EVALSHA``. Here, against real redis-servers: the calls
really are ``FCALL`` (``INFO commandstats``); a restart without persistence
loses the library, which is loaded again without the caller noticing, while
the loss of the data is still refused as ``LedgerReset``; ``FUNCTION FLUSH``
alone costs nothing; and a server where ``FCALL`` does not exist (renamed
away) or a user whose ACL forbids it is served by ``EVALSHA`` with the same
results. Amounts are plain integers chosen here; the expected counters are
their sums.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timezone
from pathlib import Path

import pytest
import redis

from crew_budget.errors import LedgerReset, ReservationError
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


def reserve(ledger: RedisLedger, bucket: Bucket, amount: int) -> Reservation:
    draft = RecordDraft(role="researcher", model="test-model", estimate_nano=amount)
    res = ledger.reserve(ReserveRequest(new_reservation_id(), (bucket,), amount, 600.0, draft))
    assert isinstance(res, Reservation)
    return res


def counters(ledger: RedisLedger, bucket: Bucket) -> tuple[int, int]:
    (state,) = ledger.status([bucket])
    return state.spent_nano, state.reserved_nano


def calls(server: RedisServer, command: str, password: str | None = None) -> int:
    """How many times the server ran ``command`` since it started."""
    client = redis.Redis(port=server.port, password=password)
    try:
        return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))
    finally:
        client.close()


def libraries(server: RedisServer) -> list[str]:
    client = redis.Redis(port=server.port, decode_responses=True)
    try:
        # RESP2: each library is a flat [key, value, ...] list.
        return [dict(zip(lib[::2], lib[1::2], strict=True))["library_name"]
                for lib in client.function_list()]
    finally:
        client.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of its own (fresh command statistics), without persistence."""
    srv = RedisServer(directory=tmp_path)
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("parser", PARSERS)
def test_hot_calls_are_fcall_of_one_library_loaded_once(server: RedisServer, parser: str
                                                        ) -> None:
    ledger = redis_ledger(server.url, parser, namespace="fn")
    b = day_bucket(ledger, "role:researcher", 10_000)
    held = [reserve(ledger, b, 1000 + i) for i in range(3)]
    assert ledger.settle(held[0].reservation_id, 700, Usage(7, 0, 0, 1, 0)).applied is True
    assert ledger.release(held[1].reservation_id).applied is True
    assert ledger.settle(held[0].reservation_id, 700, Usage(7, 0, 0, 1, 0)).applied is False
    assert counters(ledger, b) == (700, 1002)
    assert ledger.reservation_state(held[2].reservation_id) == "reserved"
    # 3 reserves, 2 settles, 1 release, 1 status, 1 state: all FCALL, no script
    # sent; plus the very first FCALL, answered "Function not found" before the load.
    assert calls(server, "fcall") == 8 + 1
    assert calls(server, "evalsha") == calls(server, "eval") == 0
    assert calls(server, "function|load") == 1
    assert libraries(server) == [_library()[0]]
    assert used_parser(ledger) == parser
    ledger.close()


@pytest.mark.parametrize("parser", PARSERS)
def test_a_restart_without_persistence_reloads_the_library_and_still_refuses_the_loss(
    server: RedisServer, parser: str
) -> None:
    ledger = redis_ledger(server.url, parser, namespace="fnloss")
    b = day_bucket(ledger, "role:researcher", 10_000)
    held = reserve(ledger, b, 1000)
    server.restart()  # empty: no data, no functions, every kept connection dead
    assert libraries(server) == []
    with pytest.raises(LedgerReset) as info:
        reserve(ledger, b, 500)
    assert "is gone: the data was deleted" in str(info.value)
    assert libraries(server) == [_library()[0]]  # loaded again by that very call
    assert calls(server, "fcall") == 2  # "Function not found", then the reserve itself
    with pytest.raises(ReservationError, match="unknown reservation"):  # gone with the data
        ledger.settle(held.reservation_id, 900, Usage(9, 0, 0, 1, 0))
    ledger.recover(who="test", reason="restart without persistence")
    after = reserve(ledger, b, 400)
    assert ledger.settle(after.reservation_id, 300, Usage(3, 0, 0, 1, 0)).applied is True
    assert counters(ledger, b) == (300, 0)
    ledger.close()


def test_flushall_keeps_the_library_and_function_flush_alone_costs_no_call(
    server: RedisServer,
) -> None:
    ledger = RedisLedger(server.url, namespace="fnflush")
    b = day_bucket(ledger, "role:researcher", 10_000)
    first = reserve(ledger, b, 1000)
    server.command("FUNCTION", "FLUSH")  # the data stays, the library goes
    assert libraries(server) == []
    assert ledger.settle(first.reservation_id, 800, Usage(8, 0, 0, 1, 0)).applied is True
    assert libraries(server) == [_library()[0]]
    second = reserve(ledger, b, 2000)
    assert counters(ledger, b) == (800, 2000)
    server.command("FLUSHALL")  # the data goes, functions stay (Redis 7)
    assert libraries(server) == [_library()[0]]
    with pytest.raises(LedgerReset):
        reserve(ledger, b, 100)
    assert calls(server, "function|load") == 2
    del second
    ledger.close()


def test_a_server_without_fcall_is_served_by_evalsha(tmp_path: Path) -> None:
    """``FCALL`` and ``FUNCTION`` renamed away: the server answers "unknown command"
    as a Redis 6 does; the ledger switches to EVALSHA once and stays there."""
    with RedisServer(directory=tmp_path, extra_args=[
            "--rename-command", "FCALL", "", "--rename-command", "FUNCTION", ""]) as server:
        ledger = RedisLedger(server.url, namespace="nofn")
        b = day_bucket(ledger, "role:researcher", 10_000)
        one = reserve(ledger, b, 1000)
        two = reserve(ledger, b, 2000)
        assert ledger.settle(one.reservation_id, 600, Usage(6, 0, 0, 1, 0)).applied is True
        assert ledger.release(two.reservation_id).applied is True
        assert counters(ledger, b) == (600, 0)
        assert ledger._functions is False
        # 2 reserves, 1 settle, 1 release, 1 status, plus a NOSCRIPT answer for the
        # first of each of the four scripts (then SCRIPT LOAD, as before functions).
        assert calls(server, "evalsha") == 5 + 4
        assert calls(server, "script|load") == 4
        ledger.close()


def test_a_user_whose_acl_forbids_functions_is_served_by_evalsha(tmp_path: Path) -> None:
    """Managed Redis often forbids FUNCTION: NOPERM on FCALL means EVALSHA, not an error."""
    with RedisServer(directory=tmp_path) as server:
        server.command("ACL", "SETUSER", "cb", "on", ">pw", "~*", "+@all", "-fcall",
                       "-function")
        ledger = RedisLedger(f"redis://cb:pw@127.0.0.1:{server.port}/0", namespace="acl")
        b = day_bucket(ledger, "role:researcher", 10_000)
        one = reserve(ledger, b, 1000)
        assert ledger.settle(one.reservation_id, 900, Usage(9, 0, 0, 1, 0)).applied is True
        assert counters(ledger, b) == (900, 0)
        assert ledger._functions is False
        assert libraries(server) == []
        ledger.close()


def test_rollups_stay_exact_across_the_digits_lua_writes_as_numbers(server: RedisServer
                                                                     ) -> None:
    """The hourly rollup is rewritten on every settle with sums below 10^14 left
    as Lua numbers and larger ones through int_str (lua/_common.lua, ROLLUPS):
    sums on both sides of 10^14 come back to the nano-USD and token."""
    ledger = RedisLedger(server.url, namespace="digits")
    b = day_bucket(ledger, "role:researcher", None)
    costs = [99_999_999_999_990, 25, 3_000_000_000_000_000]
    for i, cost in enumerate(costs):
        res = reserve(ledger, b, 1000)
        usage = Usage(10**9 - i, 7, 0, 999_999_999, 5)
        assert ledger.settle(res.reservation_id, cost, usage).applied is True
        released = reserve(ledger, b, 10)  # a count the settles leave unchanged
        assert ledger.release(released.reservation_id).applied is True
    (r,) = ledger.rollups()
    assert (r.calls, r.released, r.blocked, r.expired) == (3, 3, 0, 0)
    assert r.cost_nano == 3_100_000_000_000_015
    assert (r.input_tokens, r.cached_input_tokens, r.output_tokens, r.reasoning_tokens) == (
        3 * 10**9 - 3, 21, 3 * 999_999_999, 15)
    assert r.estimate_nano == 3000
    ledger.close()


def test_reserve_writes_its_key_first_and_a_refusal_or_a_repeat_leaves_nothing_behind(
    server: RedisServer,
) -> None:
    """reserve writes the reservation with SET NX before the limit checks (the
    duplicate check and the write in one command, lua/reserve.lua): a repeated
    id keeps the first value and charges nothing; a refusal deletes the key it
    had just written, so the refused id is unknown and nothing is reserved."""
    ledger = RedisLedger(server.url, namespace="nx")
    b = day_bucket(ledger, "role:researcher", 5_000)
    draft = RecordDraft(role="researcher", model="test-model", estimate_nano=3000)
    rid = new_reservation_id()
    first = ledger.reserve(ReserveRequest(rid, (b,), 3000, 600.0, draft))
    again = ledger.reserve(ReserveRequest(rid, (b,), 4000, 600.0, draft))
    assert isinstance(first, Reservation) and isinstance(again, Reservation)
    assert (again.amount_nano, again.expires_at) == (3000, first.expires_at)
    assert counters(ledger, b) == (0, 3000)
    refused = new_reservation_id()
    denial = ledger.reserve(ReserveRequest(refused, (b,), 2001, 600.0, draft))
    assert not isinstance(denial, Reservation)
    assert (denial.state.spent_nano, denial.state.reserved_nano) == (0, 3000)
    assert ledger.reservation_state(refused) is None
    client = redis.Redis(port=server.port)
    try:
        assert client.exists(ledger.prefix + "r:" + refused) == 0
    finally:
        client.close()
    assert [r.outcome for r in ledger.records()] == ["blocked"]
    assert ledger.settle(rid, 2500, Usage(25, 0, 0, 1, 0)).applied is True
    assert counters(ledger, b) == (2500, 0)
    ledger.close()
