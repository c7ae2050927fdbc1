"""``BudgetCallbackHandler``: budgets on any LangChain chat model or LLM.

One call, as LangChain drives a handler (sync and async alike)::

    on_chat_model_start / on_llm_start  -> guard.preflight(...)
        raises crew_budget.BudgetExceeded: LangChain re-raises it (we set
        ``raise_error``) before the model sends its HTTP request
    on_llm_end   -> guard.settle(ticket, usage_metadata or llm_output["token_usage"])
    on_llm_error -> settle what it reported, release if the provider never got
                    the request (connection refused, HTTP error status), else
                    charge the reservation

Why a plain (sync) ``BaseCallbackHandler`` serves both paths: LangChain runs
a sync handler's events on its executor during ``ainvoke``/``astream`` and
re-raises its errors there, while an ``AsyncCallbackHandler`` driven by a
sync ``invoke`` has its errors logged and dropped (``_run_coros``), which
would let a blocked call through. So the same class blocks in both.

What a handler cannot do: change the request. When the model has no
``max_tokens``, the reservation uses the role's ``max_output_tokens`` cap (or
``default_max_output_tokens``) but the provider is not told, so a long answer
can cost more than was reserved. Set ``max_tokens`` on the model (or use
``BudgetMiddleware``, which injects it) for a hard output bound.

Tickets live in a dict keyed by ``run_id`` under a lock: many concurrent runs
may share one handler, a run delivered twice (the handler registered on the
model and in the run config, or a copy of it) is reserved once, and an LLM
run nested inside another LLM run we already reserved (a wrapper model
delegating to an inner one) is covered by the outer reservation. Copies of
the handler (``copy.copy``/``deepcopy`` of a model or config) are the handler
itself, so they share that table.

Nested adapters (``crew_budget.nesting``): after reserving, the start event
marks its context as covered by the ticket and the end/error event ends the
mark, so a model built on litellm with ``crew_budget.litellm.BudgetLogger``
registered is charged once, by this handler. That only reaches the model's
HTTP call where LangChain runs a sync handler inline in the caller's context:
``invoke``/``stream``/``batch`` (checked against langchain-core 1.8). Under
``ainvoke``/``astream`` LangChain runs this handler's events on its executor
in a *copy* of the context, so the mark never reaches the model and the
logger would charge the call a second time: use ``BudgetMiddleware`` (which
covers the async path) or not both adapters on one async call. During a sync
``stream()`` the mark stays set in the caller's context between chunks, so a
litellm call the caller makes inside that loop is counted as covered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult

from crew_budget.errors import ConfigError
from crew_budget.estimate import COMPLETION_KEYS
from crew_budget.guard import Guard, Ticket
from crew_budget.langchain._common import (
    ROLE_KEY,
    ConfigSource,
    attribution,
    close_failed,
    covered_by_middleware,
    provider_hint,
    resolve_guard,
    settle_or_charge,
    to_openai_messages,
    usage_from_messages,
    usage_or_none,
)
from crew_budget.ledger import Ledger
from crew_budget.nesting import Cover, begin_covering, end_covering
from crew_budget.usage import Usage

__all__ = ["BudgetCallbackHandler"]

log = logging.getLogger("crew_budget.langchain")

_CAP_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "max_tokens_to_sample")
_EXTRA_KEYS = ("tool_choice", "functions", "function_call", "response_format", "service_tier")


@dataclass(slots=True)
class _Run:
    """One LLM run we saw start. ``ticket`` is None while reserving or when covered."""

    ticket: Ticket | None
    parent: UUID | None
    covered: bool = False
    started: float = field(default_factory=time.monotonic)
    child_usage: Usage | None = None
    cover: Cover | None = None


class BudgetCallbackHandler(BaseCallbackHandler):
    """Reserve before each model call, settle from its usage, block when over budget.

    ``BudgetCallbackHandler(role="researcher", config="budgets.yaml")`` or
    ``BudgetCallbackHandler(role="researcher", guard=guard)`` (share one guard
    between handlers). A run's metadata key ``crew_budget_role`` overrides the
    role for that run, so one handler can serve several agents.
    """

    raise_error: bool = True
    """LangChain logs and drops handler errors unless this is set."""

    run_inline: bool = False

    def __init__(
        self,
        role: str | None = None,
        *,
        config: ConfigSource | None = None,
        guard: Guard | None = None,
        ledger: Ledger | str | None = None,
        crew: str | None = None,
    ) -> None:
        super().__init__()
        self.role = role
        self.crew = crew
        self.guard = resolve_guard(guard, config, ledger)
        self._lock = threading.Lock()
        self._runs: dict[UUID, _Run] = {}
        self._warned_uncapped: set[str] = set()

    # A copy must share the ticket table, or a copied handler would reserve a
    # run its original already reserved (and the original would never settle it).
    def __copy__(self) -> BudgetCallbackHandler:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> BudgetCallbackHandler:
        return self

    def __repr__(self) -> str:
        return f"BudgetCallbackHandler(role={self.role!r}, ledger={self.guard.ledger.url!r})"

    @property
    def in_flight(self) -> int:
        """Runs started and not yet ended (reserved, covered or being reserved)."""
        with self._lock:
            return len(self._runs)

    # -- start: reserve or block ---------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(run_id, parent_run_id, metadata, {**kwargs, "tags": tags}, serialized,
                    lambda: to_openai_messages(messages[0] if messages else []))

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        text = prompts[0] if prompts else ""
        self._start(run_id, parent_run_id, metadata, {**kwargs, "tags": tags}, serialized,
                    lambda: [{"role": "user", "content": text}])

    def _start(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        metadata: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
        serialized: Mapping[str, Any] | None,
        messages: Any,
    ) -> None:
        with self._lock:
            if run_id in self._runs:  # the same run delivered twice
                return
            parent = self._runs.get(parent_run_id) if parent_run_id is not None else None
            if covered_by_middleware.get() or parent is not None:
                self._runs[run_id] = _Run(None, parent_run_id, covered=True)
                return
            self._runs[run_id] = _Run(None, parent_run_id)  # placeholder: reserve once
            self._prune_locked()
        try:
            ticket = self._reserve(run_id, metadata or {}, kwargs, serialized or {}, messages())
        except BaseException:
            with self._lock:
                self._runs.pop(run_id, None)
            raise
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:
                run.ticket = ticket
                # Visible to the model's own call only where LangChain runs us
                # inline (sync invoke/stream); see the module docstring.
                run.cover = begin_covering(ticket)
                return
        # The run ended while we were reserving (cannot happen in LangChain's
        # order of events, but never leave a reservation behind).
        self.guard.release(ticket)

    def _reserve(
        self,
        run_id: UUID,
        metadata: Mapping[str, Any],
        kwargs: Mapping[str, Any],
        serialized: Mapping[str, Any],
        messages: list[dict[str, Any]],
    ) -> Ticket:
        params: Mapping[str, Any] = kwargs.get("invocation_params") or {}
        role = metadata.get(ROLE_KEY) or self.role
        if not role:
            raise ConfigError(
                "this LangChain call names no role: pass BudgetCallbackHandler(role=...) or "
                f"config={{'metadata': {{'{ROLE_KEY}': 'researcher'}}}} when invoking",
                source="crew_budget.langchain",
            )
        model = _model_name(params, metadata, serialized)
        cap = _cap(params, metadata)
        tools = params.get("tools") or None
        extra = {k: params[k] for k in _EXTRA_KEYS if isinstance(params.get(k), (dict, list, str))}
        # n / best_of completions are each billed up to the cap: the guard
        # reserves that many (crew_budget.estimate.COMPLETION_KEYS).
        extra.update((k, params[k]) for k in COMPLETION_KEYS if isinstance(params.get(k), int))
        info: dict[str, Any] = {"framework": "langchain", "run_id": str(run_id),
                                **attribution(kwargs.get("name"), kwargs.get("tags"), metadata)}
        ids = serialized.get("id")
        provider = provider_hint(
            metadata.get("ls_provider"), serialized.get("kwargs"),
            ids[-1] if isinstance(ids, list) and ids else params.get("_type"),
        )
        ticket = self.guard.preflight(
            str(role), model, messages, tools if isinstance(tools, list) else None, cap, info,
            crew=self.crew, extra=extra or None, provider=provider,
        )
        if ticket.max_tokens is not None and model not in self._warned_uncapped:
            self._warned_uncapped.add(model)
            log.warning(
                "crew-budget: %s has no max_tokens, and a LangChain callback cannot add one; "
                "the reservation assumes %d output tokens (the role's cap) but the provider "
                "is not limited to it. Fix: set max_tokens on the model, or use "
                "crew_budget.langchain.BudgetMiddleware, which injects it.",
                model, ticket.max_tokens,
            )
        return ticket

    def _prune_locked(self) -> None:
        # A run whose end we never saw (its process of events was cut) must not
        # pin memory forever; the ledger charges its reservation at lease expiry.
        if len(self._runs) < 4096:
            return
        horizon = time.monotonic() - float(self.guard.config.lease_seconds)
        for key in [k for k, r in self._runs.items() if r.started < horizon]:
            cover = self._runs.pop(key).cover
            if cover is not None:  # never leave a stale mark that makes calls free
                end_covering(cover)

    # -- end: settle ------------------------------------------------------------

    def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        usage = _usage_from_result(response)
        run = self._finish(run_id, usage)
        if run is None or run.ticket is None:
            return
        if usage is None:
            usage = run.child_usage
        settle_or_charge(self.guard, run.ticket, usage, "no usage_metadata or token_usage")

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        partial = kwargs.get("response")
        usage = _usage_from_result(partial) if isinstance(partial, LLMResult) else None
        run = self._finish(run_id, usage)
        if run is None or run.ticket is None:
            return
        close_failed(self.guard, run.ticket, error, usage or run.child_usage)

    def _finish(self, run_id: UUID, usage: Usage | None) -> _Run | None:
        with self._lock:
            run = self._runs.pop(run_id, None)
            if run is not None and run.cover is not None:
                end_covering(run.cover)
            if run is not None and run.covered and usage is not None:
                parent = self._runs.get(run.parent) if run.parent is not None else None
                if parent is not None:
                    parent.child_usage = usage if parent.child_usage is None \
                        else parent.child_usage + usage
            return run


def _usage_from_result(result: LLMResult | None) -> Usage | None:
    if result is None:
        return None
    messages = [getattr(g, "message", None) for gens in result.generations for g in gens]
    usage = usage_from_messages([m for m in messages if m is not None])
    if usage is not None:
        return usage
    output = result.llm_output or {}
    for key in ("token_usage", "usage"):
        usage = usage_or_none(output.get(key))
        if usage is not None:
            return usage
    return None


def _model_name(
    params: Mapping[str, Any], metadata: Mapping[str, Any], serialized: Mapping[str, Any]
) -> str:
    for value in (
        params.get("model"),
        params.get("model_name"),
        params.get("model_id"),
        metadata.get("ls_model_name"),
        (serialized.get("kwargs") or {}).get("model_name"),
        (serialized.get("kwargs") or {}).get("model"),
    ):
        if isinstance(value, str) and value:
            return value
    raise ConfigError(
        "cannot tell which model this LangChain call uses (no 'model' in its invocation "
        "params or 'ls_model_name' in its metadata), so it cannot be priced; it was not "
        "sent. Fix: use a chat model that reports its model name, or budget the call "
        "with crew_budget.Guard directly.",
        source="crew_budget.langchain",
    )


def _cap(params: Mapping[str, Any], metadata: Mapping[str, Any]) -> int | None:
    for key in _CAP_KEYS:
        value = params.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    value = metadata.get("ls_max_tokens")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None
