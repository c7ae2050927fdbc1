"""``AlertManager``: watches a ``Guard`` and sends each alert exactly once.

Nothing here runs on the LLM call's thread except one ``queue.put_nowait``
in the guard listener. A worker thread drains the queue, reads the budgets
of the roles that just spent, asks the pure rules in ``rules.py`` which
thresholds and anomalies hold, and puts each alert into the ledger's
*outbox*, once per sink (``Ledger.outbox_put``, idempotent by key): among any
number of processes sharing the ledger, each alert is stored once. Each sink
has its own delivery thread (``delivery.SinkDelivery``) that claims due
alerts with a lease, sends them and acknowledges them, retrying with backoff
until ``delivery.give_up_after_seconds`` (then an ERROR). A dead webhook
delays nobody, a dead process loses nothing: its claims lapse and another
process delivers.

Order: a budget's thresholds are put in ascending order, before its
"exhausted" alert, and the outbox delivers a budget's alerts one after the
other in that order. The 100 % threshold fires when committed spend reaches
the limit, or when the budget refuses a call, whichever comes first (see
``rules.thresholds``).

Usage::

    guard = Guard.from_config("budgets.yaml")   # starts guard.alerts if the YAML
                                                # has an alerts: section
    alerts = AlertManager(guard)          # or build one by hand (replaces it)
    ...
    alerts.close()                        # or use it as a context manager
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from crew_budget.alerts.config import AlertsConfig
from crew_budget.alerts.delivery import SinkDelivery, SinkStats, encode_alert, outbox_group
from crew_budget.alerts.events import Alert
from crew_budget.alerts.rules import (
    Exhaustion,
    burn_rate,
    cost_per_call,
    exhausted,
    new_model,
    shadow_blocked,
    spend_spike,
    thresholds,
)
from crew_budget.alerts.sinks import CallableSink, Sink, build_sinks
from crew_budget.errors import ConfigError, LedgerError
from crew_budget.ledger.base import Bucket, BucketState
from crew_budget.windows import get_tz

if TYPE_CHECKING:  # the guard imports config, which imports alerts.config
    from crew_budget.guard import Guard, GuardEvent

__all__ = ["AlertManager", "SinkStats"]

log = logging.getLogger("crew_budget.alerts")

_SPEND = frozenset({"settled", "expired", "unguarded"})
_STOP = object()


class AlertManager:
    """Thresholds, exhaustion and anomaly alerts for one ``Guard``.

    ``config`` defaults to the guard's ``alerts:`` section. ``sinks`` adds
    (or, with ``replace_sinks=True``, replaces) the YAML's sinks with sink
    objects or plain callables taking an ``Alert``. A sink is known to the
    outbox by its ``name``: every process that configures a sink of the same
    name can deliver (and take over) its alerts. ``sleep`` is accepted for
    compatibility and unused: retries wait in the ledger, not in a thread.
    """

    def __init__(
        self,
        guard: Guard,
        config: AlertsConfig | None = None,
        *,
        sinks: Sequence[Sink | Callable[[Alert], Any]] = (),
        replace_sinks: bool = False,
        start: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        batch_seconds: float = 0.05,
    ) -> None:
        if config is None:
            config = _config_of(guard)
        self.guard = guard
        self.config = config
        # After the first event the worker waits this long and evaluates the
        # whole batch once: a busy agent loop costs ~20 ledger reads a second,
        # not one per call, and competes less with the calls themselves.
        self.batch_seconds = batch_seconds
        self._tz = get_tz(guard.config.timezone)
        built: list[Sink] = [] if replace_sinks else build_sinks(config.sinks)
        built += [s if isinstance(s, Sink) else CallableSink(s) for s in sinks]
        channels: set[str] = set()
        self._workers: list[SinkDelivery] = []
        lease = config.delivery.lease_seconds
        for sink in built:
            timeout = getattr(sink, "timeout", None)
            if isinstance(timeout, (int, float)) and timeout >= lease:
                # A send may take up to its timeout; a claim that lapses
                # first lets another process send the same alert again.
                raise ConfigError(
                    f"the claim lease ({lease:g} s) must be longer than the timeout of sink "
                    f"{sink.name} ({timeout:g} s), or a slow send could be taken over and "
                    "sent twice. Fix: raise lease_seconds or lower the sink's "
                    "timeout_seconds",
                    source="alerts", path="alerts.delivery.lease_seconds",
                )
            channel, n = sink.name, 1
            while channel in channels:  # two sinks of one name stay two sinks
                n += 1
                channel = f"{sink.name}#{n}"
            channels.add(channel)
            self._workers.append(SinkDelivery(sink, channel, guard.ledger, config.delivery))
        self._mine: dict[str, None] = {}  # outbox keys this manager put, not yet done
        self._events: queue.Queue[Any] = queue.Queue(10_000)
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._last_anomaly_mono = float("-inf")
        self._due_roles: set[str] = set()
        self.dropped_events = 0
        self.sent: list[Alert] = []  # alerts this process won and dispatched (bounded)
        self._thread: threading.Thread | None = None
        self._remove_listener: Callable[[], None] | None = None
        if start and config.enabled:
            previous = getattr(guard, "alerts", None)
            if previous is not None and previous is not self:
                previous.close()
            guard.alerts = self
            self.start()

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="crew-budget-alerts", daemon=True)
        self._thread.start()
        self._remove_listener = self.guard.add_listener(self._on_event)
        for w in self._workers:
            w.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event is evaluated and every alert this
        manager raised is delivered or given up (by any process).

        Returns False at ``timeout`` with work left: the alerts stay in the
        ledger's outbox and are delivered later, by this or another process.
        Without running threads (``start=False``) it delivers them itself.
        """
        deadline = time.monotonic() + timeout
        while self._events.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        while True:
            left = False
            for w in self._workers:
                if not w.running:
                    w.deliver_due()
                else:
                    w.wake()
            with self._lock:
                keys = dict(self._mine)
            for w in self._workers:
                mine = {k: None for k in keys if k.endswith(">" + w.channel)}
                try:
                    waiting = w.pending(mine) if mine else []
                except LedgerError:
                    waiting = list(mine)
                with self._lock:
                    for k in set(mine) - set(waiting):
                        self._mine.pop(k, None)
                left = left or bool(waiting)
            if not left:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def close(self, timeout: float = 5.0) -> None:
        """Stop listening, deliver what is queued (up to ``timeout``), stop threads."""
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        self.flush(timeout)
        if self._thread is not None:
            self._events.put(_STOP)
            self._thread.join(timeout)
            self._thread = None
        for w in self._workers:
            w.stop(timeout)

    def __enter__(self) -> AlertManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> list[SinkStats]:
        return [w.stats for w in self._workers]

    # -- the hot path: one put_nowait ------------------------------------------

    def _on_event(self, event: GuardEvent) -> None:
        if not event.applied or event.outcome not in (*_SPEND, "blocked", "shadow_blocked"):
            return
        try:
            self._events.put_nowait(event)
        except queue.Full:
            self.dropped_events += 1

    # -- the worker ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                first = self._events.get(timeout=self._due_in())
            except queue.Empty:  # anomaly checks skipped by the interval are due now
                self._run_due_check()
                continue
            if self.batch_seconds > 0 and first is not _STOP:
                time.sleep(self.batch_seconds)
            batch = [first]
            while True:
                try:
                    batch.append(self._events.get_nowait())
                except queue.Empty:
                    break
            stop = any(e is _STOP for e in batch)
            try:
                self._process([e for e in batch if e is not _STOP])
            except Exception:
                log.exception("crew-budget: alert evaluation failed (calls are unaffected)")
            finally:
                for _ in batch:
                    self._events.task_done()
            if stop:
                return

    def _due_in(self) -> float | None:
        if not self._due_roles:
            return None
        interval = self.config.anomalies.check_interval_seconds
        return max(0.0, self._last_anomaly_mono + interval - time.monotonic()) + 0.01

    def _run_due_check(self) -> None:
        roles, self._due_roles = self._due_roles, set()
        try:
            self.check(sorted(roles))
        except Exception:
            log.exception("crew-budget: alert evaluation failed (calls are unaffected)")

    def _process(self, events: Sequence[GuardEvent]) -> None:
        if not events:
            return
        blocked = [e for e in events if e.outcome == "blocked" and e.error is not None]
        roles = sorted({e.role for e in events if e.outcome in _SPEND}
                       | {e.role for e in blocked})
        refused = {f"{e.error.scope}|{e.error.window}|{e.error.period}"
                   for e in blocked if e.error is not None}
        now = self.guard.ledger.now()
        # Thresholds first, "exhausted" after: the outbox delivers a budget's
        # alerts in the order they were put, so 50/80/100 % precede it.
        if roles and not self._check(roles, now, refused)[1]:
            return  # a put failed: "exhausted" waits for the next refused call
        for e in blocked:
            self._exhausted(e, now)
        for e in events:  # shadow mode: what enforcing would have blocked (sent anyway)
            if e.outcome == "shadow_blocked" and e.error is not None:
                self._exhausted(e, now, rule=shadow_blocked)

    def _exhausted(self, event: GuardEvent, now: float,
                   rule: Callable[..., Alert] | None = None) -> None:
        err = event.error
        assert err is not None
        ends = next((b.ends_at for b in self.guard.buckets(err.role, now)
                     if b.scope == err.scope and b.window == err.window
                     and b.period == err.period), None)
        self.emit((rule or exhausted)(Exhaustion(
            role=err.role, model=err.model, scope=err.scope, window=err.window,
            period=err.period, limit=err.limit, spent=err.spent, reserved=err.reserved,
            estimate=err.estimate, resets_at=ends,
        ), now, self._tz), ttl=(ends - now + 86400) if ends else None)

    def check(self, roles: Iterable[str] | None = None, *, now: float | None = None,
              refused: Collection[str] = ()) -> list[Alert]:
        """Evaluate thresholds and anomalies now; returns the alerts this call raised.

        The worker calls this after spend; call it yourself (e.g. from cron
        with ``roles=None`` for every configured budget) to evaluate without
        traffic. ``refused``: bucket keys that just refused a call, which
        counts as 100 % (see ``rules.thresholds``).
        """
        return self._check(roles, now, refused)[0]

    def _check(self, roles: Iterable[str] | None, now: float | None,
               refused: Collection[str]) -> tuple[list[Alert], bool]:
        """``check``, and whether every candidate reached the outbox.

        Candidates are put in order and the first failure stops the rest: a
        later threshold stored while an earlier one is not would be
        delivered first. The next check puts them all again (idempotent).
        """
        t = self.guard.ledger.now() if now is None else now
        buckets: dict[str, Bucket] = {}
        for role in (roles if roles is not None else [None]):
            for b in self.guard.buckets(role, t):
                buckets.setdefault(b.key, b)
        states: list[BucketState] = self.guard.ledger.status(list(buckets.values()))
        candidates = thresholds(states, self.config.thresholds_for, t, self._tz,
                                refused=refused)
        anomalies = self.config.anomalies
        if anomalies.enabled:
            candidates += burn_rate(states, t, anomalies.burn_rate, self._tz)
            wanted = None if roles is None else set(roles)
            mono = time.monotonic()
            if mono - self._last_anomaly_mono >= anomalies.check_interval_seconds:
                self._last_anomaly_mono = mono
                candidates += self._record_anomalies(t, wanted)
            elif wanted is not None:  # the worker runs it when the interval is up
                self._due_roles |= wanted
        raised: list[Alert] = []
        for alert in candidates:
            try:
                if self._emit(alert, None):
                    raised.append(alert)
            except LedgerError as exc:
                log.warning("crew-budget: cannot store alert %s in the ledger (%s); it and "
                            "the alerts after it are retried on the next check", alert.key, exc)
                return raised, False
        return raised, True

    def _record_anomalies(self, now: float, roles: set[str] | None) -> list[Alert]:
        cfg = self.config.anomalies
        rules = (cfg.spend_spike, cfg.new_model, cfg.cost_per_call)
        if not any(r.enabled for r in rules):
            return []
        days = cfg.baseline_days
        records = self.guard.ledger.records(since=now - days * 86400 - 3600, until=now + 1)
        if roles is not None:
            records = [r for r in records if r.role in roles]
        return [
            *spend_spike(records, now, cfg.spend_spike, baseline_days=days, tz=self._tz),
            *new_model(records, now, cfg.new_model, baseline_days=days),
            *cost_per_call(records, now, cfg.cost_per_call, baseline_days=days, tz=self._tz),
        ]

    def emit(self, alert: Alert, *, ttl: float | None = None) -> bool:
        """Put ``alert`` into the ledger's outbox for every sink, once.

        Returns True when this process raised it (it was not in the outbox
        yet); delivery then happens from the outbox, by this process or any
        other. The key is remembered ``ttl`` seconds (default: until the
        alert's window resets plus a day, or the anomaly baseline; never less
        than the give-up time plus a lease and an hour), so the same alert
        never fires twice in that time.
        """
        try:
            return self._emit(alert, ttl)
        except LedgerError as exc:
            log.warning("crew-budget: cannot store alert %s in the ledger (%s); will retry on "
                        "the next check", alert.key, exc)
            return False

    def _emit(self, alert: Alert, ttl: float | None) -> bool:
        """``emit``, raising ``LedgerError`` when the outbox cannot be written."""
        if alert.key in self._seen:
            return False
        if ttl is None:
            resets = alert.values.get("resets_at")
            if isinstance(resets, (int, float)):
                ttl = max(float(resets) - alert.ts, 0.0) + 86400.0
            else:
                ttl = (self.config.anomalies.baseline_days + 1) * 86400.0
        d = self.config.delivery
        ttl = max(ttl, d.give_up_after_seconds + d.lease_seconds + 3600.0)
        won = self._put(alert, alert.key, ttl)
        with self._lock:
            if len(self._seen) > 100_000:
                self._seen.clear()
            self._seen.add(alert.key)
            if won:
                self.sent.append(alert)
                del self.sent[:-1000]
        return won

    def _put(self, alert: Alert, key: str, ttl: float) -> bool:
        ledger = self.guard.ledger
        if not self._workers:  # nowhere to send: still decide "once" for check()'s answer
            return ledger.claim(f"alert:{key}", ttl)
        payload, group = encode_alert(alert), outbox_group(alert)
        won = False
        for w in self._workers:  # in sink order; each put is idempotent, so a retry is safe
            okey = f"{key}>{w.channel}"
            if ledger.outbox_put(okey, payload, channel=w.channel, group=f"{group}>{w.channel}",
                                 ttl_seconds=ttl):
                won = True
                with self._lock:
                    self._mine[okey] = None
                    if len(self._mine) > 10_000:  # only flush() prunes it: stay bounded
                        del self._mine[next(iter(self._mine))]
                w.wake()
        return won

    def dispatch(self, alert: Alert) -> None:
        """Send ``alert`` to every sink through the outbox, without the
        once-only check (``emit`` has it): each call sends it again."""
        d = self.config.delivery
        try:
            self._put(alert, f"{alert.key}#{os.urandom(8).hex()}",
                      d.give_up_after_seconds + d.lease_seconds + 3600.0)
        except LedgerError as exc:
            log.error("crew-budget: cannot store alert %s in the ledger (%s); not sent",
                      alert.key, exc)
            return
        with self._lock:
            self.sent.append(alert)
            del self.sent[:-1000]


def _config_of(guard: Guard) -> AlertsConfig:
    raw: Any = getattr(guard.config, "alerts", None)
    if raw is None:
        return AlertsConfig()
    if isinstance(raw, AlertsConfig):
        return raw
    return AlertsConfig.model_validate(raw)
