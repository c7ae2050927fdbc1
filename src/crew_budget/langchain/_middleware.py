"""``BudgetMiddleware``: budgets on LangChain v1 agents (``create_agent``).

It wraps the agent's model call (``wrap_model_call`` / ``awrap_model_call``),
where the whole request is in hand: the model, system message, history,
tools and model settings. So, unlike a callback handler, it can *change* the
request: when no output cap is set it injects the reserved ``max_tokens``
into the model settings, which makes the reservation a true upper bound.

When a call does not fit, the agent leaves by one of its own exits, chosen
with ``exit_behavior`` (as in LangChain's ``ModelCallLimitMiddleware``):

``"end"`` (default)
    The model is not called; the agent ends with an ``AIMessage`` that says
    which budget is exhausted (no tool calls, so the agent loop stops).
    ``response_metadata["crew_budget"]`` carries the facts.
``"error"``
    ``crew_budget.BudgetExceeded`` propagates out of ``agent.invoke``.

A role with ``on_exceed: {downgrade: [...]}`` whose call fits only at a
cheaper model has that request sent there (``request.override(model=...)``
with a copy of the agent's model under the other name); ``end_task`` always
takes the ``"end"`` exit above, even with ``exit_behavior="error"``;
``shadow`` never blocks.

A ``BudgetCallbackHandler`` on the same model sees that the middleware
already reserved the call and does not reserve it again; nor does
``crew_budget.litellm.BudgetLogger`` when the model calls litellm (the model
call runs inside ``crew_budget.nesting.covering(ticket)``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import AIMessage, BaseMessage

from crew_budget.errors import BudgetExceeded, ConfigError
from crew_budget.estimate import COMPLETION_KEYS
from crew_budget.guard import Guard, Ticket
from crew_budget.langchain._common import (
    BASE_URL_FIELDS,
    ROLE_KEY,
    ConfigSource,
    attribution,
    close_failed,
    covered_by_middleware,
    provider_hint,
    resolve_guard,
    settle_or_charge,
    to_openai_messages,
    to_openai_tools,
    usage_from_messages,
)
from crew_budget.ledger import Ledger
from crew_budget.nesting import covering

__all__ = ["BudgetMiddleware"]

log = logging.getLogger("crew_budget.langchain")

ExitBehavior = Literal["end", "error"]
_CAP_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


class BudgetMiddleware(AgentMiddleware):
    """Reserve before every model call of an agent, settle after, stop when over budget.

    ``create_agent(model, tools, middleware=[BudgetMiddleware(role="researcher",
    config="budgets.yaml")])``. The runtime context may name the role per run
    (``context={"crew_budget_role": "writer"}`` when the agent's context is a
    dict); otherwise ``role`` is used.
    """

    def __init__(
        self,
        role: str | None = None,
        *,
        config: ConfigSource | None = None,
        guard: Guard | None = None,
        ledger: Ledger | str | None = None,
        crew: str | None = None,
        exit_behavior: ExitBehavior = "end",
    ) -> None:
        super().__init__()
        if exit_behavior not in ("end", "error"):
            raise ConfigError(
                f"exit_behavior must be 'end' or 'error', not {exit_behavior!r}",
                source="crew_budget.langchain.BudgetMiddleware",
            )
        self.role = role
        self.crew = crew
        self.exit_behavior: ExitBehavior = exit_behavior
        self.guard = resolve_guard(guard, config, ledger)

    @property
    def name(self) -> str:
        return "CrewBudgetMiddleware"

    # -- the hook ---------------------------------------------------------------

    def wrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], ModelResponse],
    ) -> ModelResponse | AIMessage:
        try:
            ticket, request = self._reserve(request)
        except BudgetExceeded as exc:
            return self._blocked(exc)
        token = covered_by_middleware.set(True)
        try:
            with covering(ticket):
                response = handler(request)
        except BaseException as exc:
            close_failed(self.guard, ticket, exc, None)
            raise
        finally:
            covered_by_middleware.reset(token)
        self._settle(ticket, response)
        return response

    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> ModelResponse | AIMessage:
        try:
            ticket, request = self._reserve(request)
        except BudgetExceeded as exc:
            return self._blocked(exc)
        token = covered_by_middleware.set(True)
        try:
            with covering(ticket):
                response = await handler(request)
        except BaseException as exc:
            close_failed(self.guard, ticket, exc, None)
            raise
        finally:
            covered_by_middleware.reset(token)
        self._settle(ticket, response)
        return response

    # -- steps ------------------------------------------------------------------

    def _reserve(self, request: ModelRequest) -> tuple[Ticket, ModelRequest]:
        model = request.model
        settings: dict[str, Any] = dict(request.model_settings or {})
        ls = _ls_params(model, settings)
        model_name = _model_name(model, ls)
        cap = _cap(model, settings, ls)
        history: list[BaseMessage] = list(request.messages)
        if request.system_message is not None:
            history.insert(0, request.system_message)
        extra: dict[str, Any] = {}
        if isinstance(request.tool_choice, (str, dict)):
            extra["tool_choice"] = request.tool_choice
        for key in COMPLETION_KEYS:  # n / best_of: each completion is billed up to the cap
            value = settings.get(key, getattr(model, key, None))
            if isinstance(value, int):
                extra[key] = value
        tier = settings.get("service_tier", getattr(model, "service_tier", None))
        if isinstance(tier, str):
            extra["service_tier"] = tier
        fields = {k: getattr(model, k, None) for k in BASE_URL_FIELDS}
        provider = provider_hint(ls.get("ls_provider"), fields, type(model).__name__)
        ticket = self.guard.preflight(
            self._role(request),
            model_name,
            to_openai_messages(history),
            to_openai_tools(request.tools),
            cap,
            {"framework": "langchain-agent", **_attribution()},
            crew=self.crew,
            extra=extra or None,
            provider=provider,
        )
        if ticket.downgraded_from is not None:
            try:
                request = request.override(model=_with_model_name(model, model_name,
                                                                  ticket.model))
            except BaseException:
                self.guard.release(ticket)  # nothing was sent
                raise
        if ticket.max_tokens is not None:
            # No cap anywhere: send the reserved one, so the bill cannot exceed it.
            settings["max_tokens"] = ticket.max_tokens
            request = request.override(model_settings=settings)
        return ticket, request

    def _role(self, request: ModelRequest) -> str:
        context = getattr(request.runtime, "context", None)
        role: Any = None
        if isinstance(context, Mapping):
            role = context.get(ROLE_KEY)
        elif context is not None:
            role = getattr(context, ROLE_KEY, None)
        role = role or self.role
        if not role:
            raise ConfigError(
                "this agent's model call names no role: pass BudgetMiddleware(role=...) or "
                f"a runtime context with {ROLE_KEY!r}",
                source="crew_budget.langchain.BudgetMiddleware",
            )
        return str(role)

    def _settle(self, ticket: Ticket, response: Any) -> None:
        # An inner middleware may hand back an ExtendedModelResponse (a model
        # response plus a Command): its usage is on the wrapped response.
        response = getattr(response, "model_response", response)
        messages = getattr(response, "result", None)
        if messages is None and isinstance(response, BaseMessage):
            messages = [response]
        usage = usage_from_messages(messages or [])
        settle_or_charge(self.guard, ticket, usage, "the agent's model response has no "
                         "usage_metadata")

    def _blocked(self, exc: BudgetExceeded) -> AIMessage:
        # The role's on_exceed: end_task asks for the agent's own end exit,
        # whatever exit_behavior says for plain stops.
        if self.exit_behavior == "error" and self.guard.config.policy_for(exc.role) != "end_task":
            raise exc
        log.warning("crew-budget: agent stopped: %s", exc)
        return AIMessage(
            content=f"Stopped by crew-budget: {exc}",
            response_metadata={
                "crew_budget": {
                    "blocked": True,
                    "role": exc.role,
                    "scope": exc.scope,
                    "window": exc.window,
                    "period": exc.period,
                    "limit": str(exc.limit),
                    "spent": str(exc.spent),
                    "reserved": str(exc.reserved),
                    "estimate": str(exc.estimate),
                    "model": exc.model,
                }
            },
        )


def _with_model_name(model: Any, current: str, cheaper: str) -> Any:
    """``model`` calling ``cheaper`` instead (``on_exceed: downgrade``), for one request.

    A shallow pydantic copy with the name field changed: the copy shares the
    user's clients and settings (LangChain chat models send their model name
    in each request), and the user's own model object is left untouched. The
    field is whichever of ``model_name``/``model``/``model_id`` holds the
    name; a provider prefix in the YAML (``openai/gpt-4o-mini``) is dropped
    when the model's own name has none.
    """
    if "/" in cheaper and "/" not in current:
        cheaper = cheaper.split("/", 1)[1]
    fields = getattr(type(model), "model_fields", {})
    for name in ("model_name", "model", "model_id"):
        if name in fields and getattr(model, name, None) == current:
            return model.model_copy(update={name: cheaper})
    raise ConfigError(
        f"on_exceed: downgrade chose {cheaper} for this call, but {type(model).__name__} "
        f"has no model-name field holding {current!r} to change, so it cannot be sent "
        "there; it was not sent. Fix: use a chat model with model=..., or another on_exceed",
        source="crew_budget.langchain.BudgetMiddleware",
    )


def _ls_params(model: Any, settings: Mapping[str, Any]) -> Mapping[str, Any]:
    getter = getattr(model, "_get_ls_params", None)
    if not callable(getter):
        return {}
    try:
        params = getter(**settings)
    except Exception:
        return {}
    return params if isinstance(params, Mapping) else {}


def _model_name(model: Any, ls: Mapping[str, Any]) -> str:
    for value in (
        ls.get("ls_model_name"),
        getattr(model, "model_name", None),
        getattr(model, "model", None),
        getattr(model, "model_id", None),
    ):
        if isinstance(value, str) and value:
            return value
    raise ConfigError(
        f"cannot tell which model {type(model).__name__} calls, so it cannot be priced; "
        "the call was not sent. Fix: use a chat model with a model name (model=...)",
        source="crew_budget.langchain.BudgetMiddleware",
    )


def _cap(model: Any, settings: Mapping[str, Any], ls: Mapping[str, Any]) -> int | None:
    candidates = [settings.get(k) for k in _CAP_KEYS]
    candidates.append(ls.get("ls_max_tokens"))
    candidates.extend(getattr(model, k, None) for k in _CAP_KEYS)
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _attribution() -> dict[str, Any]:
    """``run_name``, ``tags`` and ``task`` of the run config the model call is made in.

    The agent's model node runs with a child of the config passed to
    ``agent.invoke(..., config=...)``: tags and metadata are inherited (the
    ``run_name`` only where LangChain hands it down).
    """
    from langchain_core.runnables import ensure_config

    config = ensure_config()
    return attribution(config.get("run_name"), config.get("tags"), config.get("metadata"))

