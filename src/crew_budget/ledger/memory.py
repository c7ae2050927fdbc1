"""In-process ledger: one lock around plain dicts. For tests and single scripts."""

from __future__ import annotations

import collections
import heapq
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from crew_budget.errors import ReservationError
from crew_budget.ledger.base import (
    AUDIT_OUTCOMES,
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
    RollupKey,
    SettleResult,
    SpendRecord,
    StaleOverrides,
    add_rollup,
    bucket_charge,
    bucket_need,
    in_span,
    merge_margin_bins,
    new_reservation_id,
    record_amount,
    rollup_counts,
    rollup_hour,
    rollups_from,
)
from crew_budget.money import check_nano
from crew_budget.usage import Usage, check_usage

__all__ = ["MemoryLedger"]

# Finished reservations are remembered this long, so a repeated settle is
# recognised as a repeat (idempotency), then forgotten (bounded memory).
_TOMBSTONE_SECONDS = 7 * 86400.0


@dataclass(slots=True)
class _Res:
    amount: int
    expires_at: float
    buckets: tuple[Bucket, ...]
    draft: RecordDraft
    state: Outcome = "reserved"
    cost: int = 0
    needs: tuple[int, ...] = ()
    """What each bucket took, in its unit (empty: ``amount`` for every bucket)."""


class MemoryLedger(Ledger):
    """Lives and dies with the process; the lock makes every operation atomic."""

    def __init__(
        self,
        url: str = "memory://",
        *,
        clock: Callable[[], float] | None = None,
        retention_days: int = 90,
        records_retention_days: int | None = None,
    ) -> None:
        self.url = url
        self._clock = clock or time.time
        # Raw records have their own retention (None: retention_days; 0: none
        # kept); the hourly rollups are kept ROLLUP_RETENTION_DAYS.
        self._retention = (retention_days if records_retention_days is None
                           else records_retention_days) * 86400.0
        self._rollups: dict[RollupKey, list[int]] = {}
        self._resets: list[SpendRecord] = []
        self._lock = threading.Lock()
        self._spent: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        self._res: dict[str, _Res] = {}
        self._records: list[SpendRecord] = []
        self._claims: dict[str, float] = {}
        self._leases: list[tuple[float, str]] = []
        self._finished: collections.deque[tuple[float, str]] = collections.deque()

    def now(self) -> float:
        return self._clock()

    def reserve(self, request: ReserveRequest) -> Reservation | Denial:
        check_nano("a reservation", request.amount_nano)
        with self._lock:
            now = self._clock()
            for b in request.buckets:
                if not b.starts_at <= now < b.ends_at:
                    raise ClockSkew(now)
            # Live limits: the client's version must be ours (before any write).
            seen = request.overrides_version
            if seen is not None and seen != getattr(self, "_ov_version", 0):
                raise StaleOverrides(getattr(self, "_ov_version", 0))
            self._reap_locked(now, 1000)
            existing = self._res.get(request.reservation_id)
            if existing is not None:  # a retried reserve with the same token
                return Reservation(
                    request.reservation_id, existing.amount, existing.expires_at, existing.buckets
                )
            amount = request.amount_nano
            draft = request.draft
            needs = tuple(bucket_need(b, amount, draft) for b in request.buckets)
            for b, need in zip(request.buckets, needs, strict=True):
                if b.limit_nano is None:
                    continue
                spent = self._spent.get(b.key, 0)
                reserved = self._reserved.get(b.key, 0)
                if spent + reserved + need > b.limit_nano:
                    self._add_locked(
                        SpendRecord.build(
                            ts=now,
                            reservation_id=request.reservation_id,
                            outcome="blocked",
                            draft=request.draft,
                            cost_nano=0,
                            scope=b.scope,
                        )
                    )
                    return Denial(BucketState(b, spent, reserved), need)
            for b, need in zip(request.buckets, needs, strict=True):
                self._reserved[b.key] = self._reserved.get(b.key, 0) + need
            expires = now + request.lease_seconds
            self._res[request.reservation_id] = _Res(
                amount, expires, request.buckets, request.draft, needs=needs
            )
            heapq.heappush(self._leases, (expires, request.reservation_id))
            return Reservation(request.reservation_id, amount, expires, request.buckets)

    def _finish_locked(
        self, rid: str, state: Outcome, cost: int, usage: Usage | None, now: float
    ) -> SettleResult:
        res = self._res.get(rid)
        if res is None:
            raise _unknown(rid)
        if res.state != "reserved":
            return SettleResult(res.state, False, res.cost)
        needs = res.needs or (res.amount,) * len(res.buckets)
        for b, need in zip(res.buckets, needs, strict=True):
            self._reserved[b.key] = self._reserved.get(b.key, 0) - need
            self._spent[b.key] = (self._spent.get(b.key, 0)
                                  + bucket_charge(b.unit, state, cost, need, usage))
        res.state = state
        res.cost = cost
        self._finished.append((now, rid))
        self._add_locked(
            SpendRecord.build(
                ts=now,
                reservation_id=rid,
                outcome=state,
                draft=res.draft,
                cost_nano=cost,
                usage=usage,
            )
        )
        return SettleResult(state, True, cost)

    def _add_locked(self, record: SpendRecord) -> None:
        """Append a record and add it to its hourly rollup: one step under the lock."""
        counts = rollup_counts(record)
        if counts is not None:
            key = (rollup_hour(record.ts), record.scope, record.role, record.model, record.crew)
            add_rollup(self._rollups, key, counts)
        elif record.outcome in AUDIT_OUTCOMES:
            self._resets.append(record)
        if self._retention > 0:
            self._records.append(record)

    def rollups(self, since: float | None = None, until: float | None = None) -> list[Rollup]:
        with self._lock:
            cutoff = rollup_hour(self._clock()) - ROLLUP_RETENTION_DAYS * 86400.0
            for key in [k for k in self._rollups if k[0] < cutoff]:
                del self._rollups[key]
            self._resets = [r for r in self._resets if r.ts >= cutoff]
            return rollups_from({k: v for k, v in self._rollups.items()
                                 if in_span(k[0], since, until)})

    def resets(self, since: float | None = None, until: float | None = None) -> list[SpendRecord]:
        with self._lock:
            return [r for r in self._resets
                    if (since is None or r.ts >= since) and (until is None or r.ts < until)]

    @property
    def records_retention_days(self) -> float:
        return self._retention / 86400.0

    def settle(self, reservation_id: str, cost_nano: int, usage: Usage) -> SettleResult:
        check_nano("a settled cost", cost_nano)
        check_usage(usage)
        with self._lock:
            now = self._clock()
            self._reap_locked(now, 1000)
            return self._finish_locked(reservation_id, "settled", cost_nano, usage, now)

    def release(self, reservation_id: str) -> SettleResult:
        with self._lock:
            now = self._clock()
            self._reap_locked(now, 1000)
            return self._finish_locked(reservation_id, "released", 0, None, now)

    def _reap_locked(self, now: float, limit: int) -> int:
        # Leases sit in a min-heap by expiry, so an operation that reaps
        # nothing costs O(1) however many reservations the process has made.
        n = 0
        heap = self._leases
        while heap and heap[0][0] <= now and n < limit:
            _, rid = heapq.heappop(heap)
            res = self._res.get(rid)
            if res is not None and res.state == "reserved":
                self._finish_locked(rid, "expired", res.amount, None, now)
                n += 1
        if self._records and self._records[0].ts < now - self._retention:
            self._records = [r for r in self._records if r.ts >= now - self._retention]
        done = self._finished
        while done and done[0][0] < now - _TOMBSTONE_SECONDS:
            self._res.pop(done.popleft()[1], None)
        return n

    def reap(self, limit: int = 1000) -> int:
        with self._lock:
            return self._reap_locked(self._clock(), limit)

    def status(self, buckets: Sequence[Bucket]) -> list[BucketState]:
        with self._lock:
            self._reap_locked(self._clock(), 1000)
            return [
                BucketState(b, self._spent.get(b.key, 0), self._reserved.get(b.key, 0))
                for b in buckets
            ]

    def reservation_state(self, reservation_id: str) -> Outcome | None:
        with self._lock:
            res = self._res.get(reservation_id)
            return None if res is None else res.state

    def charge(self, charge_id: str, buckets: Sequence[Bucket], cost_nano: int,
               record: SpendRecord) -> bool:
        with self._lock:
            if charge_id in self._res:
                return False
            now = self._clock()
            for b in buckets:
                self._spent[b.key] = (self._spent.get(b.key, 0)
                                      + record_amount(b, cost_nano, record))
            self._res[charge_id] = _Res(0, now, (), RecordDraft("", ""), "unguarded", cost_nano)
            self._finished.append((now, charge_id))
            self._add_locked(record)
            return True

    def oldest_lease(self) -> float | None:
        with self._lock:
            live = [r.expires_at for r in self._res.values() if r.state == "reserved"]
            return min(live, default=None)

    def append_record(self, record: SpendRecord) -> None:
        with self._lock:
            self._add_locked(record)

    def records(self, since: float | None = None, until: float | None = None) -> list[SpendRecord]:
        with self._lock:
            return [
                r
                for r in self._records
                if (since is None or r.ts >= since) and (until is None or r.ts < until)
            ]

    def claim(self, marker: str, ttl_seconds: float) -> bool:
        with self._lock:
            now = self._clock()
            expires = self._claims.get(marker)
            if expires is not None and expires > now:
                return False
            self._claims[marker] = now + ttl_seconds
            return True

    def reset(self, bucket: Bucket, *, reason: str = "") -> BucketState:
        with self._lock:
            now = self._clock()
            old = self._spent.get(bucket.key, 0)
            self._spent[bucket.key] = 0
            self._add_locked(_reset_record(now, bucket, old, reason))
            return BucketState(bucket, 0, self._reserved.get(bucket.key, 0))

    # -- the alert outbox (see Ledger.outbox_put) ------------------------------
    # Made on first use: a ledger that never alerts carries no outbox.

    def _outbox(self) -> dict[str, _Ob]:
        box: dict[str, _Ob] | None = getattr(self, "_ob", None)
        if box is None:
            box = {}
            self._ob: dict[str, _Ob] = box
            self._ob_seq = 0
        return box

    def outbox_put(self, key: str, payload: str, *, channel: str, group: str,
                   ttl_seconds: float) -> bool:
        with self._lock:
            now = self._clock()
            box = self._outbox()
            old = box.get(key)
            if old is not None and old.expires_at > now:
                return False
            for k in [k for k, e in box.items() if e.expires_at <= now]:
                del box[k]  # bounded: expired entries go when new ones come
            self._ob_seq += 1
            box[key] = _Ob(key, channel, group, payload, self._ob_seq, now, now + ttl_seconds)
            return True

    def outbox_claim(self, channel: str, *, lease_seconds: float,
                     limit: int = 10) -> list[OutboxEntry]:
        with self._lock:
            now = self._clock()
            heads: dict[str, _Ob] = {}
            for e in self._outbox().values():
                if e.channel != channel or e.state not in _LIVE or e.expires_at <= now:
                    continue
                head = heads.get(e.group)
                if head is None or e.seq < head.seq:
                    heads[e.group] = e
            due = sorted((e for e in heads.values() if e.due_at <= now), key=lambda e: e.seq)
            out = []
            for e in due[:limit]:
                e.state, e.token = "claimed", new_reservation_id()
                e.attempts += 1
                e.claimed_at, e.due_at = now, now + lease_seconds
                out.append(e.entry())
            return out

    def _owned(self, key: str, token: str) -> _Ob | None:
        e = self._outbox().get(key)
        if e is None or e.state != "claimed" or e.token != token or not token:
            return None
        return e

    def outbox_ack(self, key: str, token: str) -> bool:
        with self._lock:
            e = self._owned(key, token)
            if e is None:
                return False
            e.state, e.token, e.payload = "delivered", "", ""
            return True

    def outbox_retry(self, key: str, token: str, *, delay_seconds: float, error: str) -> bool:
        with self._lock:
            e = self._owned(key, token)
            if e is None:
                return False
            e.state, e.token, e.last_error = "pending", "", error
            e.due_at = self._clock() + max(0.0, delay_seconds)
            return True

    def outbox_fail(self, key: str, token: str, *, error: str) -> bool:
        with self._lock:
            e = self._owned(key, token)
            if e is None:
                return False
            e.state, e.token, e.payload, e.last_error = "failed", "", "", error
            return True

    def outbox_get(self, key: str) -> OutboxEntry | None:
        with self._lock:
            e = self._outbox().get(key)
            return None if e is None or e.expires_at <= self._clock() else e.entry()

    # -- live limits (see Ledger.write_overrides) ------------------------------
    # Made on first use, like the outbox.

    def overrides_state(self) -> tuple[int, tuple[Override, ...]]:
        with self._lock:
            stored: dict[str, Override] = getattr(self, "_ov", {})
            return getattr(self, "_ov_version", 0), tuple(stored.values())

    def write_overrides(self, put: Sequence[Override], drop: Sequence[str],
                        record: SpendRecord) -> int:
        with self._lock:
            stored: dict[str, Override] = getattr(self, "_ov", {})
            self._ov = stored
            for key in drop:
                stored.pop(key, None)
            for o in put:
                stored[o.key] = o
            self._ov_version: int = getattr(self, "_ov_version", 0) + 1
            self._add_locked(record)
            return self._ov_version

    # -- estimate margins (see Ledger.margin_merge) ----------------------------

    def margin_merge(self, family: str, add: Mapping[int, int],
                     history: int) -> dict[int, int] | None:
        with self._lock:
            store: dict[str, dict[int, int]] = getattr(self, "_margins", {})
            self._margins = store
            store[family] = merge_margin_bins(store.get(family, {}), add, history)
            return dict(store[family])

    def margin_read(self, families: Sequence[str] | None) -> dict[str, dict[int, int]] | None:
        with self._lock:
            store: dict[str, dict[int, int]] = getattr(self, "_margins", {})
            names = list(store) if families is None else [f for f in families if f in store]
            return {f: dict(store[f]) for f in names}


_LIVE = ("pending", "claimed")


@dataclass(slots=True)
class _Ob:
    """One outbox entry, mutable under the ledger's lock."""

    key: str
    channel: str
    group: str
    payload: str
    seq: int
    created_at: float
    expires_at: float
    state: OutboxState = "pending"
    token: str = ""
    attempts: int = 0
    claimed_at: float | None = None
    due_at: float = 0.0
    last_error: str | None = None

    def __post_init__(self) -> None:
        self.due_at = self.created_at

    def entry(self) -> OutboxEntry:
        return OutboxEntry(self.key, self.channel, self.group, self.payload, self.state,
                           self.token, self.attempts, self.created_at, self.claimed_at,
                           self.due_at, self.last_error)


def _reset_record(now: float, bucket: Bucket, old_spent: int, reason: str) -> SpendRecord:
    role = bucket.scope.split(":", 1)[1] if bucket.scope.startswith("role:") else ""
    return SpendRecord(
        ts=now,
        reservation_id="",
        outcome="reset",
        role=role,
        model="",
        cost_nano=-old_spent,
        scope=bucket.scope,
        metadata={"bucket": bucket.key, "reason": reason},
    )


def _unknown(rid: str) -> ReservationError:
    return ReservationError(
        f"unknown reservation {rid!r}: it was never made on this ledger, or its record "
        "was trimmed after the retention period"
    )
