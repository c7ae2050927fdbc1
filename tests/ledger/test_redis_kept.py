"""Connections the Redis ledger keeps between calls (``RedisLedger._kept_call``).

reserve, settle and release run on pool connections the ledger keeps
instead of handing them back after every call. What must hold, against a
real redis-server, with both reply parsers: threads never share a
connection (each reply is its own call's), a restarted server (every kept
connection dead) costs no call, and a server frozen by SIGSTOP fails the
call as a timeout, disconnects that connection, and its late reply is never
read as the answer to a later call.

Amounts are plain integers chosen here; the expected counters are their sums.
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import timezone
from pathlib import Path

import pytest

from crew_budget.errors import LedgerUnavailable
from crew_budget.ledger import Bucket, RecordDraft, Reservation, ReserveRequest, new_reservation_id
from crew_budget.ledger.redis import RedisLedger
from crew_budget.usage import Usage
from crew_budget.windows import span
from tests.fixtures.redis_server import RedisServer
from tests.ledger._parsers import PARSERS, redis_ledger, used_parser

UTC = timezone.utc


def day_bucket(ledger: RedisLedger, scope: str, limit: int | None) -> Bucket:
    s = span("day", ledger.now(), UTC)
    return Bucket(scope, "day", s.period, limit, s.starts_at, s.ends_at)


def reserve(ledger: RedisLedger, buckets: list[Bucket], amount: int, rid: str | None = None
            ) -> Reservation:
    draft = RecordDraft(role="researcher", model="test-model", estimate_nano=amount)
    res = ledger.reserve(ReserveRequest(rid or new_reservation_id(), tuple(buckets), amount,
                                        600.0, draft))
    assert isinstance(res, Reservation)
    return res


def counters(ledger: RedisLedger, buckets: list[Bucket]) -> list[tuple[int, int]]:
    return [(s.spent_nano, s.reserved_nano) for s in ledger.status(buckets)]


@pytest.fixture
def aof_server(tmp_path: Path) -> RedisServer:
    server = RedisServer(directory=tmp_path / "aof", appendonly=True)
    server.directory.mkdir()
    server.start()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.mark.parametrize("parser", PARSERS)
def test_threads_get_their_own_replies_and_a_restart_costs_no_call(
    aof_server: RedisServer, parser: str
) -> None:
    ledger = redis_ledger(aof_server.url, parser, namespace="kept")
    b = day_bucket(ledger, "role:researcher", 10**12)
    held: list[Reservation] = []
    wrong: list[str] = []
    gate = threading.Barrier(6)

    def work(k: int) -> None:
        gate.wait()  # all at once: several connections in use, then kept
        for i in range(30):
            rid = new_reservation_id()
            amount = 1000 * k + i + 1
            res = reserve(ledger, [b], amount, rid)
            if (res.reservation_id, res.amount_nano) != (rid, amount):
                wrong.append(f"{rid}: {res}")
            settled = ledger.settle(rid, amount, Usage(1, 0, 0, 0, 0))
            if (settled.state, settled.applied, settled.cost_nano) != ("settled", True, amount):
                wrong.append(f"{rid}: {settled}")
        held.append(reserve(ledger, [b], 7))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    spent = sum(1000 * k + i + 1 for k in range(6) for i in range(30))
    assert counters(ledger, [b]) == [(spent, 6 * 7)]
    assert len(ledger._idle) >= 2  # more than one connection kept

    aof_server.restart()  # every kept connection is dead now; the data survived (AOF)
    for res in held:  # settle, reserve and release each succeed at once
        assert ledger.settle(res.reservation_id, 5, Usage(1, 0, 0, 0, 0)).applied is True
    extra = reserve(ledger, [b], 11)
    assert ledger.release(extra.reservation_id).state == "released"
    assert counters(ledger, [b]) == [(spent + 6 * 5, 0)]
    assert used_parser(ledger) == parser
    ledger.close()


@pytest.mark.parametrize("parser", PARSERS)
def test_a_frozen_server_times_out_and_its_late_reply_is_never_taken_for_another(
    tmp_path: Path, parser: str
) -> None:
    with RedisServer(directory=tmp_path) as server:
        ledger = redis_ledger(server.url + "?socket_timeout=0.5", parser, namespace="frozen")
        b = day_bucket(ledger, "role:researcher", 10**9)
        first = reserve(ledger, [b], 100)  # a connection kept
        late = new_reservation_id()
        server.proc.send_signal(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(LedgerUnavailable) as caught:
                reserve(ledger, [b], 20, late)
            waited = time.monotonic() - t0
        finally:
            server.proc.send_signal(signal.SIGCONT)
        assert "TimeoutError" in caught.value.reason
        assert waited < 5  # the 0.5 s timeout held: not retried, not hung
        # The server runs the frozen reserve once it thaws, and its reply
        # arrives on the connection that timed out, which was disconnected:
        # the next calls get their own replies.
        after = reserve(ledger, [b], 3)
        assert (after.amount_nano, after.reservation_id != late) == (3, True)
        assert ledger.reservation_state(late) == "reserved"
        assert counters(ledger, [b]) == [(0, 100 + 20 + 3)]
        for rid, cost in ((first.reservation_id, 90), (late, 0), (after.reservation_id, 2)):
            assert ledger.settle(rid, cost, Usage(1, 0, 0, 0, 0)).cost_nano == cost
        assert counters(ledger, [b]) == [(92, 0)]
        assert used_parser(ledger) == parser
        ledger.close()
