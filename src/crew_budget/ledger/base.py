"""The ledger interface every backend implements, and the values it speaks in.

A ledger holds, per *bucket* (a scope such as ``role:researcher`` in one
window instance such as ``day 2026-11-25``, in one *unit*), two integers:
``spent`` and ``reserved``, in nano-USD for the ``usd`` unit, in tokens or
calls for the others (see ``Unit`` and ``bucket_need``). Its contract, which
the conformance suite in ``tests/ledger/`` checks on every backend:

- ``reserve`` is all or nothing across every bucket of the request: if any
  limited bucket would have ``spent + reserved + amount > limit``, nothing is
  charged and a ``Denial`` naming that bucket is returned (and a ``blocked``
  spend record appended in the same atomic step).
- Each bucket takes the call's amount in its own unit: ``usd`` the request's
  ``amount_nano``, ``input_tokens`` the draft's prompt-token estimate,
  ``output_tokens`` its reserved output tokens, ``calls`` 1; at the end,
  ``bucket_charge`` says what each unit is charged (the usage's counts on a
  settle, the reserved amounts on an expiry, 0 on a release).
- A reservation ends exactly once: ``settle`` (actual cost), ``release``
  (zero), or expiry of its lease (charged at the reserved amount, marked
  ``expired``; done by ``reap``, which ``reserve`` and ``status`` also run).
  Repeating any of them changes nothing and reports the final state.
- The buckets a reservation charged are the ones it settles, even if the
  window has rolled over since: money lands in the period it was spent in.
- Every settle, release, expiry and block appends one ``SpendRecord``.
- A ledger that lost its state (see ``LedgerReset``) refuses ``reserve``
  until ``recover`` re-arms it; ``charge`` books a journaled fail_open call
  exactly once.
- Window instances are checked against the ledger's own clock: a request
  whose buckets do not contain the ledger's ``now`` raises ``ClockSkew`` with
  that time, and the guard recomputes them from it.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from base64 import urlsafe_b64encode
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from crew_budget.errors import LedgerError
from crew_budget.usage import Usage
from crew_budget.windows import WindowName

__all__ = [
    "UNITS",
    "Bucket",
    "BucketState",
    "ClockSkew",
    "Denial",
    "Ledger",
    "MARGIN_BINS",
    "MARGIN_RESOLUTION",
    "Outcome",
    "Override",
    "OverrideKind",
    "RecordDraft",
    "Reservation",
    "ReserveRequest",
    "SettleResult",
    "SpendRecord",
    "ROLLUP_METRICS",
    "ROLLUP_RETENTION_DAYS",
    "Rollup",
    "RollupTable",
    "SHADOW_KEY",
    "StaleOverrides",
    "Unit",
    "bucket_charge",
    "bucket_need",
    "fold_rollups",
    "record_amount",
    "new_reservation_id",
    "rollup_counts",
]

Outcome = Literal["reserved", "settled", "released", "expired", "blocked", "unguarded", "reset",
                  "override"]


def new_reservation_id() -> str:
    """A random token: whoever holds it owns the reservation (as in redis-py's lock)."""
    # 128 random bits as 22 URL-safe base64 characters (not 32 hex digits:
    # every spend record and tombstone keeps the id, and on Redis each byte
    # of it is RAM; see bench/bench_redis_memory.py).
    return urlsafe_b64encode(os.urandom(16))[:22].decode()


Unit = Literal["usd", "input_tokens", "output_tokens", "calls"]
"""What a bucket counts: nano-USD, prompt tokens, output tokens or calls."""

UNITS: tuple[Unit, ...] = ("usd", "input_tokens", "output_tokens", "calls")


@dataclass(frozen=True, slots=True)
class Bucket:
    """One budget instance: a scope in one window period, with its limit.

    ``limit_nano`` is in the bucket's ``unit``: nano-USD for ``usd`` (the
    default), a number of tokens or calls otherwise (the name predates units).
    """

    scope: str
    window: WindowName
    period: str
    limit_nano: int | None
    starts_at: float
    ends_at: float
    unit: Unit = "usd"

    @property
    def key(self) -> str:
        # A USD bucket keeps the key it always had (existing counters stay
        # valid); another unit is a separate counter, suffixed by its unit.
        if self.unit == "usd":
            return f"{self.scope}|{self.window}|{self.period}"
        return f"{self.scope}|{self.window}|{self.period}|{self.unit}"


def bucket_need(bucket: Bucket, amount_nano: int, draft: RecordDraft) -> int:
    """What a reservation takes from ``bucket``, in the bucket's unit.

    The estimate's nano-USD, its prompt tokens (the estimator counts the
    prompt as the provider bills it: cached and cache-written tokens
    included), the output tokens reserved (the request's ``max_tokens``, or
    the injected cap), or one call.
    """
    unit = bucket.unit
    if unit == "usd":
        return amount_nano
    if unit == "input_tokens":
        return draft.prompt_tokens_estimate
    if unit == "output_tokens":
        return draft.output_tokens_reserved
    return 1


def record_amount(bucket: Bucket, cost_nano: int, record: SpendRecord) -> int:
    """What ``Ledger.charge`` books into ``bucket`` for a call made without a
    reservation: its cost, the record's prompt tokens (uncached + cached +
    cache writes) or output tokens, or one call."""
    unit = bucket.unit
    if unit == "usd":
        return cost_nano
    if unit == "input_tokens":
        return record.input_tokens + record.cached_input_tokens + record.cache_write_tokens
    if unit == "output_tokens":
        return record.output_tokens
    return 1


def bucket_charge(unit: Unit, state: Outcome, cost_nano: int, need: int,
                  usage: Usage | None) -> int:
    """What ending a reservation charges a bucket of ``unit`` (``need``: what it
    reserved there).

    USD: the cost. Other units: on a settle, the usage's counts (input
    tokens as the provider counts the prompt: uncached + cached + cache
    writes; output tokens with reasoning included; one call); on an expiry,
    the reserved amount; on a release, 0 (the provider was never reached).
    A settle whose usage has no prompt tokens (an unreadable usage, charged
    at its reservation) charges the reserved amounts: over-count, never
    under-count.
    """
    if unit == "usd":
        return cost_nano
    if state == "released":
        return 0
    if state != "settled" or usage is None:
        return need
    prompt = usage.input_tokens + usage.cached_input_tokens + usage.cache_write_tokens
    if prompt == 0:
        return need
    if unit == "input_tokens":
        return prompt
    if unit == "output_tokens":
        return usage.output_tokens
    return 1


@dataclass(frozen=True, slots=True)
class BucketState:
    """What a bucket holds right now."""

    bucket: Bucket
    spent_nano: int
    reserved_nano: int

    @property
    def remaining_nano(self) -> int | None:
        if self.bucket.limit_nano is None:
            return None
        return self.bucket.limit_nano - self.spent_nano - self.reserved_nano


@dataclass(frozen=True, slots=True)
class RecordDraft:
    """What is known about a call at reserve time; completed into a SpendRecord."""

    role: str
    model: str
    crew: str | None = None
    estimate_nano: int = 0
    prompt_tokens_estimate: int = 0
    output_tokens_reserved: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["metadata"] = dict(self.metadata)
        return json.dumps(data, separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, text: str) -> RecordDraft:
        return cls(**json.loads(text))


@dataclass(frozen=True, slots=True)
class SpendRecord:
    """One line of the spend history that reports read."""

    ts: float
    reservation_id: str
    outcome: Outcome
    role: str
    model: str
    crew: str | None = None
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    estimate_nano: int = 0
    cost_nano: int = 0
    scope: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        *,
        ts: float,
        reservation_id: str,
        outcome: Outcome,
        draft: RecordDraft,
        cost_nano: int,
        usage: Usage | None = None,
        scope: str | None = None,
    ) -> SpendRecord:
        u = usage or Usage()
        return cls(
            ts=ts,
            reservation_id=reservation_id,
            outcome=outcome,
            role=draft.role,
            model=draft.model,
            crew=draft.crew,
            input_tokens=u.input_tokens,
            cached_input_tokens=u.cached_input_tokens,
            cache_write_tokens=u.cache_write_tokens,
            output_tokens=u.output_tokens,
            reasoning_tokens=u.reasoning_tokens,
            estimate_nano=draft.estimate_nano,
            cost_nano=cost_nano,
            scope=scope,
            metadata=dict(draft.metadata),
        )

    def to_json(self) -> str:
        data = asdict(self)
        data["metadata"] = dict(self.metadata)
        return json.dumps(data, separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, text: str) -> SpendRecord:
        return cls(**json.loads(text))


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    reservation_id: str
    buckets: tuple[Bucket, ...]
    amount_nano: int
    lease_seconds: float
    draft: RecordDraft
    overrides_version: int | None = None
    """The live-limits version the client built its buckets with (see
    ``Ledger.write_overrides``); None: do not check."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """A granted reservation. ``expires_at`` is on the ledger's clock."""

    reservation_id: str
    amount_nano: int
    expires_at: float
    buckets: tuple[Bucket, ...]


@dataclass(frozen=True, slots=True)
class Denial:
    """A refused reservation: the first limited bucket that would overflow.

    ``amount_nano`` is what the call needed from that bucket, in its unit.
    """

    state: BucketState
    amount_nano: int


@dataclass(frozen=True, slots=True)
class SettleResult:
    """The reservation's final state; ``applied`` is False on a repeat."""

    state: Outcome
    applied: bool
    cost_nano: int


# -- rollups ------------------------------------------------------------------
#
# Reports must cost what roles x models x hours cost, not what calls cost:
# every record a reservation produces (settled, expired, released, blocked)
# and every ``unguarded`` one also adds its counts to an hourly aggregate per
# (scope, role, model, crew), in the same atomic step as the record. Raw
# records then become optional detail with their own (shorter) retention;
# rollups are kept ROLLUP_RETENTION_DAYS. ``reset`` records are
# administrative and are not rolled up.

ROLLUP_RETENTION_DAYS = 400
"""How long hourly rollups are kept, on every backend (Redis: the key expiry)."""

ROLLUP_METRICS = (
    "calls", "blocked", "released", "expired", "input_tokens", "cached_input_tokens",
    "cache_write_tokens", "output_tokens", "reasoning_tokens", "cost_nano", "estimate_nano",
    "shadow_blocked", "shadow_blocked_nano",
)
"""The counts of a rollup, in the order every backend stores them.

The last two came later (shadow mode, issue 12): a rollup written before
them reads them as 0 on every backend."""

SHADOW_KEY = "shadow_blocked"
"""The metadata key of a call that shadow mode let through but the limits would
have blocked (``"scope|window"``). Set by the guard only: a caller's metadata
key of that name is dropped, so a rollup's ``shadow_blocked`` is the guard's."""

_CHARGED_OUTCOMES = frozenset({"settled", "expired", "unguarded"})


@dataclass(frozen=True, slots=True)
class Rollup:
    """One UTC hour's totals for one (scope, role, model, crew).

    ``hour`` is the Unix time the hour starts at. ``calls`` counts the
    charged outcomes (settled, expired, unguarded), which alone add tokens,
    ``cost_nano`` and ``estimate_nano``; ``blocked`` and ``released`` count
    their own. ``scope`` is set only on blocked calls (the budget that
    refused them), as on their records.
    """

    hour: float
    scope: str | None
    role: str
    model: str
    crew: str | None
    calls: int = 0
    blocked: int = 0
    released: int = 0
    expired: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_nano: int = 0
    estimate_nano: int = 0
    shadow_blocked: int = 0
    """Charged calls that shadow mode let through but the limits would have blocked."""
    shadow_blocked_nano: int = 0
    """What those calls cost (part of ``cost_nano``)."""

    @property
    def group(self) -> tuple[str | None, str, str, str | None]:
        return (self.scope, self.role, self.model, self.crew)

    def counts(self) -> tuple[int, ...]:
        return tuple(getattr(self, m) for m in ROLLUP_METRICS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RollupGroup = tuple[str | None, str, str, str | None]
"""(scope, role, model, crew): what a rollup is kept per, besides its hour."""


@dataclass(frozen=True, slots=True)
class RollupTable:
    """Rollups as plain rows, for reports over many group-hours.

    A 30-day ``report --by role,model,hour`` reads ~23,000 group-hours: a
    ``Rollup`` object per row (18 fields) and a sort cost more than the
    rest of the report. Here each row is a tuple ``(hour, group_id,
    *counts)``, counts in ``ROLLUP_METRICS`` order, as the ledger stores
    them (a backend reads them straight into this shape); ``groups`` maps
    each ``group_id`` (opaque, hashable: the backend's own group key) to its
    ``RollupGroup``, so a report works on the few groups, not on every row.
    ``per_hour=False``: each group's counts summed over the whole span, one
    row per group, ``hour`` None. Rows are in no particular order.
    """

    groups: Mapping[Any, RollupGroup]
    rows: Sequence[tuple[Any, ...]]
    per_hour: bool = True

    def rollups(self) -> list[Rollup]:
        """The rows as ``Rollup``s (oldest first), as ``Ledger.rollups`` gives them.

        Only for ``per_hour`` tables: a span's sum has no hour.
        """
        if not self.per_hour:
            raise ValueError("a table summed over the span has no hourly rollups")
        acc: dict[RollupKey, list[int]] = {}
        for hour, gid, *counts in self.rows:
            add_rollup(acc, (float(hour), *self.groups[gid]), counts)
        return rollups_from(acc)

    @classmethod
    def of(cls, rollups: Iterable[Rollup], *, per_hour: bool = True) -> RollupTable:
        """A table of ``rollups`` (the default ``Ledger.rollup_table``)."""
        groups: dict[Any, RollupGroup] = {}
        acc: dict[tuple[float | None, RollupGroup], list[int]] = {}
        for r in rollups:
            g = r.group
            groups[g] = g
            key = (r.hour if per_hour else None, g)
            row = acc.get(key)
            if row is None:
                acc[key] = list(r.counts())
            else:
                for i, x in enumerate(r.counts()):
                    row[i] += x
        return cls(groups, [(h, g, *c) for (h, g), c in acc.items()], per_hour)


#: Record outcomes that are audit facts, not calls: rollups hold none of
#: them, so every ledger keeps them beside the rollups (``Ledger.resets``).
AUDIT_OUTCOMES = frozenset({"reset", "override"})


def rollup_counts(record: SpendRecord) -> tuple[int, ...] | None:
    """What ``record`` adds to its rollup (ROLLUP_METRICS order), or None (a reset)."""
    o = record.outcome
    if o in _CHARGED_OUTCOMES:
        shadow = SHADOW_KEY in record.metadata
        return (1, 0, 0, 1 if o == "expired" else 0, record.input_tokens,
                record.cached_input_tokens, record.cache_write_tokens, record.output_tokens,
                record.reasoning_tokens, record.cost_nano, record.estimate_nano,
                1 if shadow else 0, record.cost_nano if shadow else 0)
    if o == "blocked":
        return (0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    if o == "released":
        return (0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    return None


def rollup_hour(ts: float) -> float:
    """The start of the UTC hour holding ``ts``."""
    return float(int(ts // 3600) * 3600)


RollupKey = tuple[float, str | None, str, str, str | None]


def add_rollup(acc: dict[RollupKey, list[int]], key: RollupKey, counts: Sequence[int]) -> None:
    """Add ``counts`` into ``acc[key]`` (integers: exact).

    Fewer counts than ``ROLLUP_METRICS`` (a rollup stored before the later
    metrics existed) count the missing ones as 0.
    """
    row = acc.get(key)
    if row is None:
        acc[key] = [*counts, *[0] * (len(ROLLUP_METRICS) - len(counts))]
    else:
        for i, x in enumerate(counts):
            row[i] += x


def rollups_from(acc: Mapping[RollupKey, Sequence[int]]) -> list[Rollup]:
    """Accumulated counts as Rollups, sorted by hour then group."""
    out = [Rollup(*key, *counts) for key, counts in acc.items()]
    out.sort(key=lambda r: (r.hour, r.scope or "", r.role, r.model, r.crew or ""))
    return out


def fold_rollups(records: Iterable[SpendRecord]) -> list[Rollup]:
    """The rollups ``records`` add up to: what every ledger must store."""
    acc: dict[RollupKey, list[int]] = {}
    for r in records:
        counts = rollup_counts(r)
        if counts is not None:
            add_rollup(acc, (rollup_hour(r.ts), r.scope, r.role, r.model, r.crew), counts)
    return rollups_from(acc)


def in_span(hour: float, since: float | None, until: float | None) -> bool:
    """Whether the hour starting at ``hour`` overlaps ``[since, until)``."""
    return (since is None or hour + 3600 > since) and (until is None or hour < until)


MARGIN_RESOLUTION = 200
"""Estimate-margin histogram bins per 100 % of under-estimation (0.5 % each)."""
MARGIN_BINS = 201
"""Bins 0 (no under-estimate) to 200 (100 % and more): the most a family stores."""


def merge_margin_bins(old: Mapping[int, int], add: Mapping[int, int],
                      history: int) -> dict[int, int]:
    """``old`` plus ``add``; when that holds more than ``history`` samples, every
    count is halved (rounded down, empty bins dropped), so old samples fade.

    Every backend stores exactly this (lua/margin.lua mirrors it).
    """
    merged = {int(b): int(c) for b, c in old.items() if int(c) > 0}
    for b, c in add.items():
        if not 0 <= int(b) < MARGIN_BINS or int(c) < 0:
            raise ValueError(f"bad estimate-margin sample bin {b!r} count {c!r}")
        if c:
            merged[int(b)] = merged.get(int(b), 0) + int(c)
    if sum(merged.values()) > history:
        merged = {b: c // 2 for b, c in merged.items() if c // 2 > 0}
    return merged


def encode_margin_bins(bins: Mapping[int, int]) -> str:
    """``"b:c,b:c"`` by bin: how SQLite and Redis store one family's histogram."""
    return ",".join(f"{b}:{bins[b]}" for b in sorted(bins) if bins[b] > 0)


def decode_margin_bins(text: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for pair in text.split(",") if text else ():
        b, _, c = pair.partition(":")
        out[int(b)] = int(c)
    return out


class ClockSkew(Exception):
    """The request's window periods do not contain the ledger's clock."""

    def __init__(self, ledger_now: float) -> None:
        self.ledger_now = ledger_now
        super().__init__(f"ledger clock is {ledger_now}")


class StaleOverrides(Exception):
    """The request was built with an old live-limits version: nothing was done.

    Raised by ``reserve`` (before any write) when the request's
    ``overrides_version`` differs from the ledger's; the guard reads the
    overrides again (``Ledger.overrides_state``), rebuilds its buckets and
    retries. Like ``ClockSkew``, internal to the guard-ledger conversation.
    """

    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(f"live limits are at version {version}")


OverrideKind = Literal["hourly", "daily", "monthly", "paused"]
OVERRIDE_KINDS: tuple[OverrideKind, ...] = ("hourly", "daily", "monthly", "paused")


@dataclass(frozen=True, slots=True)
class Override:
    """One live limit an operator set on a role (``crew-budget set/pause``).

    ``kind`` is a window whose limit ``limit_nano`` replaces the YAML's, or
    ``paused`` (every call of the role refused; ``limit_nano`` None).
    ``who``/``reason``/``set_at`` are the audit trail; ``until`` (ledger
    clock, Unix s) is when it stops applying, None for never. Overrides live
    in the ledger, never in a request (invariant 8).
    """

    role: str
    kind: OverrideKind
    limit_nano: int | None
    who: str
    reason: str
    set_at: float
    until: float | None = None

    @property
    def key(self) -> str:
        return f"{self.role}|{self.kind}"

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Override:
        return cls(**json.loads(text))


class Ledger(ABC):
    """Atomic budget storage. See the module docstring for the contract."""

    url: str

    @abstractmethod
    def now(self) -> float:
        """The ledger's clock, in Unix seconds."""

    @abstractmethod
    def reserve(self, request: ReserveRequest) -> Reservation | Denial:
        """Charge ``amount`` as reserved to every bucket, or to none."""

    @abstractmethod
    def settle(self, reservation_id: str, cost_nano: int, usage: Usage) -> SettleResult:
        """Replace the reservation by the actual cost (idempotent)."""

    @abstractmethod
    def release(self, reservation_id: str) -> SettleResult:
        """Drop the reservation at zero cost (idempotent)."""

    @abstractmethod
    def reap(self, limit: int = 1000) -> int:
        """Expire reservations whose lease ran out; returns how many."""

    @abstractmethod
    def status(self, buckets: Sequence[Bucket]) -> list[BucketState]:
        """Current spent/reserved of each bucket (after reaping)."""

    @abstractmethod
    def reservation_state(self, reservation_id: str) -> Outcome | None:
        """``reserved``/``settled``/``released``/``expired``, or None if unknown."""

    @abstractmethod
    def append_record(self, record: SpendRecord) -> None:
        """Append a record that no reservation produced (e.g. ``unguarded``)."""

    @abstractmethod
    def records(self, since: float | None = None, until: float | None = None) -> list[SpendRecord]:
        """Spend records with ``since <= ts < until``, oldest first."""

    def rollups(self, since: float | None = None, until: float | None = None) -> list[Rollup]:
        """Hourly rollups of the hours overlapping ``[since, until)``, oldest first.

        Built-in ledgers keep them as they write (see ``Rollup``); this
        default, for a third-party ledger written before rollups existed,
        folds its records (as slow as records, but exact).
        """
        lo = None if since is None else rollup_hour(since)
        return [r for r in fold_rollups(self.records(lo, until)) if in_span(r.hour, since, until)]

    def rollup_table(self, since: float | None = None, until: float | None = None, *,
                     per_hour: bool = True) -> RollupTable:
        """The rollups of the hours overlapping ``[since, until)`` as a ``RollupTable``
        (``per_hour=False``: summed per group over the span).

        What ``rollups`` holds, in the shape reports read fastest; built-in
        ledgers read it without making a ``Rollup`` per row.
        """
        return RollupTable.of(self.rollups(since, until), per_hour=per_hour)

    def resets(self, since: float | None = None, until: float | None = None) -> list[SpendRecord]:
        """The audit records (``AUDIT_OUTCOMES``: resets and live-limit
        overrides) with ``since <= ts < until``, oldest first.

        Built-in ledgers keep them as long as rollups (they are the audit of
        who zeroed a budget or changed a limit), whatever the raw records'
        retention; this default filters the records.
        """
        return [r for r in self.records(since, until) if r.outcome in AUDIT_OUTCOMES]

    @property
    def records_retention_days(self) -> float | None:
        """How long raw records are kept (0: none), or None if unknown."""
        return None

    @abstractmethod
    def claim(self, marker: str, ttl_seconds: float) -> bool:
        """Atomically claim ``marker`` once (True for the first caller only).

        Used for exactly-once alerts across processes.
        """

    @abstractmethod
    def reset(self, bucket: Bucket, *, reason: str = "") -> BucketState:
        """Zero a bucket's spend (reservations in flight stay) and record it."""

    # -- integrity: optional, with safe defaults ------------------------------

    def charge(self, charge_id: str, buckets: Sequence[Bucket], cost_nano: int,
               record: SpendRecord) -> bool:
        """Book a call made without a reservation, exactly once per ``charge_id``.

        For calls ``fail_open`` let through while the ledger was down,
        replayed from the guard's local journal: ``cost_nano`` goes into
        ``spent`` of every bucket (past any limit: the money is spent) and
        ``record`` is appended, in one atomic step. Returns False, changing
        nothing, if this id was charged before. A bucket of another unit
        gets what ``record_amount`` says (the record's tokens, one call).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot book journaled calls")

    def oldest_lease(self) -> float | None:
        """When the earliest reservation still held ends (ledger clock), or None."""
        return None

    def epoch_state(self) -> str | None:
        """The ledger's integrity epoch (``new:``/``recovered:``/``lost:...``), or
        None where the backend keeps none (see ``LedgerReset``)."""
        return None

    def recover(self, *, who: str, reason: str) -> str:
        """Accept a loss of state and re-arm the ledger, audited in its records.

        Returns the epoch replaced. This default (a ledger that cannot lose
        its state behind the process's back) only writes the audit record.
        """
        self.append_record(SpendRecord(
            ts=self.now(), reservation_id="", outcome="reset", role="", model="",
            metadata={"event": "ledger_recovered", "who": who, "reason": reason,
                      "replaced_epoch": ""},
        ))
        return ""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the alert outbox ------------------------------------------------------
    #
    # Alerts must survive a dead webhook and a dead process, so they are not
    # sent from memory: each one is first *put* into this outbox (idempotent
    # by key: the put is also the exactly-once claim of the alert), then
    # *claimed* with a lease by whichever process delivers it, and finally
    # *acknowledged* once the sink took it, *retried* later, or *failed* when
    # delivery gives up. A claimant that dies simply lets its lease run out,
    # and the entry becomes claimable by any other process. Within a group
    # (one budget's alerts for one sink) entries are delivered strictly in
    # the order they were put: only the oldest unfinished entry of a group is
    # claimable, which is what makes 50 % arrive before 80 % before 100 %.
    # Times are on the ledger's clock; delays and leases are relative so a
    # client with a wrong clock cannot shorten them.
    #
    # Not abstract: a third-party ledger written before the outbox existed
    # keeps working for budgets, and fails only when alerts are used.

    def outbox_put(self, key: str, payload: str, *, channel: str, group: str,
                   ttl_seconds: float) -> bool:
        """Add entry ``key`` (due now) unless it exists; True if this call added it.

        The key (and with it the "already sent" memory) lives ``ttl_seconds``;
        ``channel`` is who can deliver it (a sink's name), ``group`` orders it.
        """
        raise _no_outbox(self)

    def outbox_claim(self, channel: str, *, lease_seconds: float,
                     limit: int = 10) -> list[OutboxEntry]:
        """Lease up to ``limit`` due entries of ``channel``, oldest first.

        Due means pending with its retry time reached, or claimed by someone
        whose lease ran out. Each returned entry carries a fresh ``token``
        that ack/retry/fail must present: a claimant whose lease was taken
        over can no longer finish the entry.
        """
        raise _no_outbox(self)

    def outbox_ack(self, key: str, token: str) -> bool:
        """Mark a claimed entry delivered (False: not ours any more, or unknown)."""
        raise _no_outbox(self)

    def outbox_retry(self, key: str, token: str, *, delay_seconds: float, error: str) -> bool:
        """Put a claimed entry back, due again in ``delay_seconds``, noting ``error``."""
        raise _no_outbox(self)

    def outbox_fail(self, key: str, token: str, *, error: str) -> bool:
        """Mark a claimed entry given up (terminal: never claimed again)."""
        raise _no_outbox(self)

    def outbox_get(self, key: str) -> OutboxEntry | None:
        """The entry ``key`` as stored (token included), or None."""
        raise _no_outbox(self)

    # -- live limits (crew-budget set / pause / resume) -------------------------
    #
    # Operators change a role's limits without a restart: the overrides live
    # in the ledger with a version number (an integer that only grows, never
    # expires). Every reserve carries the version its buckets were built
    # with and the ledger compares it, before any write, with its own: a
    # mismatch raises ``StaleOverrides`` and the guard re-reads them. So the
    # hot path pays one integer comparison, and the round trip to read the
    # overrides only happens when they changed. Not abstract: a ledger that
    # does not implement them ignores the version and has no live limits.

    def overrides_state(self) -> tuple[int, tuple[Override, ...]]:
        """The live-limits version and every stored override (expired ones too)."""
        return 0, ()

    def write_overrides(self, put: Sequence[Override], drop: Sequence[str],
                        record: SpendRecord) -> int:
        """Store ``put``, delete the overrides keyed ``drop`` (``role|kind``),
        bump the version and append the audit ``record``, in one atomic step.

        Returns the new version.
        """
        raise LedgerError(
            f"{type(self).__name__} has no live limits. Fix: use a memory://, sqlite:/// "
            "or redis:// ledger, or implement Ledger.write_overrides"
        )


    # -- estimate margins (crew_budget.margin) ----------------------------------
    #
    # Per model family, a histogram of how far the estimator's prompt counts
    # fell under what the provider billed: at most MARGIN_BINS small integers,
    # merged atomically so every process shares one margin. Not abstract: a
    # ledger without them leaves each process with what it learned itself.

    def margin_merge(self, family: str, add: Mapping[int, int],
                     history: int) -> dict[int, int] | None:
        """Add ``add`` (bin -> count) to ``family``'s histogram, halving it once it
        holds more than ``history`` samples (``merge_margin_bins``), in one
        atomic step; returns the merged histogram, or None if not stored."""
        return None

    def margin_read(self, families: Sequence[str] | None) -> dict[str, dict[int, int]] | None:
        """The stored histograms of ``families`` (None: every family), or None
        if this ledger stores none."""
        return None


OutboxState = Literal["pending", "claimed", "delivered", "failed"]


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One alert for one sink in the ledger's outbox (see ``Ledger.outbox_put``).

    ``attempts`` counts claims so far (this one included, for a claimed
    entry); ``created_at``, ``claimed_at`` and ``due_at`` are on the ledger's
    clock; ``due_at`` is the lease end while claimed.
    """

    key: str
    channel: str
    group: str
    payload: str
    state: OutboxState
    token: str
    attempts: int
    created_at: float
    claimed_at: float | None
    due_at: float
    last_error: str | None = None


def _no_outbox(ledger: Ledger) -> LedgerError:
    return LedgerError(
        f"{type(ledger).__name__} has no alert outbox, which alert delivery needs. Fix: "
        "use a memory://, sqlite:/// or redis:// ledger, or implement the outbox_* methods "
        "(see crew_budget.ledger.base.Ledger.outbox_put)"
    )
