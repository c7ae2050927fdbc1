"""Ledgers, chosen by URL (as ``limits`` chooses its storage).

=========================  ==============================  =====================
URL                        for                             atomicity
=========================  ==============================  =====================
``memory://``              tests, one process              a lock
``sqlite:///path/to.db``   one machine, many processes     ``BEGIN IMMEDIATE``
``redis://``/``rediss://`` many machines (cluster-safe)    one Lua script per op
=========================  ==============================  =====================
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from crew_budget.errors import ConfigError
from crew_budget.ledger.base import (
    ROLLUP_METRICS,
    ROLLUP_RETENTION_DAYS,
    UNITS,
    Bucket,
    BucketState,
    ClockSkew,
    Denial,
    Ledger,
    Outcome,
    Override,
    RecordDraft,
    Reservation,
    ReserveRequest,
    Rollup,
    SettleResult,
    SpendRecord,
    StaleOverrides,
    Unit,
    bucket_charge,
    bucket_need,
    fold_rollups,
    new_reservation_id,
)

__all__ = [
    "ROLLUP_METRICS",
    "ROLLUP_RETENTION_DAYS",
    "Bucket",
    "BucketState",
    "ClockSkew",
    "Denial",
    "Ledger",
    "Outcome",
    "Override",
    "RecordDraft",
    "Reservation",
    "ReserveRequest",
    "Rollup",
    "SettleResult",
    "SpendRecord",
    "StaleOverrides",
    "UNITS",
    "Unit",
    "bucket_charge",
    "bucket_need",
    "fold_rollups",
    "new_reservation_id",
    "open_ledger",
]


def open_ledger(
    url: str,
    *,
    namespace: str = "default",
    retention_days: int = 90,
    records_retention_days: int | None = None,
    clock: Callable[[], float] | None = None,
    create: bool = True,
) -> Ledger:
    """Open the ledger a URL names. ``clock`` is for tests (memory/SQLite only).

    ``create=False`` opens only a ledger that already exists: a SQLite file
    that is missing (or is not a crew-budget ledger) raises ``LedgerNotFound``
    and nothing is created on disk. The read-only CLI commands use it, so a
    typo'd path is an error instead of a fresh empty ledger reporting $0.00.
    Memory and Redis ledgers have nothing to create up front.

    ``records_retention_days`` is how long raw spend records are kept (0:
    none; None: ``retention_days``, or 7 days on Redis); hourly rollups,
    which reports read, are kept 400 days on every backend.
    """
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from crew_budget.ledger.memory import MemoryLedger

        return MemoryLedger(url, clock=clock, retention_days=retention_days,
                            records_retention_days=records_retention_days)
    if scheme == "sqlite":
        from crew_budget.ledger.sqlite import SQLiteLedger

        return SQLiteLedger(url, clock=clock, retention_days=retention_days,
                            records_retention_days=records_retention_days, create=create)
    if scheme.startswith("redis"):
        from crew_budget.ledger.redis import RedisLedger

        return RedisLedger(url, namespace=namespace, retention_days=retention_days,
                           records_retention_days=records_retention_days)
    from crew_budget.redact import redact_url

    raise ConfigError(
        f"unsupported ledger URL {redact_url(url)!r}; use memory://, sqlite:///path/ledger.db or "
        "redis://host:6379/0",
        source="ledger",
    )
