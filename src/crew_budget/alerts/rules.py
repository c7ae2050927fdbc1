"""Threshold and anomaly rules: pure functions from spend data to ``Alert``s.

Nothing here talks to a ledger or a sink. Each function takes what it needs
(bucket states, spend records, ``now``) and returns candidate alerts whose
``key`` names the event; the ``AlertManager`` claims each key in the ledger so
that only one process sends it. That keeps every rule testable on a
synthetic history with a known answer.

Money stays exact: nano-USD integers in, ``Decimal`` dollars out. Ratios of
time (elapsed share of a window) are not money and may start as floats.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from decimal import Decimal
from typing import Any

from crew_budget.alerts.config import (
    AnomalyConfig,
    BurnRateRule,
    CostPerCallRule,
    NewModelRule,
    SpendSpikeRule,
)
from crew_budget.alerts.events import Alert, Severity, fmt_pct, fmt_usd
from crew_budget.ledger.base import BucketState, SpendRecord
from crew_budget.windows import span

__all__ = [
    "CHARGED",
    "Exhaustion",
    "burn_rate",
    "cost_per_call",
    "describe_scope",
    "evaluate_anomalies",
    "exhausted",
    "new_model",
    "scope_role",
    "spend_spike",
    "thresholds",
]

_NANO = Decimal(10**9)
#: Outcomes whose ``cost_nano`` is money charged to the budget.
CHARGED = frozenset({"settled", "expired", "unguarded"})
#: Outcomes whose cost is the provider's actual bill (not a lease charge).
_ACTUAL = frozenset({"settled", "unguarded"})
#: Outcomes that show which model a role tried to call.
_CALLS = frozenset({"settled", "expired", "unguarded", "blocked"})


def _usd(nano: int) -> Decimal:
    return Decimal(nano) / _NANO


def _dec(x: float) -> Decimal:
    return Decimal(repr(x))


def describe_scope(scope: str) -> str:
    """``role:researcher`` -> ``role 'researcher'``; ``global`` -> ``the global budget``;
    ``model:gpt-4o@role:writer`` -> ``model 'gpt-4o' of role 'writer'``."""
    kind, _, name = scope.partition(":")
    if not name:
        return "the global budget" if kind == "global" else scope
    if kind == "model":
        model, at, role = name.partition("@role:")
        if at:
            return f"model {model!r} of role {role!r}"
    return f"{kind} {name!r}"


def scope_role(scope: str) -> str | None:
    """The role a budget scope belongs to (``role:R``, ``model:M@role:R``), or None."""
    if scope.startswith("role:"):
        return scope[5:]
    if scope.startswith("model:") and "@role:" in scope:
        return scope.rsplit("@role:", 1)[1]
    return None


def _when(ts: float, tz: tzinfo) -> str:
    return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M %Z").strip()


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


# -- thresholds -----------------------------------------------------------------


def thresholds(
    states: Iterable[BucketState],
    percents: Sequence[int] | Callable[[str], Sequence[int]],
    now: float,
    tz: tzinfo = timezone.utc,
    *,
    refused: Collection[str] = (),
) -> list[Alert]:
    """One candidate per (bucket, threshold) reached, in ascending order.

    ``percents`` is one list for every bucket, or a function of the scope
    (``AlertsConfig.thresholds_for``). A threshold is reached when committed
    spend (settled and expired, not reservations in flight, which may still
    be released) reaches that share of the limit.

    The 100 % rule: a bucket whose key is in ``refused`` (it just refused a
    call, so the *next* call is blocked) has reached every threshold up to
    and including 100 %, whatever its spend. Without this, 100 % would fire
    only when the limit happens to be a multiple of the call cost (a $1.00
    budget of $0.03 calls stops at $0.99). The lower thresholds come with it
    so that a budget's alerts stay in ascending order: 80 % never arrives
    after 100 %. Thresholds above 100 % are reached by spend alone.
    """
    out: list[Alert] = []
    for st in states:
        b = st.bucket
        if not b.limit_nano:
            continue
        pcts = percents(b.scope) if callable(percents) else percents
        limit, spent = _usd(b.limit_nano), _usd(st.spent_nano)
        fraction = spent / limit
        left = max(limit - spent - _usd(st.reserved_nano), Decimal(0))
        who = describe_scope(b.scope)
        blocked = b.key in refused
        for pct in pcts:
            by_spend = st.spent_nano * 100 >= b.limit_nano * pct
            if not by_spend and not (blocked and pct <= 100):
                continue
            severity: Severity = "critical" if pct >= 100 else "warning" if pct >= 80 else "info"
            if by_spend:
                message = (
                    f"{who} has spent {fmt_usd(spent)} of its {b.window} budget "
                    f"{fmt_usd(limit)} ({fmt_pct(fraction)}, threshold {pct}%); "
                    f"{fmt_usd(left)} left until the window resets at {_when(b.ends_at, tz)}."
                )
            else:
                message = (
                    f"{who} refused a call: its {b.window} budget {fmt_usd(limit)} cannot "
                    f"take the next one ({fmt_usd(spent)} spent, {fmt_pct(fraction)}, and "
                    f"{fmt_usd(_usd(st.reserved_nano))} reserved by calls in flight), which "
                    f"counts as {pct}%; calls that fit in the {fmt_usd(left)} left still pass "
                    f"until the window resets at {_when(b.ends_at, tz)}."
                )
            out.append(Alert(
                kind="threshold",
                key=f"threshold:{b.key}:{pct}",
                title=f"{who} reached {pct}% of its {b.window} budget",
                message=message,
                severity=severity,
                ts=now,
                scope=b.scope,
                role=scope_role(b.scope),
                window=b.window,
                period=b.period,
                values={"threshold_pct": pct, "limit_usd": limit, "spent_usd": spent,
                        "reserved_usd": _usd(st.reserved_nano), "spent_fraction": fraction,
                        "resets_at": b.ends_at,
                        "reached_by": "spend" if by_spend else "refused_call"},
            ))
    return out


@dataclass(frozen=True, slots=True)
class Exhaustion:
    """A blocked call, as the guard reported it (from ``BudgetExceeded``)."""

    role: str
    model: str
    scope: str
    window: str
    period: str
    limit: Decimal
    spent: Decimal
    reserved: Decimal
    estimate: Decimal
    resets_at: float | None = None


def exhausted(event: Exhaustion, now: float, tz: tzinfo = timezone.utc) -> Alert:
    """The first blocked call of a bucket's window: the budget is used up."""
    who = describe_scope(event.scope)
    reset = f" until the window resets at {_when(event.resets_at, tz)}" if event.resets_at else ""
    return Alert(
        kind="exhausted",
        key=f"exhausted:{event.scope}|{event.window}|{event.period}",
        title=f"{who} {event.window} budget exhausted: calls are blocked",
        message=(
            f"{who} {event.window} budget {fmt_usd(event.limit)} ({event.period}) is exhausted: "
            f"a {event.model or 'LLM'} call by role {event.role!r} estimated at "
            f"{fmt_usd(event.estimate)} was blocked ({fmt_usd(event.spent)} spent, "
            f"{fmt_usd(event.reserved)} reserved). Further calls are blocked{reset}."
        ),
        severity="critical",
        **_exhaustion_facts(event, now),
    )


def shadow_blocked(event: Exhaustion, now: float, tz: tzinfo = timezone.utc) -> Alert:
    """The first call of a bucket's window that shadow mode let through but the
    limit would have blocked: what enforcing this budget would do, said before
    anyone enforces it (``mode: shadow`` / ``on_exceed: shadow``)."""
    who = describe_scope(event.scope)
    reset = f" until the window resets at {_when(event.resets_at, tz)}" if event.resets_at else ""
    return Alert(
        kind="shadow_blocked",
        key=f"shadow_blocked:{event.scope}|{event.window}|{event.period}",
        title=f"{who} {event.window} budget would block calls (shadow mode: they were sent)",
        message=(
            f"{who} {event.window} budget {fmt_usd(event.limit)} ({event.period}) would have "
            f"blocked a {event.model or 'LLM'} call by role {event.role!r} estimated at "
            f"{fmt_usd(event.estimate)} ({fmt_usd(event.spent)} spent, "
            f"{fmt_usd(event.reserved)} reserved). Shadow mode sent it and charged it; "
            f"enforced, further calls would be blocked{reset}."
        ),
        severity="warning",
        **_exhaustion_facts(event, now),
    )


def _exhaustion_facts(event: Exhaustion, now: float) -> dict[str, Any]:
    """The fields an exhausted and a shadow-blocked alert share: where, when, the money."""
    return {
        "ts": now, "scope": event.scope, "role": event.role, "window": event.window,
        "period": event.period,
        "values": {"limit_usd": event.limit, "spent_usd": event.spent,
                   "reserved_usd": event.reserved, "estimate_usd": event.estimate,
                   "model": event.model},
    }


# -- anomaly rules --------------------------------------------------------------


def burn_rate(
    states: Iterable[BucketState], now: float, rule: BurnRateRule, tz: tzinfo = timezone.utc
) -> list[Alert]:
    """Buckets spending faster than pro-rata (see ``BurnRateRule``)."""
    if not rule.enabled:
        return []
    out: list[Alert] = []
    factor, min_fraction = _dec(rule.factor), _dec(rule.min_fraction)
    for st in states:
        b = st.bucket
        elapsed, length = now - b.starts_at, b.ends_at - b.starts_at
        if not b.limit_nano or elapsed <= 0 or length <= 0:
            continue
        spent, limit = _usd(st.spent_nano), _usd(b.limit_nano)
        frac_spent = spent / limit
        frac_time = _dec(elapsed) / _dec(length)
        if frac_spent < min_fraction or frac_spent < factor * frac_time:
            continue
        projected = (spent * _dec(length) / _dec(elapsed)).quantize(Decimal("0.01"))
        who = describe_scope(b.scope)
        pace = (frac_spent / frac_time).quantize(Decimal("0.1"))
        out.append(Alert(
            kind="burn_rate",
            key=f"burn_rate:{b.key}",
            title=f"{who} is burning its {b.window} budget {pace}x faster than pro-rata",
            message=(
                f"{who} is spending its {b.window} budget too fast: {fmt_usd(spent)} "
                f"({fmt_pct(frac_spent)}) of {fmt_usd(limit)} spent in the first "
                f"{_duration(elapsed)} of the window ({fmt_pct(frac_time)} of it), {pace}x "
                f"pro-rata; at this pace it would spend {fmt_usd(projected)} by the reset at "
                f"{_when(b.ends_at, tz)}."
            ),
            severity="warning",
            ts=now,
            scope=b.scope,
            role=scope_role(b.scope),
            window=b.window,
            period=b.period,
            values={"spent_usd": spent, "limit_usd": limit, "spent_fraction": frac_spent,
                    "elapsed_fraction": frac_time, "pace": pace, "projected_usd": projected},
        ))
    return out


def spend_spike(
    records: Iterable[SpendRecord],
    now: float,
    rule: SpendSpikeRule,
    *,
    baseline_days: int = 7,
    tz: tzinfo = timezone.utc,
) -> list[Alert]:
    """Roles whose spend this hour is more than ``sigma`` std devs above baseline.

    The baseline is the role's spend in each whole hour of the last
    ``baseline_days`` before the current hour, starting at the hour of its
    first record (hours without calls count as $0). Population mean and
    standard deviation; the current, partial hour is compared as it stands.
    """
    if not rule.enabled:
        return []
    hour = span("hour", now, tz)
    start = hour.starts_at
    base_start = start - baseline_days * 86400
    hourly: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    oldest: dict[str, int] = {}
    current: dict[str, int] = defaultdict(int)
    for r in records:
        if r.outcome not in CHARGED:
            continue
        if start <= r.ts <= now:
            current[r.role] += r.cost_nano
        elif base_start <= r.ts < start:
            k = int((start - r.ts) // 3600)
            hourly[r.role][k] += r.cost_nano
            oldest[r.role] = max(oldest.get(r.role, 0), k)
    sigma = _dec(rule.sigma)
    out: list[Alert] = []
    for role, now_nano in sorted(current.items()):
        if role not in oldest:
            continue
        n = oldest[role] + 1
        if n < rule.min_baseline_hours:
            continue
        series = [_usd(hourly[role].get(k, 0)) for k in range(n)]
        mean = sum(series, Decimal(0)) / n
        std = (sum(((x - mean) ** 2 for x in series), Decimal(0)) / n).sqrt()
        limit = mean + sigma * std
        spent = _usd(now_nano)
        if spent <= limit or spent < rule.min_usd:
            continue
        z = ((spent - mean) / std).quantize(Decimal("0.1")) if std else None
        how_far = f"{z} sigma above" if z is not None else "above"
        local = datetime.fromtimestamp(start, tz).strftime("%H:%M")
        out.append(Alert(
            kind="spend_spike",
            key=f"spend_spike:{role}:{hour.period}",
            title=f"spend spike: role {role!r} spent {fmt_usd(spent)} this hour",
            message=(
                f"role {role!r} spent {fmt_usd(spent)} this hour (since {local}), {how_far} "
                f"its hourly baseline over the last {baseline_days} days ({n} hours: mean "
                f"{fmt_usd(mean)}, std dev {fmt_usd(std)}; alert above {fmt_usd(limit)})."
            ),
            severity="warning",
            ts=now,
            scope=f"role:{role}",
            role=role,
            window="hour",
            period=hour.period,
            values={"spent_usd": spent, "mean_usd": mean, "std_usd": std,
                    "alert_above_usd": limit, "sigma": z, "baseline_hours": n},
        ))
    return out


def new_model(
    records: Iterable[SpendRecord], now: float, rule: NewModelRule, *, baseline_days: int = 7
) -> list[Alert]:
    """Roles calling, in the last ``window_minutes``, a model absent from their baseline."""
    if not rule.enabled:
        return []
    recent_start = now - rule.window_minutes * 60
    base_start = now - baseline_days * 86400
    base_models: dict[str, set[str]] = defaultdict(set)
    base_calls: dict[str, int] = defaultdict(int)
    recent: dict[tuple[str, str], list[int]] = {}
    for r in records:
        if r.outcome not in _CALLS or not r.model:
            continue
        if recent_start <= r.ts <= now:
            entry = recent.setdefault((r.role, r.model), [0, 0])
            entry[0] += 1
            entry[1] += r.cost_nano if r.outcome in CHARGED else 0
        elif base_start <= r.ts < recent_start:
            base_models[r.role].add(r.model)
            base_calls[r.role] += 1
    out: list[Alert] = []
    for (role, model), (calls, cost) in sorted(recent.items()):
        if base_calls[role] < rule.min_baseline_calls or model in base_models[role]:
            continue
        known = ", ".join(sorted(base_models[role]))
        out.append(Alert(
            kind="new_model",
            key=f"new_model:{role}:{model}",
            title=f"role {role!r} switched to model {model!r}",
            message=(
                f"role {role!r} called model {model!r} ({calls} calls, {fmt_usd(_usd(cost))} in "
                f"the last {rule.window_minutes} min), which it has not used in its "
                f"{baseline_days}-day baseline ({base_calls[role]} calls on: {known})."
            ),
            severity="warning",
            ts=now,
            scope=f"role:{role}",
            role=role,
            values={"model": model, "calls": calls, "cost_usd": _usd(cost),
                    "baseline_models": sorted(base_models[role]),
                    "baseline_calls": base_calls[role]},
        ))
    return out


def cost_per_call(
    records: Iterable[SpendRecord],
    now: float,
    rule: CostPerCallRule,
    *,
    baseline_days: int = 7,
    tz: tzinfo = timezone.utc,
) -> list[Alert]:
    """Roles whose average cost per call rose ``factor`` times over baseline.

    Only calls with a provider-reported cost count (settled, unguarded);
    expired leases are charged at their reservation, not a real price.
    """
    if not rule.enabled:
        return []
    recent_start = now - rule.window_minutes * 60
    base_start = now - baseline_days * 86400
    recent: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    base: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        if r.outcome not in _ACTUAL:
            continue
        if recent_start <= r.ts <= now:
            target = recent[r.role]
        elif base_start <= r.ts < recent_start:
            target = base[r.role]
        else:
            continue
        target[0] += 1
        target[1] += r.cost_nano
    factor = _dec(rule.factor)
    period = span("hour", now, tz).period
    out: list[Alert] = []
    for role, (calls, cost) in sorted(recent.items()):
        b_calls, b_cost = base.get(role, (0, 0))
        if calls < rule.min_calls or b_calls < rule.min_baseline_calls or b_cost <= 0:
            continue
        avg, b_avg = _usd(cost) / calls, _usd(b_cost) / b_calls
        if avg < factor * b_avg:
            continue
        ratio = (avg / b_avg).quantize(Decimal("0.1"))
        out.append(Alert(
            kind="cost_per_call",
            key=f"cost_per_call:{role}:{period}",
            title=f"role {role!r} cost per call rose {ratio}x",
            message=(
                f"role {role!r} cost per call rose {ratio}x: {fmt_usd(avg)} on average over the "
                f"last {rule.window_minutes} min ({calls} calls) vs {fmt_usd(b_avg)} in its "
                f"{baseline_days}-day baseline ({b_calls} calls)."
            ),
            severity="warning",
            ts=now,
            scope=f"role:{role}",
            role=role,
            window="hour",
            period=period,
            values={"avg_usd": avg, "baseline_avg_usd": b_avg, "ratio": ratio,
                    "calls": calls, "baseline_calls": b_calls},
        ))
    return out


def evaluate_anomalies(
    records: Sequence[SpendRecord],
    states: Sequence[BucketState],
    now: float,
    config: AnomalyConfig,
    tz: tzinfo = timezone.utc,
) -> list[Alert]:
    """All enabled anomaly rules over one history (records cover the baseline)."""
    if not config.enabled:
        return []
    days = config.baseline_days
    return [
        *burn_rate(states, now, config.burn_rate, tz),
        *spend_spike(records, now, config.spend_spike, baseline_days=days, tz=tz),
        *new_model(records, now, config.new_model, baseline_days=days),
        *cost_per_call(records, now, config.cost_per_call, baseline_days=days, tz=tz),
    ]
