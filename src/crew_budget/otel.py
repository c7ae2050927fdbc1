"""OpenTelemetry metrics and span attributes for guarded calls (extra ``crew-budget[otel]``).

Where analytics already lives (Grafana, Datadog, Honeycomb, an OTel
collector in front of a warehouse), budgets should show up next to the
GenAI telemetry other instrumentations emit, under the same names. So
``instrument(guard)`` adds one ``Guard`` listener that records, through the
OpenTelemetry *API* (the application's SDK and exporters decide where it
goes):

``crew_budget.decisions`` (counter, ``{call}``)
    one per preflight; ``crew_budget.decision`` = ``allowed`` | ``blocked`` |
    ``unguarded`` (let through by ``fail_open`` while the ledger was down).
    Blocked calls also carry ``crew_budget.scope`` (``role:researcher``,
    ``crew:team``, ``global``) and ``crew_budget.window`` (``hour`` ...).
``crew_budget.settlements`` (counter, ``{call}``)
    one per finished reservation; ``crew_budget.outcome`` = ``settled`` |
    ``released`` | ``expired`` | ``pending`` | ``unguarded``. A repeated
    settle that changed nothing is not counted; an expiry is counted once.
``crew_budget.cost`` (counter, ``USD``)
    dollars charged (settled, expired at the reserved amount, unguarded,
    pending retry), with ``crew_budget.outcome``.
``crew_budget.overruns`` (counter, ``{call}``) and ``crew_budget.overrun.cost`` (``USD``)
    settled calls whose actual cost exceeded the reservation, and by how
    much: the prompt-estimation error invariant 1 allows, made visible.
``gen_ai.client.token.usage`` (histogram, ``{token}``)
    the GenAI semantic conventions' client metric: two records per settled
    call, one per ``gen_ai.token.type`` (``input`` = every prompt token the
    provider read, cached ones included; ``output`` = completion tokens,
    reasoning included), with the spec's advisory bucket boundaries.

Every metric carries ``gen_ai.operation.name`` (``chat``),
``gen_ai.provider.name`` (and ``gen_ai.system``, the name it replaced, with
the same value, for backends that still read that one;
``legacy_system_attribute=False`` drops it),
``gen_ai.request.model``, ``crew_budget.role`` and ``crew_budget.crew``.
Names, units and attributes follow the OpenTelemetry semantic conventions
for generative AI, "Semantic conventions for generative client AI metrics"
(https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-metrics/, metric
``gen_ai.client.token.usage``) and "GenAI attributes"
(https://opentelemetry.io/docs/specs/semconv/registry/attributes/gen-ai/);
provider names map litellm's (``vertex_ai``, ``bedrock``, ``xai`` ...) to the
spec's well-known values (``gcp.vertex_ai``, ``aws.bedrock``, ``x_ai`` ...).

Cardinality stays bounded: no reservation id or metadata value is ever a
metric attribute, and each of role, model and crew keeps its first
``max_values`` distinct values (a client header may name a role), later
ones reading ``_OTHER`` as the semantic conventions do for open enums.

Spans: with ``spans=True`` (default), when the call runs inside a recording
span (``opentelemetry.trace.get_current_span()``, e.g. the LLM span of an
OpenAI/LangChain instrumentation or your own), the span gets the decision,
cost, role and token usage as attributes (``crew_budget.*`` and
``gen_ai.usage.input_tokens``/``output_tokens``; the last call wins) plus
one span event per decision and settlement (so a span around a whole crew
keeps every call). Spans may carry the reservation id: they are not
aggregated.

The call path stays cheap: the listener only adds integers to
dictionaries (dollars as nano-USD) and queues token counts; the counters are
observable counters that the SDK reads when it collects, and the queued token
counts are recorded into the histogram then, on the exporter's thread. OTel
counters take floats, so dollars become a float once per data point, at
collection, never on a balance. Measured in ``bench/bench_otel.py``.

Turning it on: ``crew_budget.otel.instrument(guard)`` for one guard,
``crew_budget.otel.enable()`` for every guard built afterwards, or the
environment variable ``CREW_BUDGET_OTEL=1`` (read when each guard is built,
through ``crew_budget.wiring``). This module imports opentelemetry only when
one of those runs: ``import crew_budget`` stays free of it.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import weakref
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from crew_budget.errors import ConfigError, CrewBudgetError

if TYPE_CHECKING:
    from crew_budget.guard import Guard, GuardEvent

__all__ = [
    "ENV_VAR",
    "METER_NAME",
    "TOKEN_USAGE_BUCKETS",
    "disable",
    "enable",
    "instrument",
    "instrument_from_env",
    "provider_name",
]

log = logging.getLogger("crew_budget.otel")

ENV_VAR = "CREW_BUDGET_OTEL"
METER_NAME = "crew_budget"
OTHER = "_OTHER"

#: ``gen_ai.client.token.usage`` advisory explicit bucket boundaries, from the spec.
TOKEN_USAGE_BUCKETS: tuple[int, ...] = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)

# litellm provider names (what crew-budget's price map carries) that the
# semantic conventions spell differently; the rest pass through unchanged.
_PROVIDERS: dict[str, str] = {
    "azure": "azure.ai.openai",
    "azure_ai": "azure.ai.inference",
    "bedrock": "aws.bedrock",
    "bedrock_converse": "aws.bedrock",
    "cohere_chat": "cohere",
    "gemini": "gcp.gemini",
    "mistral": "mistral_ai",
    "text-completion-openai": "openai",
    "vertex_ai": "gcp.vertex_ai",
    "watsonx": "ibm.watsonx.ai",
    "xai": "x_ai",
}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})
_DEDUP_MAX = 10_000  # expired reservation ids remembered, to count each expiry once
_CACHE_MAX = 10_000  # attribute tuples kept (cleared when full: they are cheap to rebuild)
_TOKEN_QUEUE = 100_000  # token counts waiting for the next collection (oldest dropped beyond)


def provider_name(litellm_provider: str) -> str:
    """The semconv ``gen_ai.provider.name`` for a litellm provider name."""
    if litellm_provider.startswith("vertex_ai"):  # vertex_ai-language-models, ...
        return "gcp.vertex_ai"
    return _PROVIDERS.get(litellm_provider, litellm_provider)


def _api() -> tuple[Any, Any]:
    try:
        from opentelemetry import metrics, trace
    except ImportError:
        raise CrewBudgetError(
            "opentelemetry is not installed, so crew-budget cannot export metrics to it. Fix: "
            "pip install 'crew-budget[otel]' (or unset CREW_BUDGET_OTEL)"
        ) from None
    return metrics, trace


class _Bounded:
    """Keeps the first ``limit`` distinct values; later ones become ``_OTHER``."""

    __slots__ = ("_lock", "_seen", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER


Attrs = tuple[tuple[str, Any], ...]


class _Sink:
    """The instruments of one meter provider, fed by every guard instrumented on it.

    The listener runs on the LLM call's thread, and the SDK's synchronous
    ``add``/``record`` cost several microseconds each (attribute cleaning and
    hashing; measured in bench/bench_otel.py). So the call path only adds
    integers to dictionaries under a lock, and the SDK reads them when it
    collects: counters are *observable* (asynchronous) counters reporting
    these cumulative totals, and token counts wait in a bounded queue that
    the first callback of each collection records into the histogram, on
    the exporter's thread. Dollars are summed as integer nano-USD and become
    a float only in the observation.

    One per meter provider, because the SDK keeps the first registration of
    an observable instrument name and would silently drop a second guard's
    callbacks.
    """

    def __init__(self, meter_provider: Any, metrics: Any) -> None:
        from crew_budget import __version__

        meter = meter_provider.get_meter(METER_NAME, __version__)
        self._lock = threading.Lock()
        self.decisions: dict[Attrs, int] = {}
        self.settlements: dict[Attrs, int] = {}
        self.cost_nano: dict[Attrs, int] = {}
        self.overruns: dict[Attrs, int] = {}
        self.overrun_nano: dict[Attrs, int] = {}
        self.tokens: collections.deque[tuple[int, Attrs]] = collections.deque(
            maxlen=_TOKEN_QUEUE)
        self.role, self.model, self.crew = _Bounded(0), _Bounded(0), _Bounded(0)
        self._warned = False
        observation = metrics.Observation

        def counts(table: dict[Attrs, int], scale: int | None = None) -> Callable[[Any], Any]:
            def callback(_options: Any) -> list[Any]:
                if table is self.decisions:
                    self._drain_tokens()
                with self._lock:
                    items = list(table.items())
                if scale is None:
                    return [observation(v, dict(k)) for k, v in items]
                return [observation(float(Decimal(v).scaleb(-9)), dict(k)) for k, v in items]
            return callback

        self._histogram = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=list(TOKEN_USAGE_BUCKETS))
        meter.create_observable_counter(
            "crew_budget.decisions", [counts(self.decisions)], unit="{call}",
            description="Guarded LLM calls by preflight decision: allowed, blocked, unguarded.")
        meter.create_observable_counter(
            "crew_budget.settlements", [counts(self.settlements)], unit="{call}",
            description="Finished reservations by outcome: settled, released, expired, "
                        "pending, unguarded.")
        meter.create_observable_counter(
            "crew_budget.cost", [counts(self.cost_nano, 9)], unit="USD",
            description="Dollars charged to budgets (settled, expired, unguarded, pending).")
        meter.create_observable_counter(
            "crew_budget.overruns", [counts(self.overruns)], unit="{call}",
            description="Settled calls whose actual cost exceeded their reservation.")
        meter.create_observable_counter(
            "crew_budget.overrun.cost", [counts(self.overrun_nano, 9)], unit="USD",
            description="Dollars by which settled calls exceeded their reservation.")

    def bound(self, max_values: int) -> None:
        """The cardinality cap: the largest any guard on this provider asked for."""
        for b in (self.role, self.model, self.crew):
            b.limit = max(b.limit, max_values)

    def add(self, table: dict[Attrs, int], attrs: Attrs, amount: int) -> None:
        with self._lock:
            table[attrs] = table.get(attrs, 0) + amount

    def overflowed(self) -> None:
        """The token queue is full: nothing collects this meter provider's metrics."""
        if not self._warned:
            self._warned = True
            log.warning(
                "crew-budget otel: %d token counts are waiting and nothing collects them; "
                "the oldest are dropped. Fix: give the meter provider a metric reader "
                "(e.g. a PeriodicExportingMetricReader), or stop instrumenting (unset "
                "CREW_BUDGET_OTEL)", _TOKEN_QUEUE)

    def _drain_tokens(self) -> None:
        record = self._histogram.record
        queue = self.tokens
        while queue:
            try:
                value, attrs = queue.popleft()
            except IndexError:
                return
            record(value, dict(attrs))


class _Instrumentation:
    """The listener ``instrument`` installs on one guard."""

    def __init__(
        self,
        guard: Guard,
        sink: _Sink,
        trace: Any,
        *,
        spans: bool,
        legacy_system_attribute: bool,
    ) -> None:
        self._sink = sink
        self._get_span = trace.get_current_span if spans else None
        self._guard = guard
        self._legacy = legacy_system_attribute
        self._attrs: dict[tuple[Any, ...], Attrs] = {}
        self._expired: dict[str, None] = {}
        self._lock = threading.Lock()
        self._remove: Callable[[], None] | None = guard.add_listener(self)

    # -- attributes, built once per combination -----------------------------------

    def _base(self, role: str, model: str, crew: str | None) -> Attrs:
        key = ("\0base", role, model, crew or "")
        attrs = self._attrs.get(key)
        if attrs is None:
            try:
                provider = provider_name(self._guard.prices.get(model).provider)
            except CrewBudgetError:
                provider = OTHER
            built: list[tuple[str, Any]] = [
                ("gen_ai.operation.name", "chat"),
                ("gen_ai.provider.name", provider),
            ]
            if self._legacy:
                built.append(("gen_ai.system", provider))
            sink = self._sink
            built.append(("gen_ai.request.model", sink.model(model)))
            built.append(("crew_budget.role", sink.role(role)))
            if crew:
                built.append(("crew_budget.crew", sink.crew(crew)))
            attrs = self._remember(key, tuple(built))
        return attrs

    def _with(self, event: GuardEvent, *extra: tuple[str, str]) -> Attrs:
        key = (event.role, event.model, event.crew or "", extra)
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = self._remember(key, (*self._base(event.role, event.model, event.crew),
                                         *extra))
        return attrs

    def _remember(self, key: tuple[Any, ...], attrs: Attrs) -> Attrs:
        if len(self._attrs) >= _CACHE_MAX:
            self._attrs.clear()
        self._attrs[key] = attrs
        return attrs

    # -- the listener ------------------------------------------------------------------

    def __call__(self, event: GuardEvent) -> None:
        outcome = event.outcome
        if outcome in ("allowed", "blocked"):
            self._decide(event)
            return
        if outcome == "expired":
            # Always applied=False (the reaper applied it): count it the first
            # time this process learns of it, not at every repeated settle.
            if not self._first_expiry(event.ticket.reservation_id if event.ticket else ""):
                return
        elif not event.applied and outcome in ("settled", "released"):
            return  # a repeat that changed nothing (pending/unguarded are never "applied")
        sink = self._sink
        attrs = self._with(event, ("crew_budget.outcome", outcome))
        cost = event.cost
        cost_nano = int(cost.scaleb(9))  # exact: the guard's costs are whole nano-USD
        over = cost_nano - int(event.estimate.scaleb(9)) if outcome == "settled" else 0
        with sink._lock:
            sink.settlements[attrs] = sink.settlements.get(attrs, 0) + 1
            if cost_nano:
                sink.cost_nano[attrs] = sink.cost_nano.get(attrs, 0) + cost_nano
            if over > 0:
                sink.overruns[attrs] = sink.overruns.get(attrs, 0) + 1
                sink.overrun_nano[attrs] = sink.overrun_nano.get(attrs, 0) + over
        usage = event.usage
        if outcome == "settled" and usage is not None:
            if len(sink.tokens) >= _TOKEN_QUEUE - 1:
                sink.overflowed()
            sink.tokens.append((usage.prompt_tokens,
                                self._with(event, ("gen_ai.token.type", "input"))))
            sink.tokens.append((usage.output_tokens,
                                self._with(event, ("gen_ai.token.type", "output"))))
        if self._get_span is not None:
            span = self._get_span()
            if span.is_recording():
                values: dict[str, Any] = {
                    "crew_budget.outcome": outcome,
                    "crew_budget.cost_usd": float(cost),
                }
                if usage is not None:
                    values["gen_ai.usage.input_tokens"] = usage.prompt_tokens
                    values["gen_ai.usage.output_tokens"] = usage.output_tokens
                span.set_attributes(values)
                span.add_event("crew_budget.settlement", values)

    def _decide(self, event: GuardEvent) -> None:
        ticket, error = event.ticket, event.error
        if error is not None:
            attrs = self._with(event, ("crew_budget.decision", "blocked"),
                               ("crew_budget.scope", self._scope(error.scope)),
                               ("crew_budget.window", error.window))
        else:
            decision = "allowed" if ticket is None or ticket.guarded else "unguarded"
            attrs = self._with(event, ("crew_budget.decision", decision))
        self._sink.add(self._sink.decisions, attrs, 1)
        if self._get_span is not None:
            span = self._get_span()
            if span.is_recording():
                values = dict(attrs)
                values["crew_budget.estimate_usd"] = float(event.estimate)
                # Exact values too: a span is one call, not an aggregate.
                values["gen_ai.request.model"] = event.model
                values["crew_budget.role"] = event.role
                if ticket is not None and ticket.reservation_id:
                    values["crew_budget.reservation_id"] = ticket.reservation_id
                span.set_attributes(values)
                span.add_event("crew_budget.decision", values)

    def _scope(self, scope: str) -> str:
        """``role:NAME`` / ``crew:NAME`` with NAME bounded like the role and crew attributes."""
        kind, sep, name = scope.partition(":")
        if not sep:
            return scope
        bounded = self._sink.role if kind == "role" else self._sink.crew
        return f"{kind}:{bounded(name)}"

    def _first_expiry(self, rid: str) -> bool:
        with self._lock:
            if rid in self._expired:
                return False
            self._expired[rid] = None
            if len(self._expired) > _DEDUP_MAX:
                self._expired.pop(next(iter(self._expired)))
            return True

    def remove(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None


_sinks: weakref.WeakKeyDictionary[Any, _Sink] = weakref.WeakKeyDictionary()
# guard -> its instrumentation, weakly both ways: the guard's listener list
# keeps the instrumentation alive, and this table must not keep the guard.
_installed: weakref.WeakKeyDictionary[Any, weakref.ref[_Instrumentation]] = (
    weakref.WeakKeyDictionary())
_installed_lock = threading.Lock()


def instrument(
    guard: Guard,
    meter_provider: Any = None,
    *,
    spans: bool = True,
    legacy_system_attribute: bool = True,
    max_values: int = 200,
) -> Callable[[], None]:
    """Record ``guard``'s decisions, costs and token usage as OpenTelemetry metrics.

    ``meter_provider`` defaults to the global one (``opentelemetry.metrics``);
    pass the SDK ``MeterProvider`` your exporters hang off. One guard has one
    instrumentation: calling this again replaces the previous one (so the
    ``CREW_BUDGET_OTEL`` hook and an explicit call never count twice).
    Returns a function that uninstalls it. Raises ``CrewBudgetError`` naming
    the extra to install if opentelemetry is missing.
    """
    if max_values < 1:
        raise ConfigError(f"max_values must be at least 1, got {max_values}",
                          source="crew_budget.otel.instrument")
    metrics, trace = _api()
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    with _installed_lock:
        sink = _sinks.get(provider)
        if sink is None:
            sink = _sinks[provider] = _Sink(provider, metrics)
        sink.bound(max_values)
        old_ref = _installed.pop(guard, None)
        old = old_ref() if old_ref is not None else None
        if old is not None:
            old.remove()
        inst = _Instrumentation(guard, sink, trace, spans=spans,
                                legacy_system_attribute=legacy_system_attribute)
        _installed[guard] = weakref.ref(inst)

    def uninstall() -> None:
        with _installed_lock:
            ref = _installed.get(guard)
            if ref is not None and ref() is inst:
                del _installed[guard]
        inst.remove()

    return uninstall


def instrument_from_env(guard: Guard) -> None:
    """Guard hook (see ``crew_budget.wiring``): instrument if ``CREW_BUDGET_OTEL`` is on.

    A value that is neither on (1, true, yes, on) nor off (0, false, no, off,
    empty) fails the guard's construction rather than guess: a typo must not
    silently switch telemetry off.
    """
    raw = os.environ.get(ENV_VAR)
    if raw is None:
        return
    value = raw.strip().lower()
    if value in _FALSE:
        return
    if value not in _TRUE:
        raise ConfigError(f"{ENV_VAR}={raw!r} is not a switch; set it to 1 to export "
                          "OpenTelemetry metrics or 0 (or unset it) not to",
                          source=f"${ENV_VAR}")
    instrument(guard)


_enabled: list[Callable[[Any], None]] = []


def enable(meter_provider: Any = None, **options: Any) -> Callable[[], None]:
    """Instrument every ``Guard`` built from now on (a ``crew_budget.wiring`` hook).

    ``options`` are ``instrument``'s keywords. Guards built before this call
    are not touched: pass them to ``instrument``. Returns ``disable``.
    """
    from crew_budget.wiring import add_guard_hook

    _api()  # fail now, at the call that asked, if opentelemetry is missing
    disable()

    def hook(guard: Any) -> None:
        instrument(guard, meter_provider, **options)

    _enabled.append(hook)
    add_guard_hook(hook)
    return disable


def disable() -> None:
    """Undo ``enable`` for guards built from now on (instrumented ones keep reporting)."""
    from crew_budget.wiring import remove_guard_hook

    while _enabled:
        remove_guard_hook(_enabled.pop())
