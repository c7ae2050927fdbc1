"""Prometheus metrics for budgets (extra ``crew-budget[metrics]``).

``register_metrics(guard)`` adds one custom collector to a registry (the
global one by default, or yours). Budget gauges are read from the ledger at
scrape time, so they are the same in every process; counters and the
estimate-error histogram come from one of two sources:

- ``source="calls"`` (library default): this process's calls, via a guard
  listener (cheap: a few integer additions under a lock).
- ``source="ledger"``: every process's calls, by reading new spend records
  from the ledger at each scrape. ``crew-budget metrics --port N`` uses this.

Names follow the Prometheus conventions: ``_total`` for counters, base
units (seconds), ``_usd`` for money. A window is a gauge labelled by scope
and window only, not by period: the series ``{scope="role:researcher",
window="day"}`` continues across midnight (it drops back to 0 when the day
turns) instead of a new series starting every hour and day.

Metrics (USD values are floats only at the exposition edge)::

    crew_budget_limit_usd{scope,window}         the current window of each budget
    crew_budget_spent_usd{scope,window}
    crew_budget_reserved_usd{scope,window}
    crew_budget_remaining_usd{scope,window}
    crew_budget_window_end_timestamp_seconds{scope,window}   when it resets
    crew_budget_ledger_up
    crew_budget_calls_total{role,outcome}       outcome: allowed | blocked | expired;
                                                0 from the start for every configured
                                                role (default_role included)
    crew_budget_cost_usd_total{role,model}
    crew_budget_actual_to_estimate_ratio        actual / estimate (1 = exact; the
                                                error is ratio - 1; above 1 is an
                                                under-estimate)
    crew_budget_overruns_total{role,model}      settles above their reservation
                                                (the reserved cap was not a bound)
    crew_budget_usage_errors_total              settles whose usage could not be
                                                trusted, charged at the reservation
                                                (this process's guard only)
    crew_budget_shadow_blocked_total{role}      charged calls that shadow mode
                                                (mode/on_exceed: shadow) let through
                                                but the limits would have blocked
    crew_budget_shadow_blocked_usd_total{role}  what those calls cost
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from crew_budget.config import DEFAULT_ROLE
from crew_budget.errors import CrewBudgetError
from crew_budget.ledger.base import SHADOW_KEY, SpendRecord

if TYPE_CHECKING:
    from crew_budget.guard import Guard, GuardEvent

__all__ = ["ERROR_BUCKETS", "BudgetMetrics", "register_metrics", "serve_metrics"]

log = logging.getLogger("crew_budget.metrics")

#: Upper bounds of the actual/estimate histogram. A ratio, not a signed error,
#: so Prometheus keeps ``_sum`` and ``_count`` (it drops them for negative
#: buckets). The estimate includes the reserved output (max_tokens), so most
#: calls land well below 1; above 1 means the estimate was too low.
ERROR_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5,
                                    2.0, float("inf"))
_NANO = Decimal(10**9)
_OUTCOMES = ("allowed", "blocked", "expired")
_TAIL_OVERLAP = 120.0  # seconds re-read each scrape: other processes' clocks differ a little


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise CrewBudgetError(
            "prometheus_client is not installed; install the extra: "
            "pip install 'crew-budget[metrics]'"
        ) from None
    return prometheus_client


class BudgetMetrics:
    """A Prometheus collector for one guard (``registry.register(it)``)."""

    def __init__(
        self,
        guard: Guard,
        *,
        source: Literal["calls", "ledger"] = "calls",
        since: float | None = None,
    ) -> None:
        self.guard = guard
        self.source = source
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, str], int] = {}
        self._cost: dict[tuple[str, str], int] = {}
        self._hist = [0] * len(ERROR_BUCKETS)
        self._hist_sum = Decimal(0)
        self._expired_ids: dict[str, None] = {}
        self._overruns: dict[tuple[str, str], int] = {}
        self._shadow: dict[str, list[int]] = {}  # role -> [calls, cost_nano]
        self._remove: Any = None
        self._origin = guard.ledger.now() if since is None else since
        self._cursor = self._origin
        self._seen: dict[tuple[float, str, str, str], float] = {}  # (ts, id, outcome, role)
        if source == "calls":
            self._remove = guard.add_listener(self.observe)
        elif guard.ledger.records_retention_days == 0:
            # The counters are read from raw records, which this ledger does
            # not keep: say so once rather than export zeros as if all were quiet.
            log.warning("crew-budget metrics: source='ledger' counts calls from the ledger's "
                        "spend records, and %s keeps none (records_retention_days: 0): the "
                        "call, cost and overrun counters stay at 0. Fix: set "
                        "records_retention_days to 1 or more, or use source='calls' in each "
                        "process", guard.ledger.url)
        # Every configured role's call counters exist from the first scrape,
        # at 0: rate() and alerts need a series before the first call, and a
        # role that never called is then visibly 0, not missing.
        cfg = guard.config
        roles = [*cfg.roles, *([DEFAULT_ROLE] if cfg.default_role is not None else [])]
        for role in roles:
            for outcome in _OUTCOMES:
                self._calls[(role, outcome)] = 0

    def close(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None

    # -- feeding ---------------------------------------------------------------

    def _count(self, role: str, outcome: str) -> None:
        key = (role, outcome)
        self._calls[key] = self._calls.get(key, 0) + 1

    def _error(self, estimate_nano: int, cost_nano: int) -> None:
        if estimate_nano <= 0:
            return
        ratio = Decimal(cost_nano) / Decimal(estimate_nano)
        for i, bound in enumerate(ERROR_BUCKETS):
            if bound == float("inf") or ratio <= Decimal(repr(bound)):
                self._hist[i] += 1
                break
        self._hist_sum += ratio

    def _overrun(self, role: str, model: str) -> None:
        key = (role, model)
        self._overruns[key] = self._overruns.get(key, 0) + 1

    def _charge(self, role: str, model: str, cost_nano: int) -> None:
        key = (role, model)
        self._cost[key] = self._cost.get(key, 0) + cost_nano

    def _shadowed(self, role: str, cost_nano: int) -> None:
        slot = self._shadow.setdefault(role, [0, 0])
        slot[0] += 1
        slot[1] += cost_nano

    def observe(self, event: GuardEvent) -> None:
        """Guard listener (``source="calls"``): never raises, never blocks long."""
        with self._lock:
            if event.outcome in ("allowed", "blocked"):
                self._count(event.role, event.outcome)
                return
            if event.outcome == "overrun":
                self._overrun(event.role, event.model)
                return
            cost = int(event.cost * _NANO)
            if event.outcome == "expired":
                rid = event.ticket.reservation_id if event.ticket else ""
                if rid in self._expired_ids:
                    return
                self._expired_ids[rid] = None
                if len(self._expired_ids) > 10_000:
                    self._expired_ids.pop(next(iter(self._expired_ids)))
                self._count(event.role, "expired")
                self._charge(event.role, event.model, cost)
            elif event.applied and event.outcome in ("settled", "unguarded"):
                self._charge(event.role, event.model, cost)
                if event.outcome == "settled":
                    self._error(int(event.estimate * _NANO), cost)
            else:
                return
            # Shadow-blocked calls count when charged, as the ledger's rollups do.
            if event.ticket is not None and SHADOW_KEY in event.ticket.metadata:
                self._shadowed(event.role, cost)

    def observe_record(self, r: SpendRecord) -> None:
        """Count one spend record (``source="ledger"``)."""
        with self._lock:
            if r.outcome in ("settled", "released", "expired", "unguarded"):
                self._count(r.role, "allowed")
            if r.outcome in ("blocked", "expired"):
                self._count(r.role, r.outcome)
            if r.outcome in ("settled", "expired", "unguarded"):
                self._charge(r.role, r.model, r.cost_nano)
            if r.outcome == "settled":
                self._error(r.estimate_nano, r.cost_nano)
                if r.cost_nano > r.estimate_nano:  # the record's estimate is its reservation
                    self._overrun(r.role, r.model)
            if r.outcome in ("settled", "expired", "unguarded") and SHADOW_KEY in r.metadata:
                self._shadowed(r.role, r.cost_nano)

    def _tail(self) -> None:
        # Re-read a little behind the newest record seen (other processes'
        # clocks differ), but never before the start: counters begin there.
        start = max(self._cursor - _TAIL_OVERLAP, self._origin)
        records = self.guard.ledger.records(since=start)
        for r in records:
            key = (r.ts, r.reservation_id, str(r.outcome), r.role)
            if key in self._seen:
                continue
            self._seen[key] = r.ts
            self.observe_record(r)
            self._cursor = max(self._cursor, r.ts)
        horizon = self._cursor - _TAIL_OVERLAP
        for key, ts in list(self._seen.items()):
            if ts < horizon:
                del self._seen[key]

    # -- the collector protocol -------------------------------------------------

    def describe(self) -> list[Any]:
        return list(self._families(with_samples=False))

    def collect(self) -> Iterator[Any]:
        yield from self._families(with_samples=True)

    def _families(self, *, with_samples: bool) -> Iterator[Any]:
        core = _prometheus().metrics_core
        labels = ["scope", "window"]
        limit = core.GaugeMetricFamily("crew_budget_limit_usd",
                                       "Budget limit per scope and window (USD).", labels=labels)
        spent = core.GaugeMetricFamily("crew_budget_spent_usd",
                                       "Committed spend per scope and window (USD).",
                                       labels=labels)
        reserved = core.GaugeMetricFamily("crew_budget_reserved_usd",
                                          "Reservations in flight per scope and window (USD).",
                                          labels=labels)
        remaining = core.GaugeMetricFamily("crew_budget_remaining_usd",
                                           "Limit minus spent and reserved (USD).", labels=labels)
        ends = core.GaugeMetricFamily(
            "crew_budget_window_end_timestamp_seconds",
            "When the current window of each budget ends and its spend starts again at 0 "
            "(Unix time).", labels=labels)
        up = core.GaugeMetricFamily("crew_budget_ledger_up",
                                    "1 if the ledger answered this scrape, else 0.")
        calls = core.CounterMetricFamily("crew_budget_calls",
                                         "LLM calls by outcome: allowed, blocked, expired.",
                                         labels=["role", "outcome"])
        cost = core.CounterMetricFamily("crew_budget_cost_usd",
                                        "Dollars charged (settled, expired, unguarded).",
                                        labels=["role", "model"])
        hist = core.HistogramMetricFamily(
            "crew_budget_actual_to_estimate_ratio",
            "Actual cost / reserved estimate of settled calls (error = ratio - 1).")
        overruns = core.CounterMetricFamily(
            "crew_budget_overruns", "Settles that cost more than their reservation.",
            labels=["role", "model"])
        shadow = core.CounterMetricFamily(
            "crew_budget_shadow_blocked",
            "Charged calls that shadow mode let through but the limits would have blocked.",
            labels=["role"])
        shadow_usd = core.CounterMetricFamily(
            "crew_budget_shadow_blocked_usd",
            "What the shadow-blocked calls cost (USD).", labels=["role"])
        usage_errors = core.CounterMetricFamily(
            "crew_budget_usage_errors",
            "Settles whose usage could not be trusted, charged at the reservation "
            "(this process).")
        if with_samples:
            ok = True
            try:
                if self.source == "ledger":
                    self._tail()
                buckets = self.guard.buckets()
                states = self.guard.ledger.status(buckets) if buckets else []
            except CrewBudgetError as exc:
                log.warning("crew-budget metrics: ledger %s unreadable (%s)",
                            self.guard.ledger.url, exc)
                ok, states = False, []
            for st in states:
                b = st.bucket
                values = [b.scope, b.window]
                ends.add_metric(values, float(b.ends_at))
                if b.limit_nano is not None:
                    limit.add_metric(values, float(Decimal(b.limit_nano) / _NANO))
                    remaining.add_metric(values, float(Decimal(st.remaining_nano or 0) / _NANO))
                spent.add_metric(values, float(Decimal(st.spent_nano) / _NANO))
                reserved.add_metric(values, float(Decimal(st.reserved_nano) / _NANO))
            up.add_metric([], 1.0 if ok else 0.0)
            with self._lock:
                for (role, outcome), n in sorted(self._calls.items()):
                    calls.add_metric([role, outcome], float(n))
                for (role, model), nano in sorted(self._cost.items()):
                    cost.add_metric([role, model], float(Decimal(nano) / _NANO))
                cumulative, running = [], 0
                for bound, n in zip(ERROR_BUCKETS, self._hist, strict=True):
                    running += n
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    cumulative.append((le, float(running)))
                hist.add_metric([], cumulative, float(self._hist_sum))
                for (role, model), n in sorted(self._overruns.items()):
                    overruns.add_metric([role, model], float(n))
                for role, (n, nano) in sorted(self._shadow.items()):
                    shadow.add_metric([role], float(n))
                    shadow_usd.add_metric([role], float(Decimal(nano) / _NANO))
            usage_errors.add_metric([], float(self.guard.counters.get("usage_errors", 0)))
        yield from (limit, spent, reserved, remaining, ends, up, calls, cost, hist, overruns,
                    usage_errors, shadow, shadow_usd)


def register_metrics(
    guard: Guard,
    registry: Any = None,
    *,
    source: Literal["calls", "ledger"] = "calls",
    since: float | None = None,
) -> BudgetMetrics:
    """Register the budget collector in ``registry`` (default: the global one)."""
    prom = _prometheus()
    collector = BudgetMetrics(guard, source=source, since=since)
    (registry if registry is not None else prom.REGISTRY).register(collector)
    return collector


def serve_metrics(
    guard: Guard,
    port: int,
    host: str = "127.0.0.1",
    *,
    source: Literal["calls", "ledger"] = "ledger",
) -> tuple[Any, BudgetMetrics]:
    """Serve ``/metrics`` on ``host:port`` from a fresh registry (background thread)."""
    prom = _prometheus()
    registry = prom.CollectorRegistry()
    collector = register_metrics(guard, registry, source=source)
    server, _thread = prom.start_http_server(port, addr=host, registry=registry)
    return server, collector
