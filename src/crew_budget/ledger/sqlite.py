"""The embedded default ledger: one SQLite file, safe across processes.

Every operation is one ``BEGIN IMMEDIATE`` transaction, which takes SQLite's
write lock up front: two processes can never both read "under budget" and
both charge. WAL mode lets readers (``status``, reports) run beside a writer.
A connection is opened per thread and per process (after ``fork`` a child
must not reuse its parent's handle).

Integrity (see ``crew_budget.LedgerReset``): the file keeps an epoch in its
``meta`` table, and this ledger remembers the file it opened (device and
inode). Every ``reserve`` checks both: a file deleted, or replaced by
another (a restore, a fresh file made by a new process), or whose epoch was
marked lost by another process, refuses with ``LedgerReset`` (and marks a
replacing file lost, so processes that never saw the old one stop too) until
``recover`` re-arms it; a ``recovered:`` epoch is adopted. Not detected: a
brand-new process that opens a replaced file before any process that knew
the old one has noticed (it takes the file as new), and rows deleted inside
the file by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from crew_budget.errors import LedgerNotFound, LedgerReset, LedgerUnavailable, ReservationError
from crew_budget.ledger.base import (
    AUDIT_OUTCOMES,
    ROLLUP_METRICS,
    ROLLUP_RETENTION_DAYS,
    Bucket,
    BucketState,
    ClockSkew,
    Denial,
    Ledger,
    OutboxEntry,
    OutboxState,
    Outcome,
    Override,
    RecordDraft,
    Reservation,
    ReserveRequest,
    Rollup,
    RollupGroup,
    RollupKey,
    RollupTable,
    SettleResult,
    SpendRecord,
    StaleOverrides,
    add_rollup,
    bucket_charge,
    bucket_need,
    decode_margin_bins,
    encode_margin_bins,
    merge_margin_bins,
    new_reservation_id,
    record_amount,
    rollup_counts,
    rollup_hour,
    rollups_from,
)
from crew_budget.money import check_nano
from crew_budget.redact import redact_url
from crew_budget.usage import Usage, check_usage

__all__ = ["SQLiteLedger"]

_ROLLUP_TABLE = """
CREATE TABLE IF NOT EXISTS rollups (
    hour  INTEGER NOT NULL,
    grp   TEXT NOT NULL,
    calls INTEGER NOT NULL, blocked INTEGER NOT NULL, released INTEGER NOT NULL,
    expired INTEGER NOT NULL, input_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL, cache_write_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, reasoning_tokens INTEGER NOT NULL,
    cost_nano INTEGER NOT NULL, estimate_nano INTEGER NOT NULL,
    shadow_blocked INTEGER NOT NULL DEFAULT 0, shadow_blocked_nano INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, grp)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS resets (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    ts   REAL NOT NULL,
    data TEXT NOT NULL
);
"""

_SCHEMA = _ROLLUP_TABLE + """
CREATE TABLE IF NOT EXISTS buckets (
    key        TEXT PRIMARY KEY,
    spent      INTEGER NOT NULL DEFAULT 0,
    reserved   INTEGER NOT NULL DEFAULT 0,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reservations (
    id          TEXT PRIMARY KEY,
    amount      INTEGER NOT NULL,
    expires_at  REAL NOT NULL,
    buckets     TEXT NOT NULL,
    draft       TEXT NOT NULL,
    state       TEXT NOT NULL,
    cost        INTEGER NOT NULL DEFAULT 0,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS reservations_live ON reservations (state, expires_at);
CREATE TABLE IF NOT EXISTS records (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    ts   REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_ts ON records (ts);
CREATE TABLE IF NOT EXISTS claims (
    marker     TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS overrides (
    key  TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
"""

# Finished reservations are kept this long so a late, repeated settle is
# still recognised as a repeat (idempotency) rather than an unknown id.
_TOMBSTONE_SECONDS = 7 * 86400.0
_HOUSEKEEPING_EVERY = 500


class SQLiteLedger(Ledger):
    """``sqlite:///relative/or//absolute/path.db``."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] | None = None,
        retention_days: int = 90,
        records_retention_days: int | None = None,
        busy_timeout_s: float = 30.0,
        create: bool = True,
    ) -> None:
        self.url = redact_url(url)  # shown in messages and logs
        self.path = _path_from_url(url)
        self._clock = clock or time.time
        self._retention = retention_days * 86400.0
        # Raw records have their own retention (None: retention_days; 0: none
        # kept); hourly rollups are kept ROLLUP_RETENTION_DAYS.
        self._records_retention = (retention_days if records_retention_days is None
                                   else records_retention_days) * 86400.0
        self._busy_timeout = busy_timeout_s
        self._gen = 0  # bumped when the file is switched (recover, adoption)
        self._local = threading.local()
        self._ops = 0
        if not create:
            self._check_exists()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._backfill_rollups()
            self._conn().executescript(_SCHEMA)
            self._add_rollup_columns()
            self._arm(self._conn())
        except sqlite3.Error as exc:
            raise LedgerUnavailable(url, f"cannot open or create the ledger file: {exc}") from exc

    def _check_exists(self) -> None:
        """For ``create=False``: the file must be there, and be a crew-budget ledger.

        Checked before ``sqlite3.connect``, which would create the file. A
        file without our tables (a stray empty file, another program's
        database) is refused too, rather than given our schema.
        """
        if not self.path.is_file():
            raise LedgerNotFound(self.url, str(self.path.absolute()))
        try:
            with closing(sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro",
                                         uri=True, timeout=self._busy_timeout)) as db:
                tables = {row[0] for row in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as exc:
            raise LedgerUnavailable(self.url, f"cannot read the ledger file: {exc}") from exc
        if not {"buckets", "records"} <= tables:
            raise LedgerNotFound(self.url, str(self.path.absolute()))

    # -- connection handling -------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid() and self._local.gen == self._gen:
            return conn
        if conn is not None and self._local.pid == os.getpid():
            conn.close()  # the file at the path changed (recover, adoption)
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=True,
            )
            # Several processes opening a brand-new file at once can find it
            # locked while one of them switches it to WAL: wait, as for a write.
            deadline = time.monotonic() + self._busy_timeout
            while True:
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise LedgerUnavailable(self.url, str(exc)) from exc
        self._local.conn = conn
        self._local.pid = os.getpid()
        self._local.gen = self._gen
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise LedgerUnavailable(self.url, f"cannot take the write lock: {exc}") from exc
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            try:
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                db.execute("ROLLBACK")
                raise LedgerUnavailable(self.url, f"commit failed: {exc}") from exc

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def now(self) -> float:
        return self._clock()

    # -- operations ------------------------------------------------------------

    def reserve(self, request: ReserveRequest) -> Reservation | Denial:
        check_nano("a reservation", request.amount_nano)
        now = self._clock()
        for b in request.buckets:
            if not b.starts_at <= now < b.ends_at:
                raise ClockSkew(now)
        retention = self._retention
        self._check_file()
        lost: str | None = None
        with self._tx() as db:
            lost = self._epoch_verdict(db)
            if lost is None:
                # Live limits: the client's version must be ours; raising
                # here rolls back, and nothing was written yet.
                if request.overrides_version is not None:
                    version = _overrides_version(db)
                    if version != request.overrides_version:
                        raise StaleOverrides(version)
                self._reap(db, now, 100)
                row = db.execute(
                    "SELECT amount, expires_at FROM reservations WHERE id = ?",
                    (request.reservation_id,),
                ).fetchone()
                if row is not None:  # a retried reserve with the same token
                    return Reservation(request.reservation_id, row[0], row[1], request.buckets)
                amount = request.amount_nano
                needs = [bucket_need(b, amount, request.draft) for b in request.buckets]
                for b, need in zip(request.buckets, needs, strict=True):
                    if b.limit_nano is None:
                        continue
                    spent, reserved = _bucket_row(db, b.key)
                    if spent + reserved + need > b.limit_nano:
                        self._insert(
                            db,
                            SpendRecord.build(
                                ts=now,
                                reservation_id=request.reservation_id,
                                outcome="blocked",
                                draft=request.draft,
                                cost_nano=0,
                                scope=b.scope,
                            ),
                        )
                        return Denial(BucketState(b, spent, reserved), need)
                for b, need in zip(request.buckets, needs, strict=True):
                    db.execute(
                        "INSERT INTO buckets (key, reserved, expires_at) VALUES (?, ?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET reserved = reserved + excluded.reserved",
                        (b.key, need, b.ends_at + retention),
                    )
                expires = now + request.lease_seconds
                db.execute(
                    "INSERT INTO reservations (id, amount, expires_at, buckets, draft, state) "
                    "VALUES (?, ?, ?, ?, ?, 'reserved')",
                    (
                        request.reservation_id,
                        amount,
                        expires,
                        # A USD bucket is its key; a bucket of another unit
                        # is [key, unit, what it reserved] (see _finish).
                        json.dumps([b.key if b.unit == "usd" else [b.key, b.unit, need]
                                    for b, need in zip(request.buckets, needs, strict=True)]),
                        request.draft.to_json(),
                    ),
                )
        if lost is not None:  # raised after the commit: the "lost" mark stays
            raise LedgerReset(self.url, lost)
        self._maybe_housekeep(now)
        return Reservation(request.reservation_id, amount, expires, request.buckets)

    def _finish(
        self,
        db: sqlite3.Connection,
        rid: str,
        state: Outcome,
        cost: int | None,
        usage: Usage | None,
        now: float,
    ) -> SettleResult:
        row = db.execute(
            "SELECT amount, buckets, draft, state, cost FROM reservations WHERE id = ?", (rid,)
        ).fetchone()
        if row is None:
            raise ReservationError(
                f"unknown reservation {rid!r} in {self.url}: it was never made on this "
                "ledger, or its record was trimmed after the retention period"
            )
        amount, keys, draft, current, old_cost = row
        if current != "reserved":
            return SettleResult(cast(Outcome, current), False, old_cost)
        charged = amount if cost is None else cost
        for item in json.loads(keys):
            if isinstance(item, str):  # a USD bucket
                key, took, add = item, amount, charged
            else:
                key, unit, took = item
                add = bucket_charge(unit, state, charged, took, usage)
            db.execute(
                "UPDATE buckets SET reserved = reserved - ?, spent = spent + ? WHERE key = ?",
                (took, add, key),
            )
        db.execute(
            "UPDATE reservations SET state = ?, cost = ?, finished_at = ? WHERE id = ?",
            (state, charged, now, rid),
        )
        self._insert(
            db,
            SpendRecord.build(
                ts=now,
                reservation_id=rid,
                outcome=state,
                draft=RecordDraft.from_json(draft),
                cost_nano=charged,
                usage=usage,
            ),
        )
        return SettleResult(state, True, charged)

    def settle(self, reservation_id: str, cost_nano: int, usage: Usage) -> SettleResult:
        check_nano("a settled cost", cost_nano)
        check_usage(usage)
        now = self._clock()
        with self._tx() as db:
            self._reap(db, now, 100)
            return self._finish(db, reservation_id, "settled", cost_nano, usage, now)

    def release(self, reservation_id: str) -> SettleResult:
        now = self._clock()
        with self._tx() as db:
            self._reap(db, now, 100)
            return self._finish(db, reservation_id, "released", 0, None, now)

    def _reap(self, db: sqlite3.Connection, now: float, limit: int) -> int:
        ids = [
            r[0]
            for r in db.execute(
                "SELECT id FROM reservations WHERE state = 'reserved' AND expires_at <= ? LIMIT ?",
                (now, limit),
            )
        ]
        for rid in ids:
            self._finish(db, rid, "expired", None, None, now)
        return len(ids)

    def reap(self, limit: int = 1000) -> int:
        now = self._clock()
        with self._tx() as db:
            return self._reap(db, now, limit)

    def status(self, buckets: Sequence[Bucket]) -> list[BucketState]:
        now = self._clock()
        with self._tx() as db:
            self._reap(db, now, 1000)
            return [BucketState(b, *_bucket_row(db, b.key)) for b in buckets]

    def reservation_state(self, reservation_id: str) -> Outcome | None:
        row = (
            self._conn()
            .execute("SELECT state FROM reservations WHERE id = ?", (reservation_id,))
            .fetchone()
        )
        return None if row is None else cast(Outcome, row[0])

    def _insert(self, db: sqlite3.Connection, record: SpendRecord) -> None:
        """Append a record and add it to its hourly rollup, in the caller's transaction."""
        _add_rollup(db, record)
        if record.outcome in AUDIT_OUTCOMES:
            db.execute("INSERT INTO resets (ts, data) VALUES (?, ?)", (record.ts, record.to_json()))
        if self._records_retention > 0:
            db.execute("INSERT INTO records (ts, data) VALUES (?, ?)",
                       (record.ts, record.to_json()))

    def _backfill_rollups(self) -> None:
        """A file made before rollups existed: roll up the records it holds, once.

        Under the write lock, so of several processes opening an old file
        only the first (which creates the table) backfills it.
        """
        with self._tx() as db:
            tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master")}
            if "records" not in tables or "rollups" in tables:
                return
            # One statement at a time: executescript would commit mid-transaction.
            for statement in _ROLLUP_TABLE.split(";")[:2]:
                db.execute(statement)
            for ts, data in db.execute("SELECT ts, data FROM records ORDER BY seq").fetchall():
                record = SpendRecord.from_json(data)
                _add_rollup(db, record)
                if record.outcome == "reset":
                    db.execute("INSERT INTO resets (ts, data) VALUES (?, ?)", (ts, data))

    def _add_rollup_columns(self) -> None:
        """A file made before the later ``ROLLUP_METRICS`` (shadow counts): add them, at 0.

        Checked under the write lock, so of several processes opening the
        file only the first alters it.
        """
        conn = self._conn()
        have = {row[1] for row in conn.execute("PRAGMA table_info(rollups)")}
        if all(m in have for m in ROLLUP_METRICS):
            return
        with self._tx() as db:
            have = {row[1] for row in db.execute("PRAGMA table_info(rollups)")}
            for m in ROLLUP_METRICS:
                if m not in have:
                    db.execute(f"ALTER TABLE rollups ADD COLUMN {m} INTEGER NOT NULL DEFAULT 0")

    def rollups(self, since: float | None = None, until: float | None = None) -> list[Rollup]:
        where, args = _rollup_span(since, until)
        sql = f"SELECT hour, grp, {', '.join(ROLLUP_METRICS)} FROM rollups{where}"
        try:
            rows = self._conn().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise LedgerUnavailable(self.url, str(exc)) from exc
        acc: dict[RollupKey, list[int]] = {}
        groups: dict[str, tuple[str | None, str, str, str | None]] = {}  # few: decode once
        for hour, grp, *counts in rows:
            g = groups.get(grp)
            if g is None:
                g = groups[grp] = tuple(json.loads(grp))
            add_rollup(acc, (float(hour), *g), counts)
        return rollups_from(acc)

    def rollup_table(self, since: float | None = None, until: float | None = None, *,
                     per_hour: bool = True) -> RollupTable:
        """The span's rollup rows as SQLite returns them (``RollupTable``).

        The primary key ``(hour, grp)`` answers the span as a range seek;
        rows come back as ``(hour, grp, *counts)`` tuples, ``grp`` (the
        group's JSON) is the group id and decoded once per group. Without
        ``per_hour``, SQLite sums each group over the span (``GROUP BY grp``):
        ~30 rows instead of ~23,000 for 30 days of 32 groups.
        """
        where, args = _rollup_span(since, until)
        if per_hour:
            sql = f"SELECT hour, grp, {', '.join(ROLLUP_METRICS)} FROM rollups{where}"
        else:
            sums = ", ".join(f"SUM({m})" for m in ROLLUP_METRICS)
            sql = f"SELECT NULL, grp, {sums} FROM rollups{where} GROUP BY grp"
        try:
            rows = self._conn().execute(sql, args).fetchall()
        except sqlite3.Error as exc:  # "integer overflow": a sum past 2**63
            if not per_hour and "overflow" in str(exc):
                return super().rollup_table(since, until, per_hour=False)
            raise LedgerUnavailable(self.url, str(exc)) from exc
        groups = {grp: _group(grp) for grp in {row[1] for row in rows}}
        return RollupTable(groups, rows, per_hour)

    def resets(self, since: float | None = None, until: float | None = None) -> list[SpendRecord]:
        return self._span("resets", since, until)

    def _span(self, table: str, since: float | None, until: float | None) -> list[SpendRecord]:
        """The records of ``table`` (records or resets) with ``since <= ts < until``, in
        commit order."""
        sql, args = f"SELECT data FROM {table} WHERE 1=1", []
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        if until is not None:
            sql += " AND ts < ?"
            args.append(until)
        try:
            rows = self._conn().execute(sql + " ORDER BY seq", args).fetchall()
        except sqlite3.Error as exc:
            raise LedgerUnavailable(self.url, str(exc)) from exc
        return [SpendRecord.from_json(r[0]) for r in rows]

    @property
    def records_retention_days(self) -> float:
        return self._records_retention / 86400.0

    def append_record(self, record: SpendRecord) -> None:
        with self._tx() as db:
            self._insert(db, record)

    def records(self, since: float | None = None, until: float | None = None) -> list[SpendRecord]:
        return self._span("records", since, until)

    def claim(self, marker: str, ttl_seconds: float) -> bool:
        now = self._clock()
        with self._tx() as db:
            row = db.execute("SELECT expires_at FROM claims WHERE marker = ?", (marker,)).fetchone()
            if row is not None and row[0] > now:
                return False
            db.execute(
                "INSERT OR REPLACE INTO claims (marker, expires_at) VALUES (?, ?)",
                (marker, now + ttl_seconds),
            )
            return True

    def reset(self, bucket: Bucket, *, reason: str = "") -> BucketState:
        now = self._clock()
        with self._tx() as db:
            spent, reserved = _bucket_row(db, bucket.key)
            db.execute("UPDATE buckets SET spent = 0 WHERE key = ?", (bucket.key,))
            role = bucket.scope.split(":", 1)[1] if bucket.scope.startswith("role:") else ""
            self._insert(
                db,
                SpendRecord(
                    ts=now,
                    reservation_id="",
                    outcome="reset",
                    role=role,
                    model="",
                    cost_nano=-spent,
                    scope=bucket.scope,
                    metadata={"bucket": bucket.key, "reason": reason},
                ),
            )
            return BucketState(bucket, 0, reserved)

    # -- integrity -------------------------------------------------------------

    def _arm(self, db: sqlite3.Connection) -> None:
        """Create the epoch if missing; remember this file and its epoch."""
        db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)",
                   ("new:" + os.urandom(8).hex(),))
        self._epoch = str(db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0])
        st = os.stat(self.path)
        self._ident = (st.st_dev, st.st_ino)

    def _check_file(self) -> None:
        """Refuse (``LedgerReset``) if the file was deleted or replaced; adopt a
        replacement an operator recovered."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise LedgerReset(self.url, "the ledger file was deleted or moved away") from None
        if (st.st_dev, st.st_ino) == self._ident:
            return
        try:
            other = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise LedgerUnavailable(self.url, f"cannot open the ledger file: {exc}") from exc
        try:
            try:
                row = other.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            except sqlite3.Error:
                row = None
            value = None if row is None else str(row[0])
            if value is not None and value.startswith("recovered:"):
                self._gen += 1  # every thread reconnects to the file now at the path
                self._epoch, self._ident = value, (st.st_dev, st.st_ino)
                return
            if value is not None and value.startswith("lost:"):
                raise LedgerReset(self.url, value.split(":", 2)[-1])
            what = "the ledger file was replaced by another"
            if value is not None:  # our schema: make every process using it stop too
                with contextlib.suppress(sqlite3.Error):
                    other.execute("UPDATE meta SET value = ? WHERE key = 'epoch'",
                                  (f"lost:{self._clock()}:{what}",))
            raise LedgerReset(self.url, what)
        finally:
            other.close()

    def _epoch_verdict(self, db: sqlite3.Connection) -> str | None:
        """Inside a write transaction: why the epoch says the state was lost, or None."""
        row = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        value = None if row is None else str(row[0])
        if value == self._epoch:
            return None
        if value is not None and value.startswith("recovered:"):
            self._epoch = value
            return None
        if value is not None and value.startswith("lost:"):
            return value.split(":", 2)[-1]
        what = ("its epoch row was deleted" if value is None
                else f"it was started afresh as {value} after holding {self._epoch}")
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?)",
                   (f"lost:{self._clock()}:{what}",))
        return what

    def epoch_state(self) -> str | None:
        try:
            row = self._conn().execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        except sqlite3.Error as exc:
            raise LedgerUnavailable(self.url, str(exc)) from exc
        return None if row is None else str(row[0])

    def journal_mode(self) -> str:
        """SQLite's journal mode of the file (``wal`` expected)."""
        return str(self._conn().execute("PRAGMA journal_mode").fetchone()[0])

    def recover(self, *, who: str, reason: str) -> str:
        """Re-arm: adopt the file now at the path (creating it if gone) with a new
        ``recovered:`` epoch, and write the audit record there."""
        self._gen += 1
        old = ""
        new = "recovered:" + os.urandom(8).hex()
        try:
            db = self._conn()
            db.executescript(_SCHEMA)
            with self._tx() as tx:
                row = tx.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
                old = "" if row is None else str(row[0])
                tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?)", (new,))
                self._insert(tx, SpendRecord(
                    ts=self._clock(), reservation_id="", outcome="reset", role="", model="",
                    metadata={"event": "ledger_recovered", "who": who, "reason": reason,
                              "replaced_epoch": old, "epoch": new}))
            st = os.stat(self.path)
        except sqlite3.Error as exc:
            raise LedgerUnavailable(self.url, str(exc)) from exc
        self._epoch, self._ident = new, (st.st_dev, st.st_ino)
        return old

    def oldest_lease(self) -> float | None:
        row = self._conn().execute(
            "SELECT MIN(expires_at) FROM reservations WHERE state = 'reserved'").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def charge(self, charge_id: str, buckets: Sequence[Bucket], cost_nano: int,
               record: SpendRecord) -> bool:
        now = self._clock()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM reservations WHERE id = ?", (charge_id,)).fetchone():
                return False
            for b in buckets:
                if b.ends_at + self._retention < now:
                    continue  # the window's counter is long gone
                db.execute(
                    "INSERT INTO buckets (key, spent, expires_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET spent = spent + excluded.spent",
                    (b.key, record_amount(b, cost_nano, record), b.ends_at + self._retention),
                )
            db.execute(
                "INSERT INTO reservations (id, amount, expires_at, buckets, draft, state, cost, "
                "finished_at) VALUES (?, 0, ?, '[]', '{}', 'unguarded', ?, ?)",
                (charge_id, now, cost_nano, now),
            )
            self._insert(db, record)
            return True

    # -- storage stays bounded -------------------------------------------------

    def _maybe_housekeep(self, now: float) -> None:
        self._ops += 1
        if self._ops % _HOUSEKEEPING_EVERY == 0:
            self.housekeep(now)

    def housekeep(self, now: float | None = None) -> None:
        """Drop expired counters, old tombstones, claims and records."""
        t = self._clock() if now is None else now
        with self._tx() as db:
            db.execute("DELETE FROM buckets WHERE expires_at < ?", (t,))
            db.execute(
                "DELETE FROM reservations WHERE state != 'reserved' AND finished_at < ?",
                (t - _TOMBSTONE_SECONDS,),
            )
            db.execute("DELETE FROM records WHERE ts < ?", (t - self._records_retention,))
            db.execute("DELETE FROM rollups WHERE hour < ?",
                       (int(t) - ROLLUP_RETENTION_DAYS * 86400 - 3600,))
            db.execute("DELETE FROM resets WHERE ts < ?", (t - ROLLUP_RETENTION_DAYS * 86400,))
            db.execute("DELETE FROM claims WHERE expires_at < ?", (t,))

    # -- the alert outbox (see Ledger.outbox_put) ------------------------------
    # Its table is created on first use, so a ledger file that never alerts
    # is unchanged, and older files gain it without a migration step.

    def _outbox_db(self) -> sqlite3.Connection:
        db = self._conn()
        if getattr(self._local, "outbox", None) is not db:
            try:
                db.executescript(_OUTBOX_SCHEMA)
            except sqlite3.Error as exc:
                raise LedgerUnavailable(self.url, f"cannot create the outbox: {exc}") from exc
            self._local.outbox = db
        return db

    @contextmanager
    def _outbox_tx(self) -> Iterator[sqlite3.Connection]:
        self._outbox_db()
        with self._tx() as db:
            yield db

    def outbox_put(self, key: str, payload: str, *, channel: str, group: str,
                   ttl_seconds: float) -> bool:
        now = self._clock()
        with self._outbox_tx() as db:
            row = db.execute("SELECT expires_at FROM outbox WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] > now:
                return False
            db.execute("DELETE FROM outbox WHERE expires_at <= ?", (now,))
            db.execute(
                "INSERT INTO outbox (key, seq, grp, channel, payload, state, due_at, "
                "created_at, expires_at) VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 "
                "FROM outbox), ?, ?, ?, 'pending', ?, ?, ?)",
                (key, group, channel, payload, now, now, now + ttl_seconds),
            )
            return True

    def outbox_claim(self, channel: str, *, lease_seconds: float,
                     limit: int = 10) -> list[OutboxEntry]:
        now = self._clock()
        # A read first, without the write lock: a delivery loop that finds
        # nothing due (the usual case) never competes with reservations.
        due_sql = (
            "SELECT key FROM outbox o WHERE channel = ? AND state IN ('pending', 'claimed') "
            "AND due_at <= ? AND expires_at > ? AND NOT EXISTS (SELECT 1 FROM outbox p "
            "WHERE p.grp = o.grp AND p.state IN ('pending', 'claimed') AND p.expires_at > ? "
            "AND p.seq < o.seq) ORDER BY seq LIMIT ?"
        )
        args = (channel, now, now, now, int(limit))
        try:
            if not self._outbox_db().execute(due_sql, args).fetchall():
                return []
        except sqlite3.Error as exc:
            raise LedgerUnavailable(self.url, str(exc)) from exc
        out = []
        with self._outbox_tx() as db:
            for (key,) in db.execute(due_sql, args).fetchall():
                token = new_reservation_id()
                db.execute(
                    "UPDATE outbox SET state = 'claimed', token = ?, attempts = attempts + 1, "
                    "claimed_at = ?, due_at = ? WHERE key = ?",
                    (token, now, now + lease_seconds, key),
                )
                entry = _outbox_entry(db, key)
                assert entry is not None
                out.append(entry)
        return out

    def _outbox_finish(self, key: str, token: str, sql: str, args: tuple[Any, ...]) -> bool:
        if not token:
            return False
        with self._outbox_tx() as db:
            cur = db.execute(
                f"UPDATE outbox SET {sql} WHERE key = ? AND token = ? AND state = 'claimed'",
                (*args, key, token),
            )
            return bool(cur.rowcount == 1)

    def outbox_ack(self, key: str, token: str) -> bool:
        return self._outbox_finish(
            key, token, "state = 'delivered', token = '', payload = ''", ())

    def outbox_retry(self, key: str, token: str, *, delay_seconds: float, error: str) -> bool:
        due = self._clock() + max(0.0, delay_seconds)
        return self._outbox_finish(
            key, token, "state = 'pending', token = '', due_at = ?, last_error = ?", (due, error))

    def outbox_fail(self, key: str, token: str, *, error: str) -> bool:
        return self._outbox_finish(
            key, token, "state = 'failed', token = '', payload = '', last_error = ?", (error,))

    def outbox_get(self, key: str) -> OutboxEntry | None:
        try:  # a plain read (WAL): no write lock
            return _outbox_entry(self._outbox_db(), key, self._clock())
        except sqlite3.Error as exc:
            raise LedgerUnavailable(self.url, str(exc)) from exc

    # -- live limits (see Ledger.write_overrides) ------------------------------
    # The version is meta row 'overrides_version' (absent = 0); reserve reads
    # it inside its BEGIN IMMEDIATE transaction, so a change made by another
    # process is seen by the very next reserve.

    def overrides_state(self) -> tuple[int, tuple[Override, ...]]:
        try:
            db = self._conn()
            with self._tx():  # one consistent read of version and rows
                version = _overrides_version(db)
                rows = db.execute("SELECT data FROM overrides ORDER BY key").fetchall()
        except sqlite3.Error as exc:
            raise LedgerUnavailable(self.url, str(exc)) from exc
        return version, tuple(Override.from_json(r[0]) for r in rows)

    def write_overrides(self, put: Sequence[Override], drop: Sequence[str],
                        record: SpendRecord) -> int:
        with self._tx() as db:
            for key in drop:
                db.execute("DELETE FROM overrides WHERE key = ?", (key,))
            for o in put:
                db.execute("INSERT OR REPLACE INTO overrides (key, data) VALUES (?, ?)",
                           (o.key, o.to_json()))
            version = _overrides_version(db) + 1
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('overrides_version', ?)",
                       (str(version),))
            self._insert(db, record)
            return version

    # -- estimate margins (see Ledger.margin_merge) ------------------------------
    # A table made on first use (like the outbox): one row per model family,
    # its histogram as "bin:count,..." text. Merged in one BEGIN IMMEDIATE.

    def _margin_db(self) -> sqlite3.Connection:
        db = self._conn()
        if getattr(self._local, "margins", None) is not db:
            try:
                db.execute("CREATE TABLE IF NOT EXISTS margins (family TEXT PRIMARY KEY, "
                           "bins TEXT NOT NULL, updated_at REAL NOT NULL)")
            except sqlite3.Error as exc:
                raise LedgerUnavailable(self.url, f"cannot create the margins table: {exc}"
                                        ) from exc
            self._local.margins = db
        return db

    def margin_merge(self, family: str, add: Mapping[int, int],
                     history: int) -> dict[int, int] | None:
        self._margin_db()
        with self._tx() as db:
            row = db.execute("SELECT bins FROM margins WHERE family = ?", (family,)).fetchone()
            merged = merge_margin_bins(decode_margin_bins(row[0]) if row else {}, add, history)
            db.execute("INSERT OR REPLACE INTO margins (family, bins, updated_at) "
                       "VALUES (?, ?, ?)", (family, encode_margin_bins(merged), self._clock()))
        return merged

    def margin_read(self, families: Sequence[str] | None) -> dict[str, dict[int, int]] | None:
        try:
            db = self._margin_db()
            if families is None:
                rows = db.execute("SELECT family, bins FROM margins").fetchall()
            else:
                rows = [r for f in families for r in db.execute(
                    "SELECT family, bins FROM margins WHERE family = ?", (f,)).fetchall()]
        except sqlite3.Error as exc:
            raise LedgerUnavailable(self.url, str(exc)) from exc
        return {str(f): decode_margin_bins(str(b)) for f, b in rows}


def _overrides_version(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = 'overrides_version'").fetchone()
    return 0 if row is None else int(row[0])


_OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    key        TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,
    grp        TEXT NOT NULL,
    channel    TEXT NOT NULL,
    payload    TEXT NOT NULL,
    state      TEXT NOT NULL,
    token      TEXT NOT NULL DEFAULT '',
    attempts   INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    claimed_at REAL,
    due_at     REAL NOT NULL,
    last_error TEXT,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (channel, state, due_at);
CREATE INDEX IF NOT EXISTS outbox_group ON outbox (grp, state, seq);
"""


def _outbox_entry(db: sqlite3.Connection, key: str, now: float | None = None
                  ) -> OutboxEntry | None:
    row = db.execute(
        "SELECT key, channel, grp, payload, state, token, attempts, created_at, claimed_at, "
        "due_at, last_error, expires_at FROM outbox WHERE key = ?", (key,)
    ).fetchone()
    if row is None or (now is not None and row[11] <= now):
        return None
    return OutboxEntry(row[0], row[1], row[2], row[3], cast(OutboxState, row[4]), row[5],
                       int(row[6]), row[7], row[8], row[9], row[10])


def _bucket_row(db: sqlite3.Connection, key: str) -> tuple[int, int]:
    row = db.execute("SELECT spent, reserved FROM buckets WHERE key = ?", (key,)).fetchone()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


def _group(grp: str) -> RollupGroup:
    scope, role, model, crew = json.loads(grp)
    return (scope, role, model, crew)


def _add_rollup(db: sqlite3.Connection, record: SpendRecord) -> None:
    counts = rollup_counts(record)
    if counts is None:
        return
    grp = json.dumps([record.scope, record.role, record.model, record.crew])
    db.execute(_UPSERT_ROLLUP, (int(rollup_hour(record.ts)), grp, *counts))


_UPSERT_ROLLUP = (
    f"INSERT INTO rollups (hour, grp, {', '.join(ROLLUP_METRICS)}) "
    f"VALUES (?, ?{', ?' * len(ROLLUP_METRICS)}) ON CONFLICT (hour, grp) DO UPDATE SET "
    + ", ".join(f"{m} = {m} + excluded.{m}" for m in ROLLUP_METRICS)
)


def _path_from_url(url: str) -> Path:
    """``sqlite:///rel.db`` is relative, ``sqlite:////abs.db`` absolute (SQLAlchemy's rule)."""
    parts = urlsplit(url)
    raw: Any = unquote(parts.path)
    if parts.netloc:  # sqlite://host/path is not meaningful; treat netloc as a path start
        raw = parts.netloc + raw
    path = raw[1:] if raw.startswith("/") else raw
    return Path(os.path.expanduser(path))


def _rollup_span(since: float | None, until: float | None) -> tuple[str, list[float]]:
    """The WHERE clause of a span over ``rollups`` (its primary key's range
    seek): an hour row counts when any part of its hour is in the span."""
    where, args = " WHERE 1=1", []
    if since is not None:
        where += " AND hour > ?"
        args.append(since - 3600)
    if until is not None:
        where += " AND hour < ?"
        args.append(until)
    return where, args
