"""Rollups written before the shadow counts existed (eleven metrics) still read,
with ``shadow_blocked`` and ``shadow_blocked_nano`` at 0, and new calls add to
them: a SQLite file gains the two columns when opened, and a Redis hour hash
with eleven counts per group is extended by the next call into it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import redis

from crew_budget.ledger import Bucket, RecordDraft, ReserveRequest, new_reservation_id
from crew_budget.ledger.base import SHADOW_KEY, Ledger, Reservation, rollup_hour
from crew_budget.ledger.redis import RedisLedger
from crew_budget.ledger.sqlite import SQLiteLedger
from crew_budget.usage import Usage


def settle_one(led: Ledger, cost: int, shadow: bool) -> None:
    now = led.now()
    b = Bucket("role:r", "day", "p1", None, now - 3600, now + 3600)
    draft = RecordDraft(role="r", model="m", crew=None, estimate_nano=1_000,
                        metadata={SHADOW_KEY: "role:r|day"} if shadow else {})
    res = led.reserve(ReserveRequest(new_reservation_id(), (b,), 1_000, 600.0, draft))
    assert isinstance(res, Reservation)
    led.settle(res.reservation_id, cost, Usage(input_tokens=5, output_tokens=1))


def totals(led: Ledger) -> tuple[int, int, int]:
    rollups = led.rollups()
    return (sum(r.calls for r in rollups), sum(r.shadow_blocked for r in rollups),
            sum(r.shadow_blocked_nano for r in rollups))


def test_an_old_sqlite_file_gains_the_shadow_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    settle_one(SQLiteLedger(url), 100, shadow=False)
    db = sqlite3.connect(tmp_path / "old.db")
    db.execute("ALTER TABLE rollups DROP COLUMN shadow_blocked_nano")
    db.execute("ALTER TABLE rollups DROP COLUMN shadow_blocked")
    db.commit()
    db.close()
    led = SQLiteLedger(url)  # an old file: the columns come back, at 0
    assert totals(led) == (1, 0, 0)
    settle_one(led, 200, shadow=True)
    assert totals(led) == (2, 1, 200)
    columns = [row[1] for row in sqlite3.connect(tmp_path / "old.db").execute(
        "PRAGMA table_info(rollups)")]
    assert columns[-2:] == ["shadow_blocked", "shadow_blocked_nano"]


def test_an_old_redis_rollup_value_reads_and_grows(redis_url: str) -> None:
    led = RedisLedger(redis_url, namespace="upgrade")
    hour = int(rollup_hour(led.now()))
    group = json.dumps({"scope": None, "role": "r", "model": "m", "crew": None},
                       separators=(",", ":"))
    client = redis.Redis.from_url(redis_url)
    settle_one(led, 100, shadow=False)
    key = f"{led.prefix}ru:{hour}"
    [(field, value)] = client.hgetall(key).items()
    assert json.loads(field) == json.loads(group)
    assert len(value.split()) == 13
    # As an older version wrote it: eleven counts.
    client.hset(key, field, b" ".join(value.split()[:11]))
    assert totals(led) == (1, 0, 0)
    settle_one(led, 200, shadow=True)
    assert totals(led) == (2, 1, 200)
    assert len(client.hget(key, field).split()) == 13  # type: ignore[union-attr]
    client.close()
    led.close()
