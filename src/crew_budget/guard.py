"""``Guard``: price a call before it is sent, reserve it, settle it after.

Adapters translate their framework's call into three steps::

    ticket = guard.preflight(role=..., model=..., messages=..., tools=..., max_tokens=...)
    # send the request; if ticket.max_tokens is set, send it as max_tokens
    guard.settle(ticket, response.usage)    # or guard.release(ticket) if never sent

The guard holds no balances: the ledger does, atomically, so any number of
guards in any number of processes share one budget.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from crew_budget.config import BudgetConfig, load_config
from crew_budget.errors import BudgetExceeded, LedgerUnavailable, UsageError
from crew_budget.estimate import Estimate, Estimator
from crew_budget.ledger import (
    Bucket,
    BucketState,
    ClockSkew,
    Denial,
    Ledger,
    RecordDraft,
    ReserveRequest,
    SpendRecord,
    new_reservation_id,
    open_ledger,
)
from crew_budget.money import atto_to_nano_ceil, from_nano, to_nano, to_nano_ceil
from crew_budget.pricing import Price, PriceBook
from crew_budget.usage import Usage, cost_nano_of, parse_usage
from crew_budget.windows import WindowName, get_tz, span

__all__ = ["BudgetStatus", "Guard", "GuardEvent", "Settlement", "Ticket"]

log = logging.getLogger("crew_budget")


@dataclass(frozen=True, slots=True)
class Ticket:
    """A granted reservation for one call.

    ``max_tokens`` is set when the request named no output limit: the adapter
    must send it, so the reservation is a true upper bound (invariant 1).
    ``guarded`` is False only for calls let through by ``fail_open``.
    """

    reservation_id: str
    role: str
    model: str
    crew: str | None
    estimate: Decimal
    prompt_tokens: int
    output_tokens_reserved: int
    max_tokens: int | None
    expires_at: float
    guarded: bool = True
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Settlement:
    """The outcome of ``settle``/``release``: final state and the cost charged."""

    state: str
    cost: Decimal
    applied: bool
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """One scope in one window, in dollars, as ``guard.status()`` reports it."""

    scope: str
    window: WindowName
    period: str
    limit: Decimal | None
    spent: Decimal
    reserved: Decimal
    remaining: Decimal | None
    resets_at: datetime


@dataclass(frozen=True, slots=True)
class GuardEvent:
    """What ``Guard.add_listener`` callbacks hear after each decision.

    ``outcome`` after preflight: ``allowed`` (``ticket.guarded`` is False if
    fail_open let it through unreserved) or ``blocked`` (``error`` says
    where); after settle/release, the final state: ``settled``, ``released``,
    ``expired`` (the lease ran out first), ``pending`` (ledger down, will
    retry) or ``unguarded``. ``applied`` is False for a repeat that changed
    nothing.
    """

    outcome: str
    role: str
    model: str
    crew: str | None
    estimate: Decimal
    cost: Decimal = Decimal(0)
    applied: bool = True
    ticket: Ticket | None = None
    error: BudgetExceeded | None = None


class Guard:
    """Enforces a ``BudgetConfig`` against a ``Ledger``."""

    def __init__(
        self,
        config: BudgetConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        ledger: Ledger | str | None = None,
        *,
        clock: Callable[[], float] | None = None,
        estimator: Estimator | None = None,
        prices: PriceBook | None = None,
        start_alerts: bool = True,
    ) -> None:
        self.config = load_config(config) if config is not None else BudgetConfig()
        self._clock = clock or time.time
        if isinstance(ledger, Ledger):
            self.ledger = ledger
        else:
            url = ledger or self.config.ledger_url()
            self.ledger = open_ledger(
                url,
                namespace=self.config.namespace,
                retention_days=self.config.retention_days,
                clock=clock,
            )
        self.prices = prices or PriceBook(self.config.prices)
        self.estimator = estimator or Estimator()
        self._tz = get_tz(self.config.timezone)
        self._offset = 0.0  # ledger clock minus ours, learned from ClockSkew
        self._lock = threading.Lock()
        self._pending: collections.deque[tuple[Ticket, Usage | None, int]] = collections.deque(
            maxlen=10_000
        )
        self._listeners: tuple[Callable[[GuardEvent], None], ...] = ()
        # An `alerts:` section is acted on, not silently ignored: its manager
        # starts here (a background thread). A manager built by hand later
        # replaces this one, so one guard never has two.
        self.alerts: Any = None
        if start_alerts and self.config.alerts is not None and self.config.alerts.enabled:
            from crew_budget.alerts import AlertManager

            AlertManager(self)

    @classmethod
    def from_config(
        cls,
        config: BudgetConfig | Mapping[str, Any] | str | os.PathLike[str],
        ledger: Ledger | str | None = None,
        **kwargs: Any,
    ) -> Guard:
        """Build a guard from a YAML path, a mapping or a ``BudgetConfig``."""
        return cls(load_config(config), ledger, **kwargs)

    # -- configuration ------------------------------------------------------

    def limit_role(
        self,
        role: str,
        *,
        hourly_usd: object = None,
        daily_usd: object = None,
        monthly_usd: object = None,
        max_output_tokens: int | None = None,
    ) -> None:
        """Tighten a role's limits from code; the stricter of code and YAML wins."""
        self.config = self.config.with_role_limits(
            role,
            hourly=hourly_usd,
            daily=daily_usd,
            monthly=monthly_usd,
            max_output_tokens=max_output_tokens,
        )

    # -- listeners (alerts, metrics) -----------------------------------------

    def add_listener(self, listener: Callable[[GuardEvent], None]) -> Callable[[], None]:
        """Call ``listener(event)`` after every preflight, settle and release.

        It runs on the caller's thread, so it must be quick (hand work to a
        queue); anything it raises is logged and swallowed, never reaching the
        LLM call. Returns a function that removes the listener.
        """
        with self._lock:
            self._listeners = (*self._listeners, listener)

        def remove() -> None:
            with self._lock:
                self._listeners = tuple(x for x in self._listeners if x is not listener)

        return remove

    def _emit(self, event: GuardEvent) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("crew-budget: listener %r failed (ignored)", listener)

    # -- the three steps ----------------------------------------------------

    def price(self, model: str) -> Price:
        return self.prices.get(model)

    def output_reservation(self, role: str, model: str) -> int | None:
        """Output tokens to reserve for a request that must go out unchanged.

        For adapters that do not add a cap to the caller's request: pass this
        as ``preflight``'s ``max_tokens`` when the request has none, and the
        call is reserved at the model's maximum output (the largest answer it
        can bill; the configured default when the price book does not know
        it) with nothing to inject. ``None`` when the role sets its own
        ``max_output_tokens``: that is configuration asking for a cap, so
        ``preflight`` reserves it and returns it to be sent, as usual.
        """
        budget = self.config.role_budget(role)
        if budget is not None and budget.max_output_tokens is not None:
            return None
        maximum = self.prices.get(model).max_output_tokens
        return maximum if maximum is not None else self.config.max_output_tokens(role)

    def estimate(
        self,
        role: str,
        model: str,
        messages: Sequence[Any],
        tools: Sequence[Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
        *,
        system: Any = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Estimate:
        """What ``preflight`` would reserve for this call, without reserving it.

        Output is reserved at ``max_tokens``, or else at the role's cap (and the
        model's maximum), which the adapter must then send as ``max_tokens``.
        """
        price = self.prices.get(model)
        prompt_tokens, out_tokens, inject, amount = self._estimate_nano(
            role, price, model, messages, tools, max_tokens, system, extra
        )
        return Estimate(model, prompt_tokens, out_tokens, inject, from_nano(amount), price)

    def _estimate_nano(
        self,
        role: str,
        price: Price,
        model: str,
        messages: Sequence[Any],
        tools: Sequence[Mapping[str, Any]] | None,
        max_tokens: int | None,
        system: Any,
        extra: Mapping[str, Any] | None,
    ) -> tuple[int, int, int | None, int]:
        """``estimate`` in integers: prompt tokens, output tokens, max_tokens to send, nano-USD."""
        prompt_tokens = self.estimator.count_prompt(
            model, price, messages, tools, system=system, extra=extra
        )
        inject: int | None = None
        if max_tokens is None:
            cap = self.config.max_output_tokens(role)
            if price.max_output_tokens is not None:
                cap = min(cap, price.max_output_tokens)
            inject = out_tokens = cap
        else:
            out_tokens = int(max_tokens)
        atto = price.atto
        if atto is not None:
            amount = atto_to_nano_ceil(prompt_tokens * atto[0] + out_tokens * atto[1])
        else:
            amount = to_nano_ceil(prompt_tokens * price.input + out_tokens * price.output)
        return prompt_tokens, out_tokens, inject, amount

    def preflight(
        self,
        role: str,
        model: str,
        messages: Sequence[Any],
        tools: Sequence[Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        crew: str | None = None,
        system: Any = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Ticket:
        """Estimate the call, reserve it against every budget, or raise.

        Raises ``BudgetExceeded`` (nothing was charged), ``UnknownModelError``
        (no price: never $0) or ``LedgerUnavailable`` (fail closed).
        """
        prompt_tokens, out_tokens, inject, amount = self._estimate_nano(
            role, self.prices.get(model), model, messages, tools, max_tokens, system, extra
        )
        crew_name = crew or self._crew_name
        meta = dict(metadata or {})
        draft = RecordDraft(
            role=role,
            model=model,
            crew=crew_name,
            estimate_nano=amount,
            prompt_tokens_estimate=prompt_tokens,
            output_tokens_reserved=out_tokens,
            metadata=meta,
        )
        rid = new_reservation_id()
        try:
            result = self._reserve(role, rid, amount, draft)
        except LedgerUnavailable:
            self._flush_pending_quietly()
            if not self.config.fail_open:
                raise
            log.warning(
                "crew-budget: ledger %s unreachable; UNGUARDED call allowed by fail_open "
                "(role=%s model=%s estimate=$%s)", self.ledger.url, role, model, from_nano(amount)
            )
            ticket = Ticket("", role, model, crew_name, from_nano(amount), prompt_tokens,
                            out_tokens, inject, 0.0, guarded=False, metadata=meta)
            if self._listeners:
                self._emit(GuardEvent("allowed", role, model, crew_name, ticket.estimate,
                                      ticket=ticket))
            return ticket
        if isinstance(result, Denial):
            st = result.state
            assert st.bucket.limit_nano is not None
            exceeded = BudgetExceeded(
                role=role,
                scope=st.bucket.scope,
                window=st.bucket.window,
                period=st.bucket.period,
                limit=from_nano(st.bucket.limit_nano),
                spent=from_nano(st.spent_nano),
                reserved=from_nano(st.reserved_nano),
                estimate=from_nano(amount),
                model=model,
            )
            if self._listeners:
                self._emit(GuardEvent("blocked", role, model, crew_name, from_nano(amount),
                                      error=exceeded))
            raise exceeded
        if self._pending:
            self._flush_pending_quietly()
        ticket = Ticket(rid, role, model, crew_name, from_nano(amount), prompt_tokens, out_tokens,
                        inject, result.expires_at, metadata=meta)
        if self._listeners:
            self._emit(GuardEvent("allowed", role, model, crew_name, ticket.estimate,
                                  ticket=ticket))
        return ticket

    def _reserve(self, role: str, rid: str, amount: int, draft: RecordDraft) -> Any:
        now = self._clock() + self._offset
        for _attempt in range(3):
            req = ReserveRequest(rid, self._buckets(role, now), amount, self._lease, draft)
            try:
                return self.ledger.reserve(req)
            except ClockSkew as skew:
                self._offset = skew.ledger_now - self._clock()
                now = skew.ledger_now
        raise LedgerUnavailable(self.ledger.url, "ledger clock keeps moving across window bounds")

    def settle(self, ticket: Ticket, usage: Any) -> Settlement:
        """Charge the actual cost from the provider's ``usage`` (idempotent).

        Unreadable usage is charged at the reservation and logged: a call that
        happened is never counted as free.
        """
        try:
            parsed: Usage | None = parse_usage(usage)
        except UsageError as exc:
            log.error("crew-budget: %s (role=%s model=%s reservation=%s)", exc, ticket.role,
                      ticket.model, ticket.reservation_id)
            parsed = None
        price = self.prices.get(ticket.model)
        if parsed is None:
            cost_nano = to_nano(ticket.estimate)
        else:
            cost_nano = cost_nano_of(parsed, price)
            if parsed.prompt_tokens:
                self.estimator.calibrate(ticket.model, ticket.prompt_tokens, parsed.prompt_tokens)
        return self._finish(ticket, parsed, cost_nano)

    def release(self, ticket: Ticket) -> Settlement:
        """The provider was never reached: drop the reservation at zero cost."""
        return self._finish(ticket, None, None)

    def _finish(self, ticket: Ticket, usage: Usage | None, cost_nano: int | None) -> Settlement:
        result = self._finish_quietly(ticket, usage, cost_nano)
        if self._listeners:
            self._emit(GuardEvent(result.state, ticket.role, ticket.model, ticket.crew,
                                  ticket.estimate, result.cost, result.applied, ticket=ticket))
        return result

    def _finish_quietly(
        self, ticket: Ticket, usage: Usage | None, cost_nano: int | None
    ) -> Settlement:
        if not ticket.guarded:
            if cost_nano:
                self._record_unguarded(ticket, usage, cost_nano)
            return Settlement("unguarded", from_nano(cost_nano or 0), False, usage)
        try:
            if cost_nano is None:
                res = self.ledger.release(ticket.reservation_id)
            else:
                res = self.ledger.settle(ticket.reservation_id, cost_nano, usage or Usage())
        except LedgerUnavailable as exc:
            # The lease will expire and charge the reservation if this never
            # gets through: over-count, never under-count (invariant 3).
            log.error("crew-budget: could not settle %s (%s); will retry, and the "
                      "reservation expires at its reserved amount if the ledger stays down",
                      ticket.reservation_id, exc.reason)
            self._pending.append((ticket, usage, -1 if cost_nano is None else cost_nano))
            return Settlement("pending", from_nano(cost_nano or 0), False, usage)
        return Settlement(res.state, from_nano(res.cost_nano), res.applied, usage)

    def _record_unguarded(self, ticket: Ticket, usage: Usage | None, cost_nano: int) -> None:
        draft = RecordDraft(role=ticket.role, model=ticket.model, crew=ticket.crew,
                            metadata=dict(ticket.metadata))
        rec = SpendRecord.build(ts=self._clock(), reservation_id="", outcome="unguarded",
                                draft=draft, cost_nano=cost_nano, usage=usage)
        try:
            self.ledger.append_record(rec)
        except LedgerUnavailable:
            log.warning("crew-budget: unguarded call cost $%s not recorded (ledger down)",
                        from_nano(cost_nano))

    def _flush_pending_quietly(self) -> None:
        while self._pending:
            ticket, usage, cost = self._pending[0]
            try:
                if cost < 0:
                    self.ledger.release(ticket.reservation_id)
                else:
                    self.ledger.settle(ticket.reservation_id, cost, usage or Usage())
            except LedgerUnavailable:
                return
            self._pending.popleft()

    # -- reading ------------------------------------------------------------

    @property
    def config(self) -> BudgetConfig:
        """The configuration in force; assigning a new one takes effect at once."""
        return self._config

    @config.setter
    def config(self, value: BudgetConfig) -> None:
        self._config = value
        self._bucket_cache: dict[str | None, tuple[float, float, tuple[Bucket, ...]]] = {}
        self._lease = float(value.lease_seconds)
        self._crew_name = value.crew.name if value.crew else None

    def buckets(self, role: str | None = None, now: float | None = None) -> list[Bucket]:
        """The buckets a call by ``role`` touches (all configured ones if None).

        Cached until the earliest window among them ends: every call of an
        agent loop would otherwise redo the same calendar arithmetic.
        """
        return list(self._buckets(role, (self._clock() + self._offset) if now is None else now))

    def _buckets(self, role: str | None, t: float) -> tuple[Bucket, ...]:
        cached = self._bucket_cache.get(role)
        if cached is not None and cached[0] <= t < cached[1]:
            return cached[2]
        out = tuple(self._compute_buckets(role, t))
        if out:
            valid_from = max(b.starts_at for b in out)
            valid_until = min(b.ends_at for b in out)
            self._bucket_cache[role] = (valid_from, valid_until, out)
        return out

    def _compute_buckets(self, role: str | None, t: float) -> list[Bucket]:
        out: list[Bucket] = []
        cfg = self.config
        scopes: list[tuple[str, Any]] = []
        if role is None:
            scopes.extend((f"role:{name}", b) for name, b in cfg.roles.items())
        else:
            budget = cfg.role_budget(role)
            if budget is not None:
                scopes.append((f"role:{role}", budget))
        if cfg.crew is not None:
            scopes.append((f"crew:{cfg.crew.name}", cfg.crew))
        if cfg.global_limits is not None:
            scopes.append(("global", cfg.global_limits))
        for scope, limits in scopes:
            for window in limits.windows():
                s = span(window, t, self._tz)
                limit = limits.limit_for(window)
                out.append(Bucket(scope, window, s.period, to_nano(limit), s.starts_at, s.ends_at))
        return out

    def status(self, role: str | None = None) -> list[BudgetStatus]:
        """Every configured scope and window: limit, spent, reserved, remaining."""
        states: list[BucketState] = self.ledger.status(self.buckets(role))
        return [
            BudgetStatus(
                scope=s.bucket.scope,
                window=s.bucket.window,
                period=s.bucket.period,
                limit=None if s.bucket.limit_nano is None else from_nano(s.bucket.limit_nano),
                spent=from_nano(s.spent_nano),
                reserved=from_nano(s.reserved_nano),
                remaining=None if s.remaining_nano is None else from_nano(s.remaining_nano),
                resets_at=datetime.fromtimestamp(s.bucket.ends_at, self._tz),
            )
            for s in states
        ]

    def close(self) -> None:
        if self.alerts is not None:
            self.alerts.close()
        self._flush_pending_quietly()
        self.ledger.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
