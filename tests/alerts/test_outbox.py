"""The ledger's alert outbox, one suite on every backend (memory, SQLite, real Redis).

Put is idempotent by key; a claim leases due entries with a token; only the
token's holder can ack, retry or fail; a lease that runs out makes the entry
claimable again; a group's entries are claimable strictly one after the other.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crew_budget.ledger import Ledger, open_ledger

BACKENDS = ["memory", "sqlite", "redis"]


@pytest.fixture(params=BACKENDS)
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = request.getfixturevalue("redis_url")
    led = open_ledger(url)
    yield led
    led.close()


def put(led: Ledger, key: str, group: str = "g", channel: str = "hook") -> bool:
    return led.outbox_put(key, f"payload of {key}", channel=channel, group=group,
                          ttl_seconds=3600)


def test_put_is_idempotent_by_key(ledger: Ledger) -> None:
    assert put(ledger, "a") is True
    assert put(ledger, "a") is False
    entry = ledger.outbox_get("a")
    assert entry is not None
    assert (entry.state, entry.attempts, entry.payload, entry.channel, entry.group) == (
        "pending", 0, "payload of a", "hook", "g")
    assert ledger.outbox_get("nope") is None


def test_claim_ack_and_a_delivered_key_is_remembered(ledger: Ledger) -> None:
    put(ledger, "a", group="g1")
    put(ledger, "b", group="g2")
    put(ledger, "c", group="g3", channel="other")
    got = ledger.outbox_claim("hook", lease_seconds=60, limit=10)
    assert [e.key for e in got] == ["a", "b"]
    assert [e.attempts for e in got] == [1, 1]
    assert all(e.state == "claimed" and e.token for e in got)
    assert ledger.outbox_claim("hook", lease_seconds=60) == []      # leased: not due
    assert ledger.outbox_ack("a", "wrong-token") is False
    assert ledger.outbox_ack("a", got[0].token) is True
    assert ledger.outbox_ack("a", got[0].token) is False           # once
    a = ledger.outbox_get("a")
    assert a is not None and a.state == "delivered"
    assert put(ledger, "a", group="g1") is False                   # never sent twice
    assert [e.key for e in ledger.outbox_claim("other", lease_seconds=60)] == ["c"]


def test_a_group_is_delivered_in_order_one_at_a_time(ledger: Ledger) -> None:
    for key in ("50", "80", "100", "exhausted"):
        put(ledger, key, group="role:r|day|p")
    order = []
    for _ in range(4):
        (entry,) = ledger.outbox_claim("hook", lease_seconds=60, limit=10)
        order.append(entry.key)
        assert ledger.outbox_ack(entry.key, entry.token)
    assert order == ["50", "80", "100", "exhausted"]
    assert ledger.outbox_claim("hook", lease_seconds=60) == []


def test_retry_makes_it_due_later_and_keeps_the_error(ledger: Ledger) -> None:
    put(ledger, "a")
    put(ledger, "b")  # same group: waits behind "a" while it is retried
    (a,) = ledger.outbox_claim("hook", lease_seconds=60)
    assert ledger.outbox_retry("a", a.token, delay_seconds=0.3, error="HTTP 503") is True
    assert ledger.outbox_retry("a", a.token, delay_seconds=0.3, error="x") is False
    assert ledger.outbox_claim("hook", lease_seconds=60) == []
    time.sleep(0.4)
    (again,) = ledger.outbox_claim("hook", lease_seconds=60)
    assert (again.key, again.attempts, again.last_error) == ("a", 2, "HTTP 503")
    assert again.token != a.token
    assert ledger.outbox_fail("a", again.token, error="gave up: HTTP 503") is True
    failed = ledger.outbox_get("a")
    assert failed is not None and (failed.state, failed.last_error) == (
        "failed", "gave up: HTTP 503")
    (b,) = ledger.outbox_claim("hook", lease_seconds=60)           # the group moves on
    assert b.key == "b"


def test_a_lapsed_lease_is_taken_over_and_the_old_token_is_void(ledger: Ledger) -> None:
    put(ledger, "a")
    (first,) = ledger.outbox_claim("hook", lease_seconds=0.2)
    time.sleep(0.3)
    (second,) = ledger.outbox_claim("hook", lease_seconds=60)
    assert (second.key, second.attempts) == ("a", 2)
    assert ledger.outbox_ack("a", first.token) is False            # the dead claimant's
    assert ledger.outbox_ack("a", second.token) is True
