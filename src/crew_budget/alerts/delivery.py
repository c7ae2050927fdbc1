"""Delivering alerts through the ledger's outbox: at least once, in order, loudly.

An alert is never sent from memory. ``AlertManager.emit`` *puts* it into the
ledger's outbox once per sink (``Ledger.outbox_put``, idempotent by key, so
the put is also the cross-process "only once" decision). Each sink then has
one ``SinkDelivery`` loop per process that *claims* due entries with a lease,
sends them, and *acknowledges* them; a failed send is put back with
exponential backoff until ``give_up_after_seconds`` (then one ERROR per
alert); a process that dies holding a claim just lets the lease run out, and
any other process with the same sink takes the entry over.

Why per sink: a webhook that is down must not make a working mail sink send
twice, so each (alert, sink) pair is acknowledged on its own.

Why groups: a budget's alerts (its thresholds and its "exhausted") share a
group per sink, and the ledger hands out only the oldest unfinished entry of a
group. Together with ``AlertManager`` putting them in ascending order, 50 %
is delivered before 80 % before 100 % before "exhausted", whichever process
raised or delivers them.

Exactly once, precisely: each (alert, sink) is put once, and acknowledged
once. A second send happens only if a sink's send outlives the claim's lease
(``lease_seconds`` must exceed every sink's timeout: checked at start) or a
process dies after sending and before acknowledging. A receiver can drop such
a repeat by the alert's ``key``, which every payload carries.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from crew_budget.alerts.config import DeliveryConfig
from crew_budget.alerts.events import Alert
from crew_budget.alerts.sinks import Sink
from crew_budget.errors import LedgerError
from crew_budget.ledger.base import Ledger, OutboxEntry

__all__ = ["SinkDelivery", "SinkStats", "decode_alert", "encode_alert", "outbox_group"]

log = logging.getLogger("crew_budget.alerts")

_BUCKET_KINDS = frozenset({"threshold", "exhausted", "shadow_blocked"})


def outbox_group(alert: Alert) -> str:
    """The ordering group: a budget bucket's alerts together, anything else alone."""
    if alert.kind in _BUCKET_KINDS and alert.scope and alert.window and alert.period:
        return f"{alert.scope}|{alert.window}|{alert.period}"
    return alert.key


def encode_alert(alert: Alert) -> str:
    """JSON for the outbox; ``Decimal`` values keep their exact type (``decode_alert``)."""
    values: dict[str, Any] = {}
    decimals: list[str] = []
    for k, v in alert.values.items():
        if isinstance(v, Decimal):
            decimals.append(k)
            values[k] = str(v)
        else:
            values[k] = list(v) if isinstance(v, tuple) else v
    return json.dumps({
        "kind": alert.kind, "key": alert.key, "title": alert.title, "message": alert.message,
        "severity": alert.severity, "ts": alert.ts, "scope": alert.scope, "role": alert.role,
        "window": alert.window, "period": alert.period, "values": values,
        "decimals": decimals,
    }, separators=(",", ":"), sort_keys=True, default=str)


def decode_alert(payload: str) -> Alert:
    data = json.loads(payload)
    values: dict[str, Any] = data["values"]
    for k in data.get("decimals", ()):
        values[k] = Decimal(values[k])
    return Alert(kind=data["kind"], key=data["key"], title=data["title"],
                 message=data["message"], severity=data["severity"], ts=data["ts"],
                 scope=data["scope"], role=data["role"], window=data["window"],
                 period=data["period"], values=values)


@dataclass(slots=True)
class SinkStats:
    """Delivery counters of one sink in this process (``AlertManager.stats()``).

    ``delivered``: sends done; ``retries``: failed sends put back for later;
    ``failed``: alerts given up; ``dropped`` stays 0 (kept for compatibility:
    the outbox has no bounded queue to overflow).
    """

    name: str
    delivered: int = 0
    failed: int = 0
    retries: int = 0
    dropped: int = 0
    last_error: str | None = None
    failing: bool = False


class SinkDelivery:
    """One sink's delivery loop in this process: claim, send, acknowledge."""

    def __init__(self, sink: Sink, channel: str, ledger: Ledger,
                 delivery: DeliveryConfig) -> None:
        self.sink = sink
        self.channel = channel
        self.ledger = ledger
        self.delivery = delivery
        self.stats = SinkStats(sink.name)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._busy = threading.Lock()
        self._ledger_down = False
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"crew-budget-sink-{self.sink.name}")
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            worked = self.deliver_due()
            if not worked:
                self._wake.wait(self.delivery.poll_seconds)
                self._wake.clear()

    # -- one pass --------------------------------------------------------------

    def deliver_due(self, limit: int = 16) -> int:
        """Claim what is due for this sink now and deliver it; returns how many."""
        with self._busy:
            try:
                entries = self.ledger.outbox_claim(
                    self.channel, lease_seconds=self.delivery.lease_seconds, limit=limit)
            except LedgerError as exc:
                if not self._ledger_down:
                    self._ledger_down = True
                    log.warning("crew-budget: cannot read the alert outbox (%s); alerts wait "
                                "in the ledger and are sent when it is back", exc)
                return 0
            self._ledger_down = False
            for i, entry in enumerate(entries):
                if self._stop.is_set():  # hand the rest back now, not after the lease
                    for rest in entries[i:]:
                        with contextlib.suppress(LedgerError):
                            self.ledger.outbox_retry(
                                rest.key, rest.token, delay_seconds=0.0,
                                error="not sent: the delivering process stopped")
                    break
                self._deliver(entry)
            return len(entries)

    def _deliver(self, entry: OutboxEntry) -> None:
        try:
            alert = decode_alert(entry.payload)
        except (ValueError, KeyError, TypeError) as exc:
            self._finish_failed(entry, f"unreadable outbox payload: {exc}", None)
            return
        try:
            self.sink.send(alert)
        except Exception as exc:
            self._failed_send(entry, alert, f"{type(exc).__name__}: {exc}")
            return
        try:
            acked = self.ledger.outbox_ack(entry.key, entry.token)
        except LedgerError as exc:
            acked = False
            log.warning("crew-budget: alert %s was delivered to %s but the ledger could not "
                        "record it (%s); it may be delivered again", alert.key, self.sink.name,
                        exc)
        else:
            if not acked:
                log.warning(
                    "crew-budget: alert %s was delivered to %s after its claim lapsed; "
                    "another process may deliver it too. Fix: raise "
                    "alerts.delivery.lease_seconds above the sink's timeout",
                    alert.key, self.sink.name)
        self.stats.delivered += 1
        if self.stats.failing:
            log.warning("crew-budget: alert sink %s works again", self.sink.name)
            self.stats.failing = False

    def _failed_send(self, entry: OutboxEntry, alert: Alert, error: str) -> None:
        d = self.delivery
        self.stats.last_error = error
        age = (entry.claimed_at if entry.claimed_at is not None else entry.created_at) - (
            entry.created_at)
        if (d.attempts is not None and entry.attempts >= d.attempts) or (
                age >= d.give_up_after_seconds):
            self._finish_failed(entry, error, alert)
            return
        delay = min(d.backoff_seconds * 2 ** max(entry.attempts - 1, 0), d.max_backoff_seconds)
        # The last try lands at the give-up time, not a whole backoff after it.
        delay = max(0.0, min(delay, d.give_up_after_seconds - age))
        with contextlib.suppress(LedgerError):  # else the claim lapses: retried anyway
            self.ledger.outbox_retry(entry.key, entry.token, delay_seconds=delay, error=error)
        self.stats.retries += 1
        if not self.stats.failing:  # one warning per burst; each give-up is an ERROR
            self.stats.failing = True
            log.warning(
                "crew-budget: alert sink %s failed (%s); alert %r will be retried with "
                "backoff for up to %s s after it was raised. Further failures of this sink "
                "are counted in AlertManager.stats() until it works again.",
                self.sink.name, error, alert.title, _secs(d.give_up_after_seconds))

    def _finish_failed(self, entry: OutboxEntry, error: str, alert: Alert | None) -> None:
        try:
            done = self.ledger.outbox_fail(entry.key, entry.token, error=error)
        except LedgerError:
            return  # the claim lapses; whoever claims it next decides again
        if not done:
            return
        self.stats.failed += 1
        self.stats.failing = True
        log.error(
            "crew-budget: alert sink %s failed %d times over %s s and GAVE UP on alert %s "
            "(%r), which will not reach that sink; last error: %s. Fix the sink's address or "
            "credentials in alerts.sinks, or raise alerts.delivery.give_up_after_seconds.",
            self.sink.name, entry.attempts,
            _secs((entry.claimed_at or entry.created_at) - entry.created_at),
            alert.key if alert else entry.key, alert.title if alert else "?", error,
        )

    def pending(self, keys: Mapping[str, None]) -> list[str]:
        """Which of ``keys`` (outbox keys) are not yet delivered or given up."""
        out = []
        for key in keys:
            entry = self.ledger.outbox_get(key)
            if entry is not None and entry.state in ("pending", "claimed"):
                out.append(key)
        return out


def _secs(seconds: float) -> str:
    return f"{seconds:.1f}"
