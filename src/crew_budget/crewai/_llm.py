"""``BudgetLLM``: any CrewAI ``BaseLLM`` behind a per-role dollar budget.

Composition, not inheritance from a provider: CrewAI 1.x's ``LLM(...)``
factory returns native SDK classes (``OpenAICompletion``,
``AnthropicCompletion``, ...) or the litellm-backed ``LLM``, so the only
shape that wraps all of them is a ``BaseLLM`` that delegates to an inner one.

One call, in order (``call`` and ``acall`` alike; ``guarded`` below is the
same step for a plain LLM that ``BudgetCallback`` gates in place)::

    guard.preflight(role, model, messages, tools, the request's own cap
                    or guard.output_reservation(role, model))
      -> CrewBudgetExceeded (a HookAborted: CrewAI stops, no retry, no HTTP)
    inner.call(...) on the inner LLM itself (never a copy), the request
      unchanged; with no cap of its own the model's maximum output is
      reserved, and only a role's configured max_output_tokens is sent
    guard.settle(ticket, the usage the provider reported for this call)
      or guard.release(ticket) when the provider never billed it

Why no copy and no default cap: state a call writes (CrewAI's token
counters, a Responses API ``last_response_id``, a custom class's own
counters) must land on the user's object, and a request must go out as the
user built it: an injected cap changes the body (caches and servers keyed
on it see another request) and truncates models that need more (reasoning
models spend thousands of output tokens thinking). The price is a larger
reservation per call (gpt-4o-mini: 16,384 output tokens, about $0.0098)
until the call settles at its actual cost; a role that sets
``max_output_tokens`` gets smaller reservations and that cap sent.

Where the actual usage comes from: every CrewAI provider (native OpenAI,
Anthropic, Gemini, Azure, Bedrock, and the litellm ``LLM``) hands each
response's usage to ``self._track_token_usage_internal(usage)``,
synchronously, on the thread or task that made the request, streaming
included (the final usage chunk). We tap that method (once per class, on the
class that defines it) and route the dict to the ``_Capture`` that the
current ``BudgetLLM`` call put in a ``ContextVar`` for exactly that inner
instance. That is exact per call and safe under threads and asyncio (each
task has its own context), unlike the instance's cumulative
``get_token_usage_summary`` deltas (racy when calls overlap) or
``LLMCallCompletedEvent`` (handled later on a thread pool, and not emitted
with usage when the provider runs a tool itself). A call that reports no
usage (a stream cut before its last chunk, a provider that sends none) is
charged at its reservation and logged, never at $0.

The inner call runs inside ``crew_budget.nesting.covering(ticket)``: when the
inner LLM routes through litellm with ``crew_budget.litellm.BudgetLogger``
registered, the logger sees that this call is already reserved and neither
reserves nor books it again (one call, one charge).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crewai.hooks.dispatch import HookAborted
from crewai.llms.base_llm import (
    BaseLLM,
    call_stop_override,
    call_stream_override,
)
from crewai.types.usage_metrics import UsageMetrics
from pydantic import PrivateAttr

from crew_budget.errors import BudgetExceeded, ConfigError, UnknownRoleError
from crew_budget.failures import classify_failure
from crew_budget.guard import Guard, Ticket
from crew_budget.nesting import covering
from crew_budget.usage import Usage, parse_usage

if TYPE_CHECKING:
    from crew_budget.config import BudgetConfig
    from crew_budget.ledger import Ledger

__all__ = ["BudgetLLM", "CrewBudgetExceeded", "TaskEnded", "end_task_answer", "usage_from_crewai"]

log = logging.getLogger("crew_budget.crewai")


class CrewBudgetExceeded(BudgetExceeded, HookAborted):
    """A ``BudgetExceeded`` that CrewAI treats as a deliberate stop.

    CrewAI retries any other exception from an LLM ``max_retry_limit`` times
    and swallows hook exceptions; ``HookAborted`` is on the agent's
    pass-through list, so this one ends the task after one attempt and
    reaches ``crew.kickoff()`` intact, carrying ``role``, ``scope``,
    ``window``, ``limit``, ``spent``, ``reserved`` and ``estimate``.
    """

    def __init__(self, **fields: Any) -> None:
        # BudgetExceeded.__init__ ends in super().__init__(message), which the
        # MRO routes to HookAborted.__init__(reason): both sides initialised.
        super().__init__(**fields)
        self.source = "crew-budget"

    @classmethod
    def from_exceeded(cls, exc: BudgetExceeded) -> CrewBudgetExceeded:
        if isinstance(exc, cls):
            return exc
        return cls(**exc._fields(), message=str(exc))


class TaskEnded(Exception):
    """``on_exceed: end_task``: the call was not sent; return ``answer`` instead.

    Raised by ``guarded()`` before anything is sent and caught by the call
    sites (``BudgetLLM.call``/``acall``, the gate), which return the text as
    the LLM's answer, so CrewAI's own loop ends the task with it and the
    crew goes on with its other tasks. Never reaches the user.
    """

    def __init__(self, answer: str) -> None:
        super().__init__(answer)
        self.answer = answer


def end_task_answer(exc: BudgetExceeded, *, native_tools: bool) -> str:
    """The final answer an ``end_task`` role's agent gives when its budget is used up.

    CrewAI ends a ReAct loop on text containing ``Final Answer:`` (1.15's
    ``agents/parser.py``); with native tool calling any plain text is final,
    so the marker is left out there. The text says what happened, so the
    next task (and a person reading the output) knows this one is incomplete.
    """
    text = (f"Budget exhausted for role {exc.role!r}: this task ended early, without "
            f"a complete answer (on_exceed: end_task). {exc}")
    return text if native_tools else f"Final Answer: {text}"


# -- usage tap ---------------------------------------------------------------


@dataclass(slots=True)
class _Capture:
    """Usage dicts reported by one inner LLM instance during one call."""

    llm: Any
    usages: list[Any] = field(default_factory=list)
    depth: int = 0


_CAPTURE: ContextVar[_Capture | None] = ContextVar("crew_budget_crewai_capture", default=None)
_TAP_LOCK = threading.Lock()
_TAP_MARK = "_crew_budget_tap"


def _install_tap(cls: type[Any]) -> None:
    """Wrap ``_track_token_usage_internal`` where ``cls`` resolves it (once).

    The wrapper runs the original first, so CrewAI's own counters are
    unchanged; it records the dict only when a ``BudgetLLM`` call is in
    flight for this very instance in this context (otherwise it is a
    ``ContextVar`` read and nothing else).
    """
    owner = next(
        (c for c in cls.__mro__ if "_track_token_usage_internal" in c.__dict__), None
    )
    if owner is None:
        return
    with _TAP_LOCK:
        original = owner.__dict__["_track_token_usage_internal"]
        if getattr(original, _TAP_MARK, False):
            return

        @functools.wraps(original)
        def tapped(self: Any, usage_data: Any, *args: Any, **kwargs: Any) -> Any:
            capture = _CAPTURE.get()
            if capture is None or capture.llm is not self or capture.depth:
                return original(self, usage_data, *args, **kwargs)
            # depth: a subclass override calling super() is one report, not two.
            capture.depth += 1
            try:
                return original(self, usage_data, *args, **kwargs)
            finally:
                capture.depth -= 1
                capture.usages.append(usage_data)

        setattr(tapped, _TAP_MARK, True)
        type.__setattr__(owner, "_track_token_usage_internal", tapped)


def usage_from_crewai(data: Any) -> Usage | None:
    """Turn the usage dict a CrewAI provider tracked into disjoint ``Usage``.

    CrewAI normalises provider usage before tracking it: ``prompt_tokens``
    (or Anthropic's ``input_tokens``, which the native provider has already
    made inclusive of cache reads and writes), ``cached_prompt_tokens``,
    ``cache_creation_tokens``, ``completion_tokens``/``output_tokens`` and
    ``reasoning_tokens``. Bedrock tracks the raw Converse shape
    (``inputTokens``, exclusive of its cache counters). ``None`` means the
    response carried no usage.
    """
    if data is None:
        return None
    if not isinstance(data, Mapping):
        data = getattr(data, "model_dump", lambda: None)() or getattr(data, "__dict__", None)
        if not isinstance(data, Mapping):
            return None
    if "inputTokens" in data or "outputTokens" in data:
        # The Converse shape, read by the core parser: it also bills the
        # 1-hour cache writes ``cacheDetails`` reports at their own rate.
        return parse_usage(data)
    metrics = UsageMetrics.from_provider_dict(dict(data))
    if metrics is None or (metrics.prompt_tokens == 0 and metrics.completion_tokens == 0):
        return None
    cached = metrics.cached_prompt_tokens
    written = metrics.cache_creation_tokens
    output = metrics.completion_tokens
    thoughts = int(data.get("thoughts_token_count") or 0)  # Gemini bills thoughts as output
    if thoughts and metrics.reasoning_tokens == 0:
        output += thoughts
    return Usage(
        input_tokens=max(metrics.prompt_tokens - cached - written, 0),
        cached_input_tokens=cached,
        cache_write_tokens=written,
        output_tokens=output,
        reasoning_tokens=min(metrics.reasoning_tokens or thoughts, output),
    )


# -- output caps ---------------------------------------------------------------

_CAP_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def _user_cap(llm: BaseLLM) -> int | None:
    """The output-token cap the caller configured on ``llm``, if any.

    A default the provider class fills in by itself is not the caller's cap:
    CrewAI's Anthropic class sets ``max_tokens`` to the model's maximum
    (32k-128k) when none is given, which would make every reservation the
    price of a maximal answer. Treated as "no cap", so the role's cap is sent.
    """
    for name in _CAP_FIELDS:
        value = getattr(llm, name, None) if name in type(llm).model_fields else None
        overridden, original = _original_cap(llm, name)
        if overridden:  # another call of ours is sending a cap through this field
            value = original
        if value is None:
            value = llm.additional_params.get(name)
        if value is None:
            continue
        if name == "max_tokens" and _is_provider_default_cap(llm, value):
            continue
        return int(value)
    return None


def _is_provider_default_cap(llm: BaseLLM, value: Any) -> bool:
    if type(llm).__name__ != "AnthropicCompletion":
        return False
    from crewai.llms.providers.anthropic import completion as anthropic_completion

    default = getattr(anthropic_completion, "_default_max_tokens_for_model", None)
    return callable(default) and value == default(llm.model)


def _cap_field(llm: BaseLLM) -> str:
    """The field through which ``llm`` sends an output cap on the wire."""
    fields = type(llm).model_fields
    if (
        "max_completion_tokens" in fields
        and type(llm).__name__ in ("OpenAICompletion", "AzureCompletion")
        and not getattr(llm, "custom_openai", False)
        and not (llm.base_url or getattr(llm, "api_base", None))
    ):
        # OpenAI's current name; reasoning models reject the legacy max_tokens.
        return "max_completion_tokens"
    if "max_tokens" in fields:
        return "max_tokens"
    if "max_output_tokens" in fields:
        return "max_output_tokens"
    return "max_tokens"


# -- failures ------------------------------------------------------------------


def _maybe_billed(exc: BaseException) -> bool:
    """Could the provider have billed a call that failed without reporting usage?

    Only if it timed out or broke off after the request was sent. Every
    response that arrives reports its usage to the wrapper as it is read
    (``_track_token_usage_internal``), so a failure with no usage and no sign
    of a broken read never got an answer: its reservation is released.
    """
    return classify_failure(exc) == "maybe_billed"


# -- the wrapper ---------------------------------------------------------------

_MIRRORED = ("model", "provider", "stop", "stream", "temperature", "top_p", "seed",
             "is_litellm", "base_url", "prefer_upload")


class BudgetLLM(BaseLLM):
    """A CrewAI LLM whose every call is priced, reserved and settled first.

    ``BudgetLLM(role="researcher", daily_usd=5, model="gpt-4o-mini")`` builds
    the inner LLM with ``crewai.LLM(model=..., **kwargs)``;
    ``BudgetLLM(llm=LLM(...), role="researcher")`` wraps one you built (any
    ``BaseLLM``: native OpenAI/Anthropic/Gemini/Azure/Bedrock, litellm, or
    your own). Limits given here tighten the role's YAML limits (the stricter
    wins), never loosen them. ``role=None`` takes the role of the agent that
    calls (how ``BudgetCallback`` wraps a hierarchical crew's manager).

    Without ``guard``/``config``/``ledger`` the guard uses the embedded
    default ledger (or ``CREW_BUDGET_LEDGER``). Once a ``BudgetCallback`` is
    attached to the crew, the call goes through the callback's guard instead,
    with these inline limits merged in: one reservation per call, never two.

    Calls run on the inner LLM itself, so its token counters and any state
    it keeps are the user's. The request is sent as built; only a role's
    configured ``max_output_tokens`` is sent as the cap (set on the inner
    LLM's own cap field for the length of the call, then restored).
    """

    llm_type: str = "crew_budget"
    role: str | None = None
    provider_token_count: bool = False

    _inner: BaseLLM = PrivateAttr()
    _own_guard: Guard | None = PrivateAttr(default=None)
    _guard_args: tuple[Any, Any] | None = PrivateAttr(default=None)
    _bound_guard: Guard | None = PrivateAttr(default=None)
    _limits: dict[str, Any] = PrivateAttr(default_factory=dict)
    _crew_role: str | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(
        self,
        *,
        role: str | None = None,
        llm: BaseLLM | str | None = None,
        model: str | None = None,
        daily_usd: object = None,
        hourly_usd: object = None,
        monthly_usd: object = None,
        max_output_tokens: int | None = None,
        guard: Guard | None = None,
        config: BudgetConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        ledger: Ledger | str | None = None,
        provider_token_count: bool = False,
        **llm_kwargs: Any,
    ) -> None:
        if guard is not None and (config is not None or ledger is not None):
            raise ConfigError(
                "BudgetLLM takes either guard= or config=/ledger=, not both",
                source="BudgetLLM",
            )
        inner = _build_inner(llm, model, llm_kwargs)
        if isinstance(inner, BudgetLLM):
            raise ConfigError(
                "BudgetLLM(llm=...) was given another BudgetLLM; wrap the plain LLM once "
                "and put all of the role's limits on that one BudgetLLM",
                source="BudgetLLM",
            )
        limits = {
            k: v
            for k, v in (("daily_usd", daily_usd), ("hourly_usd", hourly_usd),
                         ("monthly_usd", monthly_usd), ("max_output_tokens", max_output_tokens))
            if v is not None
        }
        if limits and not role:
            raise ConfigError(
                f"BudgetLLM got {', '.join(sorted(limits))} but no role; limits belong to a "
                "role: pass role='researcher' (the name used in your budget YAML)",
                source="BudgetLLM",
            )
        if limits:  # the YAML's bounds, checked now rather than at the first call
            from crew_budget.config import check_code_limits

            check_code_limits(role, hourly=hourly_usd, daily=daily_usd, monthly=monthly_usd,
                              max_output_tokens=max_output_tokens)
        mirrored = {name: getattr(inner, name) for name in _MIRRORED}
        mirrored["stream"] = bool(mirrored.get("stream"))
        mirrored["stop"] = list(mirrored.get("stop") or [])
        fields: dict[str, Any] = {
            **mirrored, "role": role, "provider_token_count": provider_token_count,
        }
        super().__init__(**fields)
        self._inner = inner
        self._limits = limits
        if guard is not None:
            self._own_guard = guard
            self._apply_limits(guard)
        else:
            self._guard_args = (config, ledger)
        _install_tap(type(inner))

    # -- the guard -----------------------------------------------------------

    @property
    def guard(self) -> Guard:
        """The ``Guard`` this LLM's calls are checked against (``.status()``)."""
        bound = self._bound_guard
        if bound is not None:
            return bound
        own = self._own_guard
        if own is None:
            with self._lock:
                own = self._own_guard
                if own is None:
                    config, ledger = self._guard_args or (None, None)
                    own = Guard(config, ledger)
                    self._apply_limits(own)
                    self._own_guard = own
        return own

    @property
    def inner(self) -> BaseLLM:
        """The wrapped CrewAI LLM."""
        return self._inner

    @property
    def limits(self) -> Mapping[str, Any]:
        """The limits given inline (``daily_usd=...``), as passed."""
        return dict(self._limits)

    def _apply_limits(self, guard: Guard) -> None:
        if self._limits and self.role:
            guard.limit_role(self.role, **self._limits)

    def bind(self, guard: Guard, crew_role: str | None = None) -> None:
        """Route calls through ``guard`` (a ``BudgetCallback``'s), inline limits merged.

        ``crew_role`` names the role a role-less ``BudgetLLM`` is charged to when
        CrewAI calls it without an agent (a manager's converter, a planner).
        """
        self._apply_limits(guard)
        self._bound_guard = guard
        self._crew_role = crew_role

    def unbind(self) -> None:
        self._bound_guard = None
        self._crew_role = None

    # -- what CrewAI asks of an LLM ------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            return super().__getattr__(name)  # type: ignore[misc]
        private = object.__getattribute__(self, "__pydantic_private__")
        inner = private.get("_inner") if private else None
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def supports_function_calling(self) -> bool:
        fn = getattr(self._inner, "supports_function_calling", None)
        return bool(fn()) if callable(fn) else False

    def supports_stop_words(self) -> bool:
        return self._inner.supports_stop_words()

    def get_context_window_size(self) -> int:
        return self._inner.get_context_window_size()

    def supports_multimodal(self) -> bool:
        return self._inner.supports_multimodal()

    def _multimodal_formatter_name(self) -> str:
        return self._inner._multimodal_formatter_name()

    def format_text_content(self, text: str) -> dict[str, Any]:
        return self._inner.format_text_content(text)

    def get_file_uploader(self) -> Any:
        return self._inner.get_file_uploader()

    def get_token_usage_summary(self) -> UsageMetrics:
        # Every call runs on the inner LLM itself, so its counters are the total.
        return self._inner.get_token_usage_summary()

    def to_config_dict(self) -> dict[str, Any]:
        return self._inner.to_config_dict()

    def get_input_tokens_count(
        self, messages: Any, tools: Any = None, response_model: Any = None
    ) -> int:
        """Prompt size for CrewAI's context-window check, counted locally.

        OpenAI's native class answers this with an HTTP call to the
        ``input_tokens`` endpoint before every agent step; crew-budget's
        estimator answers it without one. ``provider_token_count=True``
        restores the provider's count.
        """
        if self.provider_token_count:
            return self._inner.get_input_tokens_count(messages, tools, response_model)
        guard = self.guard
        msgs = _as_messages(messages)
        return guard.estimator.count_prompt(
            self.model, guard.price(self.model), msgs, _as_tools(tools),
            extra=_extra(self._inner, response_model),
        )

    # -- calls -------------------------------------------------------------------

    def call(
        self,
        messages: Any,
        tools: list[dict[str, Any]] | None = None,
        callbacks: list[Any] | None = None,
        available_functions: dict[str, Any] | None = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> Any:
        try:
            with self._guarded(messages, tools, from_task, from_agent, response_model):
                return self._inner.call(
                    messages, tools=tools, callbacks=callbacks,
                    available_functions=available_functions, from_task=from_task,
                    from_agent=from_agent, response_model=response_model,
                )
        except TaskEnded as ended:
            return ended.answer

    async def acall(
        self,
        messages: Any,
        tools: list[dict[str, Any]] | None = None,
        callbacks: list[Any] | None = None,
        available_functions: dict[str, Any] | None = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> Any:
        try:
            with self._guarded(messages, tools, from_task, from_agent, response_model):
                return await self._inner.acall(
                    messages, tools=tools, callbacks=callbacks,
                    available_functions=available_functions, from_task=from_task,
                    from_agent=from_agent, response_model=response_model,
                )
        except TaskEnded as ended:
            return ended.answer

    def _guarded(
        self, messages: Any, tools: Any, from_task: Any, from_agent: Any, response_model: Any
    ) -> contextlib.AbstractContextManager[None]:
        """Reserve, run the inner call in place, settle (see ``guarded``)."""
        return guarded(
            self._inner, self.guard, self._role_for(from_agent), messages, tools, from_task,
            response_model, stop=list(self.stop_sequences), stream=self._effective_stream(),
        )

    def _role_for(self, from_agent: Any) -> str:
        role = self.role or getattr(from_agent, "role", None) or self._crew_role
        if not role:
            raise ConfigError(
                "this BudgetLLM has no role and was called without an agent; pass "
                "BudgetLLM(role='researcher', ...), use it as an Agent's llm, or attach a "
                "BudgetCallback (its crew_role takes calls made for the whole crew)",
                source="BudgetLLM",
            )
        return str(role)


# -- one guarded call, on the caller's own LLM -------------------------------------

_COVERED: ContextVar[frozenset[int]] = ContextVar("crew_budget_crewai_covered",
                                                  default=frozenset())


def is_covered(llm: Any) -> bool:
    """Is a call of ``llm`` already reserved in this context (a nested/super() call)?"""
    return id(llm) in _COVERED.get()


@contextlib.contextmanager
def guarded(
    llm: BaseLLM,
    guard: Guard,
    role: str,
    messages: Any,
    tools: Any,
    from_task: Any,
    response_model: Any,
    *,
    stop: list[str] | None = None,
    stream: bool | None = None,
) -> Iterator[None]:
    """Reserve one call of ``llm`` (the user's own object), run it, settle it.

    Nothing about the call changes: the request goes out through ``llm``
    itself, so everything it records (CrewAI's token counters, a Responses
    API ``last_response_id``, a custom class's own counters) lands on the
    user's object. With no output cap on the request, the guard reserves the
    model's maximum output and nothing is injected; only a role that sets
    ``max_output_tokens`` gets that cap sent (``_sent_cap``). The usage the
    provider reports for this very call (the ``_track_token_usage_internal``
    tap) settles the reservation; a failure releases it, or charges it when
    the provider may have billed. ``stop``/``stream`` forward the call-scoped
    overrides CrewAI set on a ``BudgetLLM`` to the LLM it wraps.

    On-exceed policies (issue 12): a ticket downgraded to a cheaper model
    sends this one call there (``_sent_model``: the LLM's own ``model``
    field, set for the call and restored, like the cap); a role with
    ``on_exceed: end_task`` that does not fit raises ``TaskEnded``, whose
    answer the call sites return in place of the LLM's.
    """
    metadata: dict[str, Any] = {"framework": "crewai"}
    task_name = getattr(from_task, "name", None)
    if task_name:
        metadata["task"] = str(task_name)
    model = str(llm.model)
    cap = _user_cap(llm)
    try:
        if cap is None:  # reserve the model's maximum; a role's own cap is still sent
            cap = guard.output_reservation(role, model)
        ticket = guard.preflight(
            role, model, _as_messages(messages), _as_tools(tools), cap, metadata,
            extra=_extra(llm, response_model), provider=_provider(llm),
        )
    except BudgetExceeded as exc:
        if guard.config.policy_for(exc.role) == "end_task":
            log.warning("crew-budget: role %r is out of budget; its task ends with a "
                        "'budget exhausted' answer and the crew goes on (on_exceed: "
                        "end_task): %s", exc.role, exc)
            raise TaskEnded(end_task_answer(exc, native_tools=bool(tools))) from None
        raise CrewBudgetExceeded.from_exceeded(exc) from None
    except UnknownRoleError as exc:  # a native stop too: not retried, nothing sent
        from crew_budget.crewai._roles import CrewUnknownRole

        raise CrewUnknownRole.from_error(exc) from None
    _install_tap(type(llm))
    capture = _Capture(llm)
    token = _CAPTURE.set(capture)
    covered = _COVERED.set(_COVERED.get() | {id(llm)})
    try:
        with contextlib.ExitStack() as stack:
            if ticket.downgraded_from is not None and ticket.model != model:
                stack.enter_context(_sent_model(llm, _model_to_send(model, ticket.model)))
            if ticket.max_tokens is not None:
                stack.enter_context(_sent_cap(llm, int(ticket.max_tokens)))
            if stop or (stop is not None and llm.stop):
                stack.enter_context(call_stop_override(llm, list(stop)))
            if stream is not None:
                stack.enter_context(call_stream_override(llm, bool(stream)))
            stack.enter_context(covering(ticket))
            yield
    except BaseException as exc:
        _COVERED.reset(covered)
        _CAPTURE.reset(token)
        _finish_failed(guard, ticket, capture, exc)
        raise
    _COVERED.reset(covered)
    _CAPTURE.reset(token)
    _finish(guard, ticket, capture)


# A configured cap is sent by setting the LLM's own cap field for the length
# of the call, then restoring it: no copy of the user's LLM. Calls in flight
# on one instance at once send the smallest of their caps (never more than
# any of them reserved).
_CAP_LOCK = threading.Lock()
_CAP_STATE: dict[int, tuple[str, Any, list[int]]] = {}


def _original_cap(llm: Any, name: str) -> tuple[bool, Any]:
    with _CAP_LOCK:
        state = _CAP_STATE.get(id(llm))
    if state is not None and state[0] == name:
        return True, state[1]
    return False, None


@contextlib.contextmanager
def _sent_cap(llm: BaseLLM, cap: int) -> Iterator[None]:
    name = _cap_field(llm)
    if name not in type(llm).model_fields:
        log.warning("crew-budget: %s has no output-cap field; the configured cap %d is "
                    "reserved but cannot be sent", type(llm).__name__, cap)
        yield
        return
    key = id(llm)
    with _CAP_LOCK:
        state = _CAP_STATE.get(key)
        if state is None:
            state = _CAP_STATE[key] = (name, getattr(llm, name), [])
        state[2].append(cap)
        setattr(llm, name, min(state[2]))
    try:
        yield
    finally:
        with _CAP_LOCK:
            state[2].remove(cap)
            if state[2]:
                setattr(llm, name, min(state[2]))
            else:
                setattr(llm, name, state[1])
                del _CAP_STATE[key]


def _model_to_send(asked: str, chosen: str) -> str:
    """The name to put on the LLM for a downgraded call: a native provider
    class holds the bare name (``gpt-4o``), so ``openai/gpt-4o-mini`` from the
    YAML goes out as ``gpt-4o-mini``; a litellm-style ``LLM`` keeps the prefix."""
    if "/" in chosen and "/" not in asked:
        return chosen.split("/", 1)[1]
    return chosen


# A downgraded call goes to its cheaper model by setting the LLM's own
# ``model`` for the length of the call, then restoring it: no copy of the
# user's LLM. Calls in flight on one instance at once share the field: the
# latest downgrade wins until it ends, and a call that was not downgraded
# may go to the cheaper model meanwhile (cheaper than it reserved for, so
# the budget holds); the original comes back when the last one ends.
_MODEL_STATE: dict[int, tuple[Any, list[str]]] = {}


@contextlib.contextmanager
def _sent_model(llm: BaseLLM, model: str) -> Iterator[None]:
    key = id(llm)
    with _CAP_LOCK:
        state = _MODEL_STATE.get(key)
        if state is None:
            state = _MODEL_STATE[key] = (llm.model, [])
        state[1].append(model)
        llm.model = model
    try:
        yield
    finally:
        with _CAP_LOCK:
            state[1].remove(model)
            if state[1]:
                llm.model = state[1][-1]
            else:
                llm.model = state[0]
                del _MODEL_STATE[key]


def _build_inner(llm: BaseLLM | str | None, model: str | None, kwargs: dict[str, Any]) -> BaseLLM:
    if llm is not None and model is not None:
        raise ConfigError(
            "BudgetLLM takes llm=LLM(...) or model='...', not both; put the model on the LLM",
            source="BudgetLLM",
        )
    if isinstance(llm, BaseLLM):
        if kwargs:
            raise ConfigError(
                f"BudgetLLM(llm=...) got LLM settings {sorted(kwargs)}; set them on the LLM "
                "you wrap instead",
                source="BudgetLLM",
            )
        return llm
    name = llm if isinstance(llm, str) else model
    if not name:
        raise ConfigError(
            "BudgetLLM needs model='gpt-4o-mini' (or llm=LLM(...)) to know what to call",
            source="BudgetLLM",
        )
    from crewai import LLM

    built = LLM(model=name, **kwargs)
    if not isinstance(built, BaseLLM):  # pragma: no cover - CrewAI contract
        raise TypeError(f"crewai.LLM returned {type(built).__name__}, not a BaseLLM")
    return built


def _as_messages(messages: Any) -> list[Any]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return list(messages or [])


def _as_tools(tools: Any) -> list[Mapping[str, Any]] | None:
    if not tools:
        return None
    out: list[Mapping[str, Any]] = []
    for tool in tools:
        if isinstance(tool, Mapping):
            out.append(tool)
        else:
            out.append({"tool": str(tool)})
    return out


def _extra(inner: BaseLLM, response_model: Any) -> dict[str, Any] | None:
    """Request parameters the price depends on: a structured-output schema
    (prompt tokens), ``n`` completions (each may use the whole output cap) and
    the service tier (priority/flex rates)."""
    extra: dict[str, Any] = {}
    n = getattr(inner, "n", None)
    if type(n) is int and n > 1:
        extra["n"] = n
    tier = getattr(inner, "service_tier", None)
    if isinstance(tier, str):
        extra["service_tier"] = tier
    schema_source = response_model or getattr(inner, "response_format", None)
    if schema_source is not None:
        schema_fn: Callable[[], Any] | None = getattr(schema_source, "model_json_schema", None)
        if callable(schema_fn):
            extra["response_format"] = schema_fn()
        elif isinstance(schema_source, Mapping):
            extra["response_format"] = dict(schema_source)
    return extra or None


def _provider(inner: BaseLLM) -> str | None:
    """Where the call goes, for the price list (an OpenAI-compatible host's
    base URL beats the provider name: OpenRouter and Groq bill their own)."""
    for attr in ("base_url", "api_base", "provider"):
        value = getattr(inner, attr, None)
        if isinstance(value, str) and value:
            return value
    return None


def _total(usages: Sequence[Any]) -> Usage | None:
    total: Usage | None = None
    for raw in usages:
        usage = usage_from_crewai(raw)
        if usage is not None:
            total = usage if total is None else total + usage
    return total


def _finish(guard: Guard, ticket: Ticket, capture: _Capture) -> None:
    # No usage reported (settle(None)): the guard logs it and charges the
    # reservation, never $0.
    guard.settle(ticket, _total(capture.usages))


def _finish_failed(guard: Guard, ticket: Ticket, capture: _Capture, exc: BaseException) -> None:
    try:
        usage = _total(capture.usages)
        if usage is not None:
            guard.settle(ticket, usage)
        elif _maybe_billed(exc):
            log.warning(
                "crew-budget: %s call for role %r broke off (%s) without reporting usage; "
                "charging its reservation ($%s), as the provider may have billed it",
                ticket.model, ticket.role, type(exc).__name__, ticket.estimate,
            )
            guard.settle(ticket, None)  # None: charged at the reservation
        else:
            guard.release(ticket)
    except Exception:  # never mask the provider's error with ours
        log.exception("crew-budget: could not close reservation %s", ticket.reservation_id)
