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
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple, cast

from crew_budget.config import (
    DEFAULT_CREW_ROLE,
    DEFAULT_ROLE,
    BudgetConfig,
    Downgrade,
    Limits,
    check_code_limits,
    load_config,
)
from crew_budget.errors import (
    AmountError,
    BudgetExceeded,
    ConfigError,
    CrewBudgetError,
    LedgerError,
    LedgerReset,
    LedgerUnavailable,
    ReservationError,
    RolePaused,
    UsageError,
)
from crew_budget.estimate import Estimate, Estimator, billed_completions
from crew_budget.journal import Journal
from crew_budget.ledger import (
    Bucket,
    BucketState,
    ClockSkew,
    Denial,
    Ledger,
    Override,
    RecordDraft,
    Reservation,
    ReserveRequest,
    SpendRecord,
    StaleOverrides,
    Unit,
    bucket_need,
    new_reservation_id,
    open_ledger,
)
from crew_budget.ledger.base import SHADOW_KEY, OverrideKind
from crew_budget.margin import Margins, apply_margin, model_family
from crew_budget.money import (
    MAX_NANO,
    MAX_TOKENS,
    atto_to_nano_ceil,
    from_nano,
    to_nano,
    to_nano_ceil,
)
from crew_budget.pricing import Price, PriceBook, normalize_service_tier
from crew_budget.runs import Run, current_run
from crew_budget.usage import Usage, cost_nano_of, parse_usage
from crew_budget.windows import RUN_WINDOW, WindowName, get_tz, run_span, span
from crew_budget.wiring import run_guard_hooks

__all__ = ["BudgetStatus", "Guard", "GuardEvent", "Settlement", "Ticket"]

log = logging.getLogger("crew_budget")

RunChain = tuple[tuple[str, int | None], ...]
"""The runs a call is inside, innermost first: (run id, its ``usd`` cap in nano-USD)."""

_RELEASE_IF_RESERVED = -2
"""A pending entry's cost for a reserve that timed out: release it if it landed."""


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
    journal_id: str = ""
    """For a call fail_open let through: its entry in the local journal."""
    # Where the call goes and at which service tier, so settle prices it
    # exactly as preflight did (same provider's list, same tier).
    provider: str | None = None
    service_tier: str | None = None
    downgraded_from: str | None = None
    """Set when ``on_exceed: {downgrade: [...]}`` moved the call: the model the
    caller asked for. ``model`` is then the model to send the request to."""
    margin_tokens: int = 0
    """Prompt tokens reserved above ``prompt_tokens`` by the model family's
    estimate margin (``crew_budget.margin``); included in ``estimate``."""
    counted_prompt_tokens: int = 0
    """The estimator's raw count (before calibration and margin), which the
    margin learns from at settle; 0 when the prompt was counted exactly."""
    margin_family: str = ""
    """The model family (``provider/line``) whose margin applied."""
    exact_count: bool = False
    """``prompt_tokens`` came from the provider's token-counting endpoint."""


@dataclass(frozen=True, slots=True)
class Settlement:
    """The outcome of ``settle``/``release``: final state and the cost charged."""

    state: str
    cost: Decimal
    applied: bool
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """One scope in one window, as ``guard.status()`` reports it.

    In dollars for ``unit`` ``usd``; in tokens or calls (whole numbers, as
    ``Decimal``) for ``input_tokens``, ``output_tokens`` and ``calls``.
    """

    scope: str
    window: WindowName
    period: str
    limit: Decimal | None
    spent: Decimal
    reserved: Decimal
    remaining: Decimal | None
    resets_at: datetime
    unit: str = "usd"


@dataclass(frozen=True, slots=True)
class GuardEvent:
    """What ``Guard.add_listener`` callbacks hear after each decision.

    ``outcome`` after preflight: ``allowed`` (``ticket.guarded`` is False if
    fail_open let it through unreserved) or ``blocked`` (``error`` says
    where), preceded by ``shadow_blocked`` (``error`` says where) when
    shadow mode lets through a call the limits would have blocked; after
    settle/release, the final state: ``settled``, ``released``,
    ``expired`` (the lease ran out first), ``pending`` (ledger down, will
    retry), ``lost`` (the ledger no longer knows the reservation: it lost its
    state) or ``unguarded``. ``applied`` is False for a repeat that changed
    nothing. A settle whose cost exceeded its reservation is followed by a
    second event, ``overrun``, with ``cost`` the charged amount and
    ``estimate`` the reservation (``cost / estimate`` is the factor).
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
    usage: Usage | None = None  # after settle: the provider's token counts, if readable


def _check_max_tokens(value: Any) -> int:
    """A request's own output cap, or ``AmountError``: a negative, zero,
    fractional or absurd cap would reserve less than the call may cost."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not int or not 1 <= value <= MAX_TOKENS:
        raise AmountError(
            f"max_tokens={value!r} is not a whole number of tokens from 1 to {MAX_TOKENS:,}, "
            "so the call cannot be priced; it was not sent. Fix: pass a positive int, or "
            "None to have the role's max_output_tokens sent"
        )
    return value


def _has_tool_call(message: Any) -> bool:
    """Does ``message`` call a tool (whose result must follow it in any request)?"""
    if not isinstance(message, Mapping):
        return False
    if message.get("tool_calls") or message.get("function_call"):
        return True
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(p, Mapping) and p.get("type") in ("tool_use", "server_tool_use")
        for p in content)


class _Sized(NamedTuple):
    """What ``Guard._estimate_nano`` found: the reservation, and how its prompt was sized."""

    prompt_tokens: int
    out_tokens: int
    inject: int | None
    amount: int
    margin_tokens: int
    counted: int
    family: str
    exact: bool

    def ticket_fields(self) -> dict[str, Any]:
        return {"margin_tokens": self.margin_tokens, "counted_prompt_tokens": self.counted,
                "margin_family": self.family, "exact_count": self.exact}


class Guard:
    """Enforces a ``BudgetConfig`` against a ``Ledger``.

    Building one runs the construction hooks of ``crew_budget.wiring``: by
    default the one that starts ``guard.alerts`` when the config has an
    enabled ``alerts:`` section. ``start_alerts=False`` skips them.
    """

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
                records_retention_days=self.config.records_retention_days,
                clock=clock,
            )
        self.prices = prices or PriceBook(self.config.prices)
        self.estimator = estimator or Estimator()
        #: Per model family, the margin reserved above the estimate, learned
        #: from settles and shared through the ledger (``crew_budget.margin``).
        self.margins = Margins(self.ledger, lambda: self.config.estimate_margin)
        #: Asks Anthropic's / Gemini's token-counting endpoints for roles and
        #: models with ``exact_count: true``; made on first use (or assign one,
        #: e.g. with an explicit key: ``crew_budget.estimate.exact.ExactCounter``).
        self.exact_counter: Any = None
        self._families: dict[tuple[str, str | None, str], str] = {}
        self._tz = get_tz(self.config.timezone)
        self._offset = 0.0  # ledger clock minus ours, learned from ClockSkew
        self._init_overrides()
        self._lock = threading.Lock()
        self._pending: collections.deque[tuple[Ticket, Usage | None, int]] = collections.deque(
            maxlen=10_000
        )
        self._journal: Journal | None = None
        self._journal_dirty = False
        self._next_replay = 0.0
        self._replay_blocked = False
        if self.config.fail_open and not self.ledger.url.startswith("memory:"):
            self._journal = Journal(self.config.journal
                                    or _default_journal(self.config.namespace, self.ledger.url))
            self._journal_dirty = self._journal.exists()  # left by an earlier outage
        self._listeners: tuple[Callable[[GuardEvent], None], ...] = ()
        #: Process-wide tallies since this guard was built, for logs and
        #: ``crew_budget.metrics``: ``usage_errors`` (settles charged at the
        #: reservation because the usage could not be trusted) and
        #: ``overruns`` (settles above their reservation) and ``dropped_settles``
        #: (see the property). Read, don't write.
        self.counters: dict[str, int] = {"overruns": 0, "usage_errors": 0,
                                         "dropped_settles": 0}
        # Set by whatever watches this guard (an `alerts:` section's manager,
        # started by a construction hook, see crew_budget.wiring) and closed
        # with it. The guard itself imports nothing from crew_budget.alerts.
        self.alerts: Any = None
        if start_alerts:
            run_guard_hooks(self)

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

    def price(self, model: str, provider: str | None = None) -> Price:
        """The price of ``model`` (``Price.source`` says where it came from)."""
        return self.prices.get(model, provider)

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
        provider: str | None = None,
    ) -> Estimate:
        """What ``preflight`` would reserve for this call, without reserving it.

        Output is reserved at ``max_tokens``, or else at the role's cap (and the
        model's maximum), which the adapter must then send as ``max_tokens``;
        times the completions the request asks for (``n``, ``best_of`` or
        ``candidate_count`` in ``extra``), each of which may use the whole cap.
        The prompt is reserved once: providers bill it once.
        The role is matched as ``preflight`` matches it; since an estimate
        reserves nothing, a role that matches no budget is estimated with the
        default cap instead of being refused (``preflight`` refuses it).
        ``provider`` (an id, a litellm provider or a base URL) picks that
        provider's prices; the estimate uses the context tier the prompt
        lands in and the request's ``service_tier`` (in ``extra``).
        ``amount`` includes the model family's estimate margin as
        ``preflight`` would reserve it (``crew_budget.margin``);
        ``prompt_tokens`` is the estimate without it.
        """
        price = self.prices.get(model, provider)
        prompt_tokens, out_tokens, inject, amount = self._estimate_nano(
            self.config.match_role(role) or DEFAULT_ROLE if isinstance(role, str) else "",
            price, model, messages, tools, max_tokens, system, extra, provider
        )[:4]
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
        provider: str | None = None,
    ) -> _Sized:
        """``estimate`` in integers: prompt tokens, output tokens, max_tokens to
        send, nano-USD, and how the prompt was sized (see ``_Sized``).

        The prompt is reserved at ``max(calibrated estimate, raw count x (1 +
        the family's margin))`` (``crew_budget.margin``), or at the provider's
        exact count when ``exact_count`` asks for one and it answers in time.
        """
        # No role, model or price asks for exact_count (the usual case): no call.
        exact = (self._exact_tokens(role, price, model, messages, tools, system, extra, provider)
                 if self._exact_cache else None)
        if exact is not None:
            prompt_tokens = counted = exact
            family, reserved_prompt = "", exact
        else:
            counted = self.estimator.count_prompt(
                model, price, messages, tools, system=system, extra=extra, calibrated=False
            )
            prompt_tokens = self.estimator.calibrated(model, counted)
            key = (model, provider, price.provider)
            family = self._families.get(key) or self._family(key)
            reserved_prompt = max(prompt_tokens,
                                  apply_margin(counted, self.margins.margin(family)))
        inject: int | None = None
        if max_tokens is None:
            cap = self.config.max_output_tokens(role)
            if price.max_output_tokens is not None:
                cap = min(cap, price.max_output_tokens)
            inject = out_tokens = cap
        else:
            out_tokens = _check_max_tokens(max_tokens)
        if extra:
            # n / best_of completions: each may use the whole cap, the prompt
            # is billed once (see COMPLETION_KEYS in estimate.py).
            out_tokens *= billed_completions(extra)
        if price.variable and (price.tiers or extra):  # the tier this call lands in
            price = price.for_usage(
                reserved_prompt,
                normalize_service_tier(extra.get("service_tier")) if extra else None
            )
        flat = price.atto_flat  # input, output, ..., per-request fee (e.g. Perplexity's)
        if flat is not None:
            amount = atto_to_nano_ceil(reserved_prompt * flat[0] + out_tokens * flat[1]
                                       + flat[5])
        else:
            amount = to_nano_ceil(reserved_prompt * price.input + out_tokens * price.output
                                  + (price.per_request or 0))
        return _Sized(prompt_tokens, out_tokens, inject, amount,
                      reserved_prompt - prompt_tokens, 0 if exact is not None else counted,
                      family, exact is not None)

    def _family(self, key: tuple[str, str | None, str]) -> str:
        """``model_family`` of (model, provider hint, price provider), cached (bounded)."""
        family = model_family(*key)
        if len(self._families) >= 4096:  # model names can come from outside (a proxy)
            self._families.clear()
        self._families[key] = family
        return family

    def _exact_tokens(self, role: str, price: Price, model: str, messages: Sequence[Any],
                      tools: Sequence[Mapping[str, Any]] | None, system: Any,
                      extra: Mapping[str, Any] | None, provider: str | None) -> int | None:
        """The prompt's exact count when ``exact_count`` asks for one, else None.

        The endpoint counts the request without its newest message (cached
        per prefix, see ``crew_budget.estimate.exact``); the estimator adds
        that message. None (the estimate is used) when the model has no
        counting endpoint or the endpoint does not answer in time: logged and
        counted in ``counters["exact_count_fallbacks"]``, never raised.
        """
        if not self._exact_cache or not self._wants_exact(role, model):
            return None
        from crew_budget.estimate.exact import ExactCounter, ExactCountFailed, api_family

        family = api_family(model, price.provider)
        if family is None:
            return None
        msgs = list(messages)
        whole = len(msgs) < 2 or _has_tool_call(msgs[-2])  # a tool call needs its result
        prefix = msgs if whole else msgs[:-1]
        counter = self.exact_counter
        if counter is None:
            counter = self.exact_counter = ExactCounter(
                timeout=float(self.config.exact_count_timeout))
        try:
            exact: int = counter.count_prefix(family, model, prefix, tools, system, extra)
        except ExactCountFailed as exc:
            from crew_budget.redact import redact_text

            log.warning("crew-budget: exact_count for %s fell back to the estimate: %s",
                        model, redact_text(str(exc)))
            self._bump("exact_count_fallbacks")
            return None
        self._bump("exact_counts")
        if not whole:  # the newest message, estimated: counted exactly next call
            count = self.estimator.count_prompt
            exact += max(0, count(model, price, msgs, tools, system=system, extra=extra,
                                  calibrated=False)
                         - count(model, price, prefix, tools, system=system, extra=extra,
                                 calibrated=False))
        return exact

    def _wants_exact(self, role: str, model: str) -> bool:
        """``exact_count`` of the role, else of the model's budget, else of its price."""
        key = (role, model)
        found = self._exact_cache.get(key)
        if found is not None:
            return found
        cfg = self.config
        bare = model.rsplit("/", 1)[-1]
        budget = cfg.role_budget(role) if role else None
        choices: list[bool | None] = [budget.exact_count if budget is not None else None]
        role_models = getattr(budget, "models", None) or {}
        for table in (role_models, cfg.models, cfg.prices):
            entry = table.get(model) or table.get(bare)
            choices.append(getattr(entry, "exact_count", None) if entry is not None else None)
        wanted = next((c for c in choices if c is not None), False)
        if len(self._exact_cache) >= 4096:
            self._exact_cache.clear()
            self._exact_cache[("", "")] = False  # stays non-empty: see _exact_tokens
        self._exact_cache[key] = wanted
        return wanted

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
        provider: str | None = None,
    ) -> Ticket:
        """Estimate the call, reserve it against every budget, or raise.

        Raises ``BudgetExceeded`` (nothing was charged), ``UnknownRoleError``
        (no role, or one that matches no budget: never unlimited),
        ``UnknownModelError`` (no price: never $0) or ``LedgerUnavailable``
        (fail closed). ``role`` is resolved by ``BudgetConfig.resolve_role``
        (``" Researcher "`` is charged to ``researcher``); the ticket and the
        spend record carry the resolved name, and the name as given goes in
        the record's metadata as ``requested_role`` when it differs.
        ``provider`` is what the adapter knows of where the call goes (see
        ``PriceBook.get``); the ticket keeps it so settle uses the same price.
        Inside ``crew_budget.run(...)`` the call is also reserved against the
        run's buckets, and the record's metadata ``run`` (and ``runs``, when
        runs nest) names it; those two keys are the guard's: given in
        ``metadata`` they are dropped.

        What a call that does not fit does is the role's ``on_exceed``
        (``BudgetConfig.policy_for``): ``stop`` and ``end_task`` raise
        (``end_task`` is for the CrewAI adapter to turn into a final
        answer); ``downgrade`` returns a ticket for the first listed model
        that fits, with ``ticket.model`` that model (send the request there)
        and ``ticket.downgraded_from`` (and the record's metadata
        ``downgraded_from``) the model asked for; ``shadow`` never raises
        ``BudgetExceeded``: the call is charged, its record's metadata says
        ``shadow_blocked`` (``"scope|window"``) and a ``shadow_blocked``
        event precedes the ``allowed`` one.
        """
        given = role
        resolved = self._role_names.get(role)
        role = resolved if resolved is not None else self._resolve_role(role)
        sized = self._estimate_nano(
            role, self.prices.get(model, provider), model, messages, tools, max_tokens, system,
            extra, provider
        )
        prompt_tokens, out_tokens, inject, amount = sized[:4]
        tier = normalize_service_tier(extra.get("service_tier")) if extra else None
        crew_name = crew or self._crew_name
        meta = dict(metadata or {})
        if given != role:
            meta["requested_role"] = given
        # The run comes from the caller's context, never from its metadata
        # (invariant 8): a "run" key passed in is replaced or dropped.
        meta.pop("run", None)
        meta.pop("runs", None)
        meta.pop(SHADOW_KEY, None)  # the guard's mark: rollups count it (ledger.base)
        active = current_run()
        chain: RunChain = ()
        if active is not None:
            chain = tuple((r.run_id, r.limit_nano) for r in active.chain())
            meta["run"] = active.run_id
            if len(chain) > 1:
                meta["runs"] = [rid for rid, _ in chain]
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
        policy = self.config.policy_for(role)
        reserve = self._reserve_shadow if policy == "shadow" else self._reserve
        try:
            try:
                result = reserve(role, rid, amount, draft, model, chain)
            except LedgerReset as reset:
                if self.config.on_ledger_reset != "continue":
                    raise
                self._accept_reset(reset)
                result = reserve(role, rid, amount, draft, model, chain)
        except LedgerReset:
            raise  # the ledger answers, but its books are gone: fail_open does not apply
        except LedgerUnavailable as exc:
            if "Timeout" in exc.reason:
                # The request may have reached a server that was only slow
                # (frozen, swapping) and run later: release it then, if so.
                self._pending.append((Ticket(rid, role, model, crew_name, from_nano(amount),
                                             prompt_tokens, out_tokens, inject, 0.0),
                                      None, _RELEASE_IF_RESERVED))
            self._flush_pending_quietly()
            if not self.config.fail_open:
                raise
            log.warning(
                "crew-budget: ledger %s unreachable; UNGUARDED call allowed by fail_open "
                "(role=%s model=%s estimate=$%s)", self.ledger.url, role, model, from_nano(amount)
            )
            jid = ""
            if self._journal is not None:
                jid = "j" + rid
                self._journal.append({
                    "k": "call", "id": jid, "ts": self._clock() + self._offset, "role": role,
                    "model": model, "crew": crew_name, "estimate_nano": amount, "metadata": meta,
                })
                self._journal_dirty = True
            ticket = Ticket("", role, model, crew_name, from_nano(amount), prompt_tokens,
                            out_tokens, inject, 0.0, guarded=False, metadata=meta,
                            journal_id=jid, provider=provider, service_tier=tier,
                            **sized.ticket_fields())
            if self._listeners:
                self._emit(GuardEvent("allowed", role, model, crew_name, ticket.estimate,
                                      ticket=ticket))
            return ticket
        if isinstance(result, Denial):
            st = result.state
            assert st.bucket.limit_nano is not None
            need = amount if st.bucket.unit == "usd" else result.amount_nano
            fields = _exceeded_fields(role, model, st, need)
            exceeded = self._paused_error(role, st, fields) or BudgetExceeded(**fields)
            if st.reserved_nano and st.spent_nano + need <= st.bucket.limit_nano:
                note = self._lease_note(st.reserved_nano, st.bucket.unit)
                exceeded = BudgetExceeded(**fields, message=f"{exceeded} {note}")
            # Another model helps only a dollar limit: it needs the same call
            # and about the same prompt, so a token or call limit stops it.
            if isinstance(policy, Downgrade) and st.bucket.unit == "usd":
                moved = self._downgrade(policy, role, model, messages, tools, max_tokens, draft,
                                        chain, system, extra, provider)
                if moved is not None:
                    return moved
            if self._listeners:
                self._emit(GuardEvent("blocked", role, model, crew_name, from_nano(amount),
                                      error=exceeded))
            raise exceeded
        if isinstance(result, _ShadowGrant):
            meta = dict(result.draft.metadata)
            result = self._shadow_blocked(result, role, model, crew_name, amount)
        if self._pending:
            self._flush_pending_quietly()
        if self._journal_dirty:
            # The ledger just answered: if the last replay stopped on an
            # outage, book now rather than after the once-a-second pause.
            self._replay_journal(force=self._replay_blocked)
        ticket = Ticket(rid, role, model, crew_name, from_nano(amount), prompt_tokens, out_tokens,
                        inject, result.expires_at, metadata=meta, provider=provider,
                        service_tier=tier, **sized.ticket_fields())
        if self._listeners:
            self._emit(GuardEvent("allowed", role, model, crew_name, ticket.estimate,
                                  ticket=ticket))
        return ticket

    def _resolve_role(self, name: Any) -> str:
        """``config.resolve_role`` once per name (preflight is a hot path), logging opt-ins."""
        cfg = self.config
        resolved = cfg.resolve_role(name)  # raises UnknownRoleError
        if resolved == (cfg.crew_role or DEFAULT_CREW_ROLE) and resolved not in cfg.roles:
            log.info("crew-budget: calls made for the crew (role %r) are charged to the crew "
                     "and global budgets: %r has no budget of its own under roles:", name,
                     resolved)
        elif resolved not in cfg.roles and resolved != DEFAULT_ROLE:
            log.warning(
                "crew-budget: role %r matches no budget under roles:; unknown_roles: allow "
                "charges its calls to the crew and global budgets only", name)
        elif resolved == DEFAULT_ROLE and name != DEFAULT_ROLE:
            log.info("crew-budget: role %r is not listed under roles:; charged to default_role",
                     name)
        names = self._role_names
        if len(names) >= 4096:  # bounded: names can come from outside (proxy headers)
            names.clear()
        names[name] = resolved
        return resolved

    def _lease_note(self, reserved_nano: int, unit: str = "usd") -> str:
        """Why a refusal may clear by itself: reservations still held by leases."""
        try:
            oldest = self.ledger.oldest_lease()
        except LedgerError:
            oldest = None
        amount = f"${from_nano(reserved_nano)}" if unit == "usd" else f"{reserved_nano:,} {unit}"
        held = f"{amount} of it is held by reservations of calls in flight"
        if oldest is None:
            return (f"{held} (or of processes that died before settling). Fix: wait for them "
                    "to settle, or lower `lease_seconds` so dead ones are reaped sooner.")
        wait = max(0.0, oldest - (self._clock() + self._offset))
        when = datetime.fromtimestamp(oldest, self._tz).strftime("%Y-%m-%d %H:%M:%S %Z")
        return (f"{held}, or of processes that died before settling: a lease held that long "
                f"is charged at its reserved amount when it ends; the oldest lease ends at "
                f"{when} (in {wait:.0f} s). Fix: wait, or lower `lease_seconds` "
                f"(now {self._lease:g} s) so dead processes' reservations are reaped sooner.")

    def _accept_reset(self, reset: LedgerReset) -> None:
        """``on_ledger_reset: continue``: record the loss in the ledger, go on from $0."""
        log.error("crew-budget: %s Continuing from $0 because on_ledger_reset is 'continue'.",
                  reset)
        self.ledger.recover(who=f"crew-budget guard (pid {os.getpid()})",
                            reason=f"on_ledger_reset: continue ({reset.detail})")
        self._drop_pending("the ledger lost its state")

    def _reserve(self, role: str, rid: str, amount: int, draft: RecordDraft, model: str,
                 chain: RunChain) -> Any:
        now = self._clock() + self._offset
        for _attempt in range(4):
            if now >= self._ov_expiry:  # a live limit's --until passed
                self._activate_overrides(now)
            with self._ov_lock:  # the buckets and the overrides version they were built with
                buckets, version = self._cached_buckets(role, now, model), self._ov_version
            if chain:
                buckets += self._run_buckets(role, model, chain, now)
            req = ReserveRequest(rid, buckets, amount, self._lease, draft, version)
            try:
                result = self.ledger.reserve(req)
            except ClockSkew as skew:
                self._offset = skew.ledger_now - self._clock()
                now = skew.ledger_now
                continue
            except StaleOverrides:  # an operator changed live limits: re-read, rebuild
                self.refresh_overrides()
                continue
            if self._ov_active and isinstance(result, Reservation):
                return self._refuse_if_paused(role, result)
            return result
        raise LedgerUnavailable(self.ledger.url, "ledger clock keeps moving across window bounds"
                                " (or live limits keep changing)")

    # -- on-exceed policies (issue 12): softer ways out than stopping ----------

    def _reserve_shadow(self, role: str, rid: str, amount: int, draft: RecordDraft, model: str,
                        chain: RunChain) -> Reservation | _ShadowGrant:
        """``shadow``: reserve without any limit, noting the bucket that would have refused.

        The would-be refusal is read from ``status`` just before an unlimited
        reserve, so the ledger writes no ``blocked`` record (nothing was
        blocked) and the call is charged like any other. Two calls racing at
        the edge of a limit may both pass unflagged: shadow mode measures,
        it does not enforce, so it does not pay for the atomic check.
        """
        now = self._clock() + self._offset
        for _attempt in range(3):
            buckets = self._buckets(role, now, model)
            if chain:
                buckets += self._run_buckets(role, model, chain, now)
            over = next((st for st in self.ledger.status(list(buckets))
                         if st.bucket.limit_nano is not None
                         and st.spent_nano + st.reserved_nano
                         + bucket_need(st.bucket, amount, draft) > st.bucket.limit_nano),
                        None)
            if over is None:
                req = ReserveRequest(rid, buckets, amount, self._lease, draft)
            else:
                meta = {**draft.metadata,
                        SHADOW_KEY: f"{over.bucket.scope}|{over.bucket.window}"
                        + ("" if over.bucket.unit == "usd" else f"|{over.bucket.unit}")}
                req = ReserveRequest(rid, tuple(replace(b, limit_nano=None) for b in buckets),
                                     amount, self._lease, replace(draft, metadata=meta))
            try:
                granted = self.ledger.reserve(req)
            except ClockSkew as skew:
                self._offset = skew.ledger_now - self._clock()
                now = skew.ledger_now
                continue
            assert isinstance(granted, Reservation)  # no bucket is limited, or none overflows
            return (granted if over is None else
                    _ShadowGrant(granted, over, req.draft, bucket_need(over.bucket, amount, draft)))
        raise LedgerUnavailable(self.ledger.url, "ledger clock keeps moving across window bounds")

    def _shadow_blocked(self, grant: _ShadowGrant, role: str, model: str, crew: str | None,
                        amount: int) -> Reservation:
        """Say out loud that a shadow call would have been blocked (log + event)."""
        st = grant.state
        assert st.bucket.limit_nano is not None
        would = BudgetExceeded(**_exceeded_fields(role, model, st, grant.need))
        if st.bucket.unit == "usd":
            log.warning("crew-budget: SHADOW: role %r: %s %s budget $%s has $%s spent and $%s "
                        "reserved; this %s call (estimated $%s) would have been blocked and was "
                        "sent anyway (on_exceed/mode: shadow)", role, st.bucket.scope,
                        st.bucket.window, would.limit, would.spent, would.reserved, model,
                        would.estimate)
        else:
            log.warning("crew-budget: SHADOW: %s; it was sent anyway (on_exceed/mode: shadow)",
                        would)
        self._bump("shadow_blocked")
        if self._listeners:
            self._emit(GuardEvent("shadow_blocked", role, model, crew, from_nano(amount),
                                  error=would))
        return grant.reservation

    def _downgrade(self, policy: Downgrade, role: str, model: str, messages: Sequence[Any],
                   tools: Sequence[Mapping[str, Any]] | None, max_tokens: int | None,
                   draft: RecordDraft, chain: RunChain, system: Any,
                   extra: Mapping[str, Any] | None, provider: str | None) -> Ticket | None:
        """``downgrade``: price the refused call at each listed model in turn and
        reserve the first that fits; ``None`` if none does (the caller stops it).

        Each model is priced from scratch (its own tokenizer, prices and output
        cap), so the reservation is as true an upper bound as the original.
        A refusal at a listed model leaves its ``blocked`` record, like any.
        """
        for cheaper in policy.downgrade:
            if cheaper == model:
                continue
            price = self.prices.get(cheaper, provider)
            sized = self._estimate_nano(
                role, price, cheaper, messages, tools, max_tokens, system, extra, provider)
            prompt_tokens, out_tokens, inject, amount = sized[:4]
            meta = {**draft.metadata, "downgraded_from": model}
            moved = replace(draft, model=cheaper, estimate_nano=amount,
                            prompt_tokens_estimate=prompt_tokens,
                            output_tokens_reserved=out_tokens, metadata=meta)
            rid = new_reservation_id()
            result = self._reserve(role, rid, amount, moved, cheaper, chain)
            if isinstance(result, Denial):
                continue
            log.info("crew-budget: role %s: %s did not fit its budget; sent to %s instead "
                     "(on_exceed: downgrade)", role, model, cheaper)
            tier = normalize_service_tier(extra.get("service_tier")) if extra else None
            ticket = Ticket(rid, role, cheaper, draft.crew, from_nano(amount), prompt_tokens,
                            out_tokens, inject, result.expires_at, metadata=meta,
                            provider=provider, service_tier=tier, downgraded_from=model,
                            **sized.ticket_fields())
            if self._listeners:
                self._emit(GuardEvent("allowed", role, cheaper, draft.crew, ticket.estimate,
                                      ticket=ticket))
            return ticket
        return None

    def settle(self, ticket: Ticket, usage: Any, *,
               billed_model: str | None = None) -> Settlement:
        """Charge the actual cost from the provider's ``usage`` (idempotent).

        A usage that cannot be trusted (unreadable, a count that is negative,
        NaN, infinite, a bool, a string, above ``MAX_TOKENS``, a missing
        output count, or one whose price reaches ``MAX_NANO``) is a
        ``UsageError``: the call is charged at its reservation (never $0,
        never the absurd amount), logged, counted in
        ``counters["usage_errors"]``, and this returns normally.

        A cost above the reservation is charged as billed (the invoice is
        what counts), logged with its factor, counted in
        ``counters["overruns"]`` and announced as an ``overrun`` event.

        A reservation the ledger no longer knows (it lost its state since
        preflight) is not raised into the agent: the settlement's state is
        ``lost``, the error is logged and ``dropped_settles`` counts it.

        ``billed_model``: the model the provider says answered, when it bills
        by that rather than by the name the call was reserved as (an Azure
        deployment running another model than its name says). The call is
        charged at that model's price, unless the reserved name has a
        ``prices:`` entry (the user's own rate wins) or the name is unknown.
        """
        price = self.prices.get(ticket.model, ticket.provider)
        if billed_model is not None and price.source != "override":
            try:
                price = self.prices.get(billed_model, ticket.provider)
            except CrewBudgetError:
                log.warning("crew-budget: no price for %r, the model that answered; %s is "
                            "charged at %s's rates", billed_model, ticket.reservation_id,
                            ticket.model)
        try:
            parsed = parse_usage(usage)
            if parsed.service_tier is None and ticket.service_tier is not None:
                # The response did not say; the request asked for this tier.
                parsed = replace(parsed, service_tier=ticket.service_tier)
            cost_nano = cost_nano_of(parsed, price)
            if not 0 <= cost_nano < MAX_NANO:
                raise UsageError(
                    f"usage {parsed} prices at ${from_nano(cost_nano)} at {ticket.model}'s "
                    f"rates, outside what one call can cost (0 to 2^53-1 nano-USD)"
                )
        except UsageError as exc:
            log.error("crew-budget: %s; charged at the reservation, $%s (role=%s model=%s "
                      "reservation=%s)", exc, ticket.estimate, ticket.role, ticket.model,
                      ticket.reservation_id)
            self._bump("usage_errors")
            return self._finish(ticket, None, to_nano(ticket.estimate))
        billed_prompt = parsed.prompt_tokens  # a sum (property): read once
        if billed_prompt and not ticket.exact_count:
            self.estimator.calibrate(ticket.model, ticket.prompt_tokens, billed_prompt)
        result = self._finish(ticket, parsed, cost_nano)
        if ticket.counted_prompt_tokens and billed_prompt and (
                result.applied or result.state in ("pending", "unguarded")):
            # Once per call (a repeated settle applies nothing): the margin's sample.
            self.margins.observe(ticket.margin_family, ticket.counted_prompt_tokens,
                                 billed_prompt)
        reserved = to_nano(ticket.estimate)
        if cost_nano > reserved and ticket.guarded and (
                result.state == "pending" or (result.state == "settled" and result.applied)):
            self._overrun(ticket, cost_nano, reserved, parsed)
        return result

    def _bump(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + n

    @property
    def dropped_settles(self) -> int:
        """Settles that could never apply (the ledger no longer knows the
        reservation, e.g. after it lost its state): each dropped with one
        error in the log. The same as ``counters["dropped_settles"]``."""
        return self.counters["dropped_settles"]

    def _overrun(self, ticket: Ticket, cost_nano: int, reserved: int, usage: Usage) -> None:
        """A settle above its reservation: charged as billed, but said out loud.

        The reservation is meant to be an upper bound (invariant 1), so this
        is an estimator or adapter bug (an uncapped output, ``n`` completions
        reserved as one) that let the budget be crossed by the difference.
        """
        factor = Decimal(cost_nano) / Decimal(reserved) if reserved else None
        log.warning(
            "crew-budget: OVERRUN: %s call settled at $%s, %sx its reservation of $%s "
            "(role=%s reservation=%s usage=%s); the difference was not reserved and may "
            "cross the budget", ticket.model, from_nano(cost_nano),
            "inf" if factor is None else f"{factor:.2f}", from_nano(reserved), ticket.role,
            ticket.reservation_id, usage)
        self._bump("overruns")
        if self._listeners:
            self._emit(GuardEvent("overrun", ticket.role, ticket.model, ticket.crew,
                                  ticket.estimate, from_nano(cost_nano), True, ticket=ticket))

    def release(self, ticket: Ticket) -> Settlement:
        """The provider was never reached: drop the reservation at zero cost."""
        return self._finish(ticket, None, None)

    def _finish(self, ticket: Ticket, usage: Usage | None, cost_nano: int | None) -> Settlement:
        result = self._finish_quietly(ticket, usage, cost_nano)
        if self._listeners:
            self._emit(GuardEvent(result.state, ticket.role, ticket.model, ticket.crew,
                                  ticket.estimate, result.cost, result.applied, ticket=ticket,
                                  usage=result.usage))
        return result

    def _finish_quietly(
        self, ticket: Ticket, usage: Usage | None, cost_nano: int | None
    ) -> Settlement:
        if not ticket.guarded:
            if self._journal is not None and ticket.journal_id:
                self._journal.append({"k": "cost", "id": ticket.journal_id,
                                      "cost_nano": cost_nano or 0,
                                      "usage": None if usage is None else asdict(usage)})
                self._journal_dirty = True
                self._replay_journal()
            elif cost_nano:
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
        except ReservationError as exc:
            # The ledger no longer knows the reservation (it lost its state,
            # or the ticket is from another ledger): nothing can be settled,
            # and raising into the agent after its call was made helps no one.
            self._bump("dropped_settles")
            log.error("crew-budget: could not settle %s ($%s, role=%s): %s",
                      ticket.reservation_id, from_nano(cost_nano or 0), ticket.role, exc)
            return Settlement("lost", from_nano(cost_nano or 0), False, usage)
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

    def _replay_journal(self, *, force: bool = False) -> None:
        """Book the journaled fail_open calls, if the ledger is back (never raises)."""
        journal = self._journal
        if journal is None:
            return
        # Calls still in flight in other processes keep the file non-empty;
        # reading it on every call until their lease ends would cost a lock
        # and a read per call, so at most once a second.
        tick = time.monotonic()
        if tick < self._next_replay and not force:
            return
        self._next_replay = tick + 1.0
        self._replay_blocked = False
        try:
            n = journal.replay(self._book_journaled, self._clock() + self._offset, self._lease)
        except (LedgerError, OSError, ValueError, KeyError) as exc:
            log.error("crew-budget: could not replay the fail_open journal %s (%s); will retry",
                      journal.path, exc)
            return
        self._journal_dirty = journal.exists()
        if n:
            log.warning("crew-budget: booked %d call(s) made during a ledger outage from %s",
                        n, journal.path)

    def _book_journaled(self, call: dict[str, Any], cost_nano: int,
                        usage: dict[str, Any] | None) -> None:
        draft = RecordDraft(role=call["role"], model=call["model"], crew=call.get("crew"),
                            estimate_nano=int(call.get("estimate_nano", 0)),
                            metadata={**(call.get("metadata") or {}), "journaled": True})
        ts = float(call["ts"])
        record = SpendRecord.build(ts=ts, reservation_id=call["id"], outcome="unguarded",
                                   draft=draft, cost_nano=cost_nano,
                                   usage=None if usage is None else Usage(**usage))
        buckets = self._buckets(call["role"], ts, call["model"])
        meta = call.get("metadata") or {}
        run_ids = meta.get("runs") or ([meta["run"]] if meta.get("run") else [])
        if run_ids:  # a charge books the cost whatever the limits: none are needed
            buckets += self._run_buckets(call["role"], call["model"],
                                         tuple((str(r), None) for r in run_ids), ts)
        try:
            self.ledger.charge(call["id"], buckets, cost_nano, record)
        except LedgerUnavailable:
            self._replay_blocked = True
            raise

    def _drop_pending(self, why: str) -> None:
        n = len(self._pending)
        if n:
            self._pending.clear()
            self._bump("dropped_settles", n)
            log.error("crew-budget: dropped %d pending settle(s): %s, so their reservations "
                      "are gone and cannot be settled", n, why)

    def _flush_pending_quietly(self) -> None:
        """Retry settles that failed while the ledger was down. Never raises.

        One that can never apply (the ledger no longer knows the
        reservation, e.g. it lost its state; or it rejected the operation)
        is dropped with one error and counted in ``dropped_settles``: left
        queued it would fail every later call.
        """
        while self._pending:
            ticket, usage, cost = self._pending[0]
            try:
                if cost < 0:
                    self.ledger.release(ticket.reservation_id)
                else:
                    self.ledger.settle(ticket.reservation_id, cost, usage or Usage())
            except LedgerReset:
                return
            except LedgerUnavailable:
                return
            except (LedgerError, ValueError) as exc:
                self._pending.popleft()
                if cost == _RELEASE_IF_RESERVED:
                    continue  # the timed-out reserve never landed: nothing to undo
                self._bump("dropped_settles")
                log.error("crew-budget: dropped the pending settle of %s ($%s, role=%s): it "
                          "can never apply (%s)", ticket.reservation_id,
                          from_nano(max(cost, 0)), ticket.role, exc)
                continue
            self._pending.popleft()

    # -- reading ------------------------------------------------------------

    @property
    def config(self) -> BudgetConfig:
        """The configuration in force; assigning a new one takes effect at once."""
        return self._config

    @config.setter
    def config(self, value: BudgetConfig) -> None:
        self._config = value
        self._bucket_cache: dict[tuple[str | None, str | None],
                                 tuple[float, float, tuple[Bucket, ...]]] = {}
        self._scope_cache: dict[tuple[str | None, str | None],
                                tuple[tuple[str, Limits], ...]] = {}
        self._role_names: dict[Any, str] = {}
        self._lease = float(value.lease_seconds)
        self._crew_name = value.crew.name if value.crew else None
        # (role, model) -> exact_count wanted; empty when no exact_count is
        # set anywhere, so preflight pays one truth test for the feature.
        self._exact_cache: dict[tuple[str, str], bool] = (
            {("", ""): False} if _mentions_exact(value) else {})

    def buckets(self, role: str | None = None, now: float | None = None,
                model: str | None = None, *, units: bool = False) -> list[Bucket]:
        """The calendar buckets a call by ``role`` to ``model`` touches.

        Dollar buckets only, unless ``units``: then the token and call
        buckets too (``Bucket.unit``; their limits are counts, not nano-USD).

        ``role`` None means every configured role; ``model`` None means every
        model budget (of the role, and ``models:``). ``role`` is resolved as
        ``preflight`` resolves it (``UnknownRoleError`` for a name that
        matches no budget). Cached until the earliest window among them
        ends: every call of an agent loop would otherwise redo the same
        calendar arithmetic. Run buckets are not included: see ``run_status``.
        """
        if role is not None:
            resolved = self._role_names.get(role)
            role = resolved if resolved is not None else self._resolve_role(role)
        out = self._buckets(role, (self._clock() + self._offset) if now is None else now, model)
        return list(out) if units else [b for b in out if b.unit == "usd"]

    def _buckets(self, role: str | None, t: float, model: str | None = None
                 ) -> tuple[Bucket, ...]:
        # Under the live-limits lock: a bucket computed from old overrides
        # must never be cached after a refresh cleared the cache.
        with self._ov_lock:
            if t >= self._ov_expiry:  # a live limit's --until passed (status, journal)
                self._activate_overrides(t)
            return self._cached_buckets(role, t, model)

    def _cached_buckets(self, role: str | None, t: float, model: str | None
                        ) -> tuple[Bucket, ...]:
        key = (role, model)
        cached = self._bucket_cache.get(key)
        if cached is not None and cached[0] <= t < cached[1]:
            return cached[2]
        out = tuple(self._compute_buckets(role, t, model))
        if out:
            valid_from = max(b.starts_at for b in out)
            valid_until = min(b.ends_at for b in out)
            if len(self._bucket_cache) >= 4096:  # bounded: model names come from callers
                self._bucket_cache.clear()
            self._bucket_cache[key] = (valid_from, valid_until, out)
        return out

    def _run_buckets(self, role: str | None, model: str | None, chain: RunChain,
                     t: float) -> tuple[Bucket, ...]:
        """The run buckets of a call inside ``chain`` (innermost run first).

        Scope ``run`` for every run of the chain (limited by its ``usd`` or
        not limited: then it only counts), and each scope of the call with a
        ``per_run`` limit, for the innermost run. Window ``run``, period the
        run id; never cached (run ids are unique).
        """
        out: list[Bucket] = []
        for run_id, limit_nano in chain:
            s = run_span(run_id, t)
            out.append(Bucket("run", RUN_WINDOW, run_id, limit_nano, s.starts_at, s.ends_at))
        s = run_span(chain[0][0], t)
        for scope, limits in self._scopes(role, model):
            if limits.per_run is not None:
                out.append(Bucket(scope, RUN_WINDOW, chain[0][0], to_nano(limits.per_run),
                                  s.starts_at, s.ends_at))
            for unit, counts in limits.unit_limits():
                if counts.per_run is not None:
                    out.append(Bucket(scope, RUN_WINDOW, chain[0][0], counts.per_run,
                                      s.starts_at, s.ends_at, cast(Unit, unit)))
        return tuple(out)

    def run_status(self, run: Run, role: str | None = None) -> list[BudgetStatus]:
        """What ``run`` has spent and reserved in each of its buckets.

        The ``run`` scope, then each ``per_run`` scope of ``role`` (resolved
        as ``preflight`` does; every role if None), the crew, global and
        model budgets. ``resets_at`` of a run bucket is meaningless (runs do
        not roll over): it is the bucket's current horizon.
        """
        if role is not None:
            resolved = self._role_names.get(role)
            role = resolved if resolved is not None else self._resolve_role(role)
        buckets = self._run_buckets(role, None, ((run.run_id, run.limit_nano),),
                                    self._clock() + self._offset)
        return self._status(list(buckets))

    def _scopes(self, role: str | None, model: str | None) -> tuple[tuple[str, Limits], ...]:
        """Every (scope, limits) a call by ``role`` to ``model`` touches; cached."""
        key = (role, model)
        cached = self._scope_cache.get(key)
        if cached is not None:
            return cached
        with self._ov_lock:  # see _buckets
            out = tuple(self._compute_scopes(role, model))
            if len(self._scope_cache) >= 4096:
                self._scope_cache.clear()
            self._scope_cache[key] = out
        return out

    def _compute_buckets(self, role: str | None, t: float, model: str | None = None
                         ) -> list[Bucket]:
        out: list[Bucket] = []
        for scope, limits in self._scopes(role, model):
            for window in limits.windows():
                s = span(window, t, self._tz)
                limit = limits.limit_for(window)
                nano = None if limit is None else to_nano(limit)
                out.append(Bucket(scope, window, s.period, nano, s.starts_at, s.ends_at))
            for unit, counts in limits.unit_limits():  # tokens and calls, beside the dollars
                for window in counts.windows():
                    s = span(window, t, self._tz)
                    out.append(Bucket(scope, window, s.period, counts.limit_for(window),
                                      s.starts_at, s.ends_at, cast(Unit, unit)))
        return out

    def _compute_scopes(self, role: str | None, model: str | None) -> list[tuple[str, Limits]]:
        return self._apply_overrides(self._configured_scopes(role, model))

    def _configured_scopes(self, role: str | None, model: str | None
                           ) -> list[tuple[str, Limits]]:
        cfg = self.config
        scopes: list[tuple[str, Limits]] = []
        # ``role`` is resolved: a configured key, DEFAULT_ROLE, or a name that
        # unknown_roles: allow lets through with no role budget.
        if role is None:
            scopes.extend((f"role:{name}", b) for name, b in cfg.roles.items())
            if cfg.default_role is not None:
                scopes.append((f"role:{DEFAULT_ROLE}", cfg.default_role))
        elif role in cfg.roles:
            scopes.append((f"role:{role}", cfg.roles[role]))
        elif role == DEFAULT_ROLE and cfg.default_role is not None:
            scopes.append((f"role:{DEFAULT_ROLE}", cfg.default_role))
        if cfg.crew is not None:
            scopes.append((f"crew:{cfg.crew.name}", cfg.crew))
        if cfg.global_limits is not None:
            scopes.append(("global", cfg.global_limits))
        scopes.extend(cfg.model_scopes(role, model))
        return scopes

    def status(self, role: str | None = None) -> list[BudgetStatus]:
        """Every configured scope and window: limit, spent, reserved, remaining.

        Dollar rows first in each scope, then its token and call limits
        (``BudgetStatus.unit``).
        """
        return self._status(self.buckets(role, units=True))

    def _status(self, buckets: list[Bucket]) -> list[BudgetStatus]:
        states: list[BucketState] = self.ledger.status(buckets)

        def amount(b: Bucket, n: int) -> Decimal:
            return from_nano(n) if b.unit == "usd" else Decimal(n)

        return [
            BudgetStatus(
                scope=s.bucket.scope,
                window=s.bucket.window,
                period=s.bucket.period,
                limit=None if s.bucket.limit_nano is None else amount(s.bucket,
                                                                       s.bucket.limit_nano),
                spent=amount(s.bucket, s.spent_nano),
                reserved=amount(s.bucket, s.reserved_nano),
                remaining=(None if s.remaining_nano is None
                           else amount(s.bucket, s.remaining_nano)),
                resets_at=datetime.fromtimestamp(s.bucket.ends_at, self._tz),
                unit=s.bucket.unit,
            )
            for s in states
        ]

    # -- live limits (crew-budget set / pause / resume) ----------------------
    #
    # Overrides live in the ledger (invariant 8: an operator's command or
    # this API writes them, never a request). The guard keeps the version it
    # built its buckets with and sends it with every reserve; the ledger
    # answers StaleOverrides when it changed, and only then are they read
    # again. An override replaces the YAML's limit of one window of one role
    # (looser or tighter); a pause makes that role's limits $0 and turns the
    # refusal into RolePaused. ``until`` is checked on the ledger's clock.

    def _init_overrides(self) -> None:
        self._ov_version = 0
        self._ov_loaded: tuple[Override, ...] = ()
        self._ov_active: dict[str, dict[str, Override]] = {}
        self._ov_expiry = math.inf
        self._ov_lock = threading.RLock()

    def refresh_overrides(self) -> list[Override]:
        """Read the live limits from the ledger now; returns those in force."""
        version, stored = self.ledger.overrides_state()
        with self._ov_lock:
            if version >= self._ov_version:  # a slower concurrent read never goes back
                self._ov_version, self._ov_loaded = version, stored
            self._activate_overrides(self._clock() + self._offset)
        return self.overrides()

    def overrides(self) -> list[Override]:
        """The live limits in force as this guard last read them (role, kind order)."""
        return sorted((o for kinds in self._ov_active.values() for o in kinds.values()),
                      key=lambda o: (o.role, o.kind))

    def _activate_overrides(self, now: float) -> None:
        active: dict[str, dict[str, Override]] = {}
        expiry = math.inf
        for o in self._ov_loaded:
            if o.active(now):
                active.setdefault(o.role, {})[o.kind] = o
                if o.until is not None:
                    expiry = min(expiry, o.until)
        with self._ov_lock:
            self._ov_active, self._ov_expiry = active, expiry
            self._scope_cache.clear()
            self._bucket_cache.clear()

    def _apply_overrides(self, scopes: list[tuple[str, Limits]]) -> list[tuple[str, Limits]]:
        if not self._ov_active:
            return scopes
        out = []
        for scope, limits in scopes:
            kinds = self._ov_active.get(scope[5:]) if scope.startswith("role:") else None
            out.append((scope, limits if not kinds else _overridden(limits, kinds)))
        return out

    def _paused_error(self, role: str, state: BucketState, fields: dict[str, Any]
                      ) -> RolePaused | None:
        pause = self._ov_active.get(role, {}).get("paused")
        if pause is None or state.bucket.scope != f"role:{role}":
            return None
        return RolePaused(paused_by=pause.who, reason=pause.reason, paused_at=pause.set_at,
                          until=pause.until, **fields)

    def _refuse_if_paused(self, role: str, granted: Reservation) -> Reservation | Denial:
        """A paused role whose call was granted anyway (it cost $0 against a $0
        limit): take the reservation back and refuse it like any other."""
        if "paused" not in self._ov_active.get(role, {}):
            return granted
        for b in granted.buckets:
            if b.scope == f"role:{role}":
                self.ledger.release(granted.reservation_id)
                return Denial(BucketState(b, 0, 0), granted.amount_nano)
        return granted

    def live_role(self, role: str) -> str:
        """The role live limits of ``role`` apply to: resolved as ``preflight`` does,
        and one with a budget of its own (or ``default_role``), else ``ConfigError``."""
        resolved = self._resolve_role(role)
        cfg = self.config
        if resolved in cfg.roles or (resolved == DEFAULT_ROLE and cfg.default_role is not None):
            return resolved
        known = ", ".join(sorted(cfg.roles)) or "none"
        raise ConfigError(f"role {role!r} has no budget of its own under roles: (known roles: "
                          f"{known}), so there is no limit to change; add it to the YAML first",
                          source="live limits", path=str(role))

    def _write_overrides(self, role: str, event: str, put: list[Override], drop: list[str],
                         now: float, who: str, reason: str, until: float | None,
                         detail: Mapping[str, Any]) -> int:
        record = SpendRecord(
            ts=now, reservation_id="", outcome="override", role=role, model="",
            scope=f"role:{role}",
            metadata={"event": event, "who": who, "reason": reason, "until": until, **detail},
        )
        self.ledger.write_overrides(put, drop, record)
        self.refresh_overrides()
        return self._ov_version

    def _check_until(self, until: float | None, now: float) -> float | None:
        if until is None:
            return None
        if not math.isfinite(until) or until <= now:
            def utc(ts: float) -> str:
                return datetime.fromtimestamp(ts, self._tz).strftime("%Y-%m-%d %H:%M:%S %Z")

            shown = utc(until) if math.isfinite(until) else repr(until)
            raise ConfigError(f"until {shown} is not in the future (the ledger's clock reads "
                              f"{utc(now)}); give a later time", source="live limits")
        return float(until)

    def set_limits(self, role: str, *, hourly_usd: object = None, daily_usd: object = None,
                   monthly_usd: object = None, until: float | None = None,
                   who: str | None = None, reason: str = "") -> int:
        """Replace ``role``'s YAML limits for the given windows, in every process.

        Looser or tighter than the YAML (which stays the baseline: ``clear_limits``
        goes back to it), with the YAML's bounds (0 .. ``MAX_LIMIT_USD``).
        ``until`` (Unix seconds) ends it. Audited in the ledger as an
        ``override`` record (``who``: default user@host). Every guard on the
        ledger applies it on its next call. Returns the new version.
        """
        resolved = self.live_role(role)
        try:
            amounts = check_code_limits(resolved, hourly=hourly_usd, daily=daily_usd,
                                        monthly=monthly_usd)
        except ConfigError as exc:  # the YAML's bounds; named as live limits, not code
            raise ConfigError(exc.detail.replace("_usd: ", ": ", 1), source="live limits",
                              path=resolved) from None
        if not amounts:
            raise ConfigError("set which limit? give hourly_usd, daily_usd or monthly_usd",
                              source="live limits", path=resolved)
        now = self.ledger.now()
        end = self._check_until(until, now)
        who = who or _operator()
        put = [Override(resolved, cast(OverrideKind, kind), to_nano(value), who, reason, now,
                        end) for kind, value in amounts.items()]
        return self._write_overrides(resolved, "set", put, [], now, who, reason, end,
                                     {"limits": {k: str(v) for k, v in amounts.items()}})

    def clear_limits(self, role: str, *, who: str | None = None, reason: str = "") -> int:
        """Drop ``role``'s live window limits: the YAML's apply again (a pause stays)."""
        resolved = self.live_role(role)
        now = self.ledger.now()
        kinds: tuple[OverrideKind, ...] = ("hourly", "daily", "monthly")
        return self._write_overrides(resolved, "clear", [], [f"{resolved}|{k}" for k in kinds],
                                     now, who or _operator(), reason, None, {})

    def pause(self, role: str, *, until: float | None = None, who: str | None = None,
              reason: str = "") -> int:
        """Refuse every call of ``role`` (``RolePaused``) in every process until resumed
        (or ``until``, Unix seconds). Audited like ``set_limits``."""
        resolved = self.live_role(role)
        now = self.ledger.now()
        end = self._check_until(until, now)
        who = who or _operator()
        put = [Override(resolved, "paused", None, who, reason, now, end)]
        return self._write_overrides(resolved, "pause", put, [], now, who, reason, end, {})

    def resume(self, role: str, *, who: str | None = None, reason: str = "") -> int:
        """Lift a pause of ``role``; its calls run again on their next try."""
        resolved = self.live_role(role)
        now = self.ledger.now()
        return self._write_overrides(resolved, "resume", [], [f"{resolved}|paused"], now,
                                     who or _operator(), reason, None, {})

    @property
    def pending_settles(self) -> int:
        """Settles waiting for the ledger to come back (retried on the next call)."""
        return len(self._pending)

    def close(self) -> None:
        """Stop alerts, retry pending settles and journaled calls once, close the ledger.

        Never raises for a settle or journal entry that cannot be written now:
        those are logged (a journal stays on disk for the next guard).
        """
        if self.alerts is not None:
            self.alerts.close()
        self._flush_pending_quietly()
        self.margins.flush()  # never raises: margins are statistics, not money
        if self.exact_counter is not None:
            self.exact_counter.close()
        if self._pending:
            log.error("crew-budget: closing with %d settle(s) not written (ledger %s down); "
                      "their reservations will expire at their reserved amounts",
                      len(self._pending), self.ledger.url)
        if self._journal_dirty:
            self._replay_journal(force=True)
        self.ledger.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _mentions_exact(cfg: BudgetConfig) -> bool:
    """Does any role, model budget or price set ``exact_count``?"""
    budgets: list[Any] = [*cfg.roles.values(), cfg.default_role, *cfg.models.values(),
                          *cfg.prices.values()]
    for role in cfg.roles.values():
        budgets.extend(role.models.values())
    return any(getattr(b, "exact_count", None) is not None for b in budgets)


def _overridden(limits: Limits, kinds: Mapping[str, Override]) -> Limits:
    """``limits`` with live limits applied: a window's override replaces its
    limit; a pause makes every limited window $0 (the day, if none is)."""
    update: dict[str, Any] = {
        k: from_nano(o.limit_nano) for k, o in kinds.items()
        if k != "paused" and o.limit_nano is not None
    }
    if "paused" in kinds:
        windows = [k for k in ("hourly", "daily", "monthly")
                   if update.get(k, getattr(limits, k)) is not None] or ["daily"]
        update.update(dict.fromkeys(windows, Decimal(0)))
    # Not validated again: an operator may set a day above the month, say.
    return limits.model_copy(update=update)


def _operator() -> str:
    """user@host of whoever runs this process: the default ``who`` of live limits."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown user"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True, slots=True)
class _ShadowGrant:
    """A shadow-mode reservation that the limits would have refused (``state``)."""

    reservation: Reservation
    state: BucketState
    draft: RecordDraft
    need: int = 0
    """What the call needed from that bucket, in its unit."""


def _exceeded_fields(role: str, model: str, st: BucketState, need: int) -> dict[str, Any]:
    """``BudgetExceeded``'s facts for a refusal by ``st``'s bucket: dollars for a
    USD bucket, whole counts and its ``unit`` for a token or call bucket."""
    b = st.bucket
    assert b.limit_nano is not None
    if b.unit == "usd":
        return {"role": role, "scope": b.scope, "window": b.window, "period": b.period,
                "limit": from_nano(b.limit_nano), "spent": from_nano(st.spent_nano),
                "reserved": from_nano(st.reserved_nano), "estimate": from_nano(need),
                "model": model}
    return {"role": role, "scope": b.scope, "window": b.window, "period": b.period,
            "limit": Decimal(b.limit_nano), "spent": Decimal(st.spent_nano),
            "reserved": Decimal(st.reserved_nano), "estimate": Decimal(need), "model": model,
            "unit": b.unit}


def _default_journal(namespace: str, url: str) -> str:
    """``<XDG_STATE_HOME or ~/.local/state>/crew-budget/journal-<namespace>-<url hash>.jsonl``:
    one file per ledger, so a replay never books calls into another ledger."""
    import hashlib

    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                             "state")
    tag = hashlib.sha256(url.encode()).hexdigest()[:12]
    return os.path.join(state, "crew-budget", f"journal-{namespace}-{tag}.jsonl")
