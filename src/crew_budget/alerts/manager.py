"""``AlertManager``: watches a ``Guard`` and sends each alert exactly once.

Nothing here runs on the LLM call's thread except one ``queue.put_nowait``
in the guard listener. A worker thread drains the queue, reads the budgets
of the roles that just spent, asks the pure rules in ``rules.py`` which
thresholds and anomalies hold, and claims each alert's key in the *ledger*
(``Ledger.claim``): among any number of processes sharing the ledger, only
the one that wins the claim sends. Each sink has its own delivery thread
with retries and exponential backoff, so a dead webhook delays nobody; when
it keeps failing, one error is logged per burst of failures and the alert is
counted as failed, never raised.

Usage::

    guard = Guard.from_config("budgets.yaml")
    alerts = AlertManager(guard)          # sinks from the YAML's alerts: section
    ...
    alerts.close()                        # or use it as a context manager
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crew_budget.alerts.config import AlertsConfig, DeliveryConfig
from crew_budget.alerts.events import Alert
from crew_budget.alerts.rules import (
    Exhaustion,
    burn_rate,
    cost_per_call,
    exhausted,
    new_model,
    spend_spike,
    thresholds,
)
from crew_budget.alerts.sinks import CallableSink, Sink, build_sinks
from crew_budget.errors import LedgerError
from crew_budget.ledger.base import Bucket, BucketState
from crew_budget.windows import get_tz

if TYPE_CHECKING:  # the guard imports config, which imports alerts.config
    from crew_budget.guard import Guard, GuardEvent

__all__ = ["AlertManager", "SinkStats"]

log = logging.getLogger("crew_budget.alerts")

_SPEND = frozenset({"settled", "expired", "unguarded"})
_STOP = object()


@dataclass(slots=True)
class SinkStats:
    """Delivery counters of one sink (``AlertManager.stats()``)."""

    name: str
    delivered: int = 0
    failed: int = 0
    retries: int = 0
    dropped: int = 0
    last_error: str | None = None
    failing: bool = False


class _SinkWorker:
    """One sink, one thread, one bounded queue: slow sinks only delay themselves."""

    def __init__(self, sink: Sink, delivery: DeliveryConfig,
                 sleep: Callable[[float], None]) -> None:
        self.sink = sink
        self.delivery = delivery
        self.stats = SinkStats(sink.name)
        self._sleep = sleep
        self._queue: queue.Queue[Any] = queue.Queue(delivery.queue_size)
        self._thread = threading.Thread(target=self._run, name=f"crew-budget-sink-{sink.name}",
                                        daemon=True)
        self._thread.start()

    def submit(self, alert: Alert) -> None:
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.stats.dropped += 1
            log.error("crew-budget: alert queue of sink %s is full (%d waiting); dropped "
                      "alert %s. The sink is too slow or down.", self.sink.name,
                      self.delivery.queue_size, alert.key)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                self._deliver(item)
            finally:
                self._queue.task_done()

    def _deliver(self, alert: Alert) -> None:
        d = self.delivery
        error: BaseException | None = None
        for attempt in range(d.attempts):
            if attempt:
                self.stats.retries += 1
                self._sleep(min(d.backoff_seconds * 2 ** (attempt - 1), d.max_backoff_seconds))
            try:
                self.sink.send(alert)
            except Exception as exc:
                error = exc
                continue
            self.stats.delivered += 1
            if self.stats.failing:
                log.warning("crew-budget: alert sink %s works again", self.sink.name)
                self.stats.failing = False
            return
        self.stats.failed += 1
        self.stats.last_error = f"{type(error).__name__}: {error}"
        if not self.stats.failing:  # one error per burst, not one per alert
            self.stats.failing = True
            log.error(
                "crew-budget: alert sink %s failed %d times (%s); alert %r was not delivered. "
                "Further failures of this sink are counted in AlertManager.stats() until it "
                "works again. Fix the sink's address or credentials in alerts.sinks.",
                self.sink.name, d.attempts, self.stats.last_error, alert.title,
            )

    def join(self, deadline: float) -> bool:
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def stop(self, timeout: float) -> None:
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)


class AlertManager:
    """Thresholds, exhaustion and anomaly alerts for one ``Guard``.

    ``config`` defaults to the guard's ``alerts:`` section. ``sinks`` adds
    (or, with ``replace_sinks=True``, replaces) the YAML's sinks with sink
    objects or plain callables taking an ``Alert``.
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
        self._workers = [_SinkWorker(s, config.delivery, sleep) for s in built]
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

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event is evaluated and every alert delivered."""
        deadline = time.monotonic() + timeout
        while self._events.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return all(w.join(deadline) for w in self._workers)

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
        if not event.applied or event.outcome not in (*_SPEND, "blocked"):
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
        roles = sorted({e.role for e in events if e.outcome in _SPEND})
        blocked = [e for e in events if e.outcome == "blocked" and e.error is not None]
        now = self.guard.ledger.now()
        for e in blocked:
            self._exhausted(e, now)
        if roles:
            self.check(roles, now=now)

    def _exhausted(self, event: GuardEvent, now: float) -> None:
        err = event.error
        assert err is not None
        ends = next((b.ends_at for b in self.guard.buckets(err.role, now)
                     if b.scope == err.scope and b.window == err.window
                     and b.period == err.period), None)
        self.emit(exhausted(Exhaustion(
            role=err.role, model=err.model, scope=err.scope, window=err.window,
            period=err.period, limit=err.limit, spent=err.spent, reserved=err.reserved,
            estimate=err.estimate, resets_at=ends,
        ), now, self._tz), ttl=(ends - now + 86400) if ends else None)

    def check(self, roles: Iterable[str] | None = None, *, now: float | None = None) -> list[Alert]:
        """Evaluate thresholds and anomalies now; returns the alerts this call sent.

        The worker calls this after spend; call it yourself (e.g. from cron
        with ``roles=None`` for every configured budget) to evaluate without
        traffic.
        """
        t = self.guard.ledger.now() if now is None else now
        buckets: dict[str, Bucket] = {}
        for role in (roles if roles is not None else [None]):
            for b in self.guard.buckets(role, t):
                buckets.setdefault(b.key, b)
        states: list[BucketState] = self.guard.ledger.status(list(buckets.values()))
        candidates = thresholds(states, self.config.thresholds_for, t, self._tz)
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
        return [a for a in candidates if self.emit(a)]

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
        """Claim ``alert.key`` in the ledger and, if this process won, send it.

        Returns True when this process sends it. The claim lives ``ttl``
        seconds (default: until the alert's window resets plus a day, or the
        anomaly baseline), so the same alert never fires twice in that time.
        """
        if alert.key in self._seen:
            return False
        if ttl is None:
            resets = alert.values.get("resets_at")
            if isinstance(resets, (int, float)):
                ttl = max(float(resets) - alert.ts, 0.0) + 86400.0
            else:
                ttl = (self.config.anomalies.baseline_days + 1) * 86400.0
        try:
            won = self.guard.ledger.claim(f"alert:{alert.key}", ttl)
        except LedgerError as exc:
            log.warning("crew-budget: cannot claim alert %s (%s); will retry on the next check",
                        alert.key, exc)
            return False
        with self._lock:
            if len(self._seen) > 100_000:
                self._seen.clear()
            self._seen.add(alert.key)
        if not won:
            return False
        self.dispatch(alert)
        return True

    def dispatch(self, alert: Alert) -> None:
        """Hand ``alert`` to every sink (no claim: use ``emit`` for exactly-once)."""
        with self._lock:
            self.sent.append(alert)
            del self.sent[:-1000]
        for w in self._workers:
            w.submit(alert)


def _config_of(guard: Guard) -> AlertsConfig:
    raw: Any = getattr(guard.config, "alerts", None)
    if raw is None:
        return AlertsConfig()
    if isinstance(raw, AlertsConfig):
        return raw
    return AlertsConfig.model_validate(raw)
