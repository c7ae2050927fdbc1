"""What the LangChain callback handler and the agent middleware share.

Kept free of LangChain imports at module level where possible, so the error
rule and the guard plumbing read the same in both places.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from crew_budget.config import BudgetConfig, find_config
from crew_budget.errors import ConfigError
from crew_budget.failures import classify_failure
from crew_budget.guard import Guard, Ticket
from crew_budget.ledger import Ledger
from crew_budget.usage import Usage, parse_usage

__all__ = [
    "BASE_URL_FIELDS",
    "attribution",
    "ROLE_KEY",
    "close_failed",
    "covered_by_middleware",
    "never_billed",
    "provider_hint",
    "resolve_guard",
    "settle_or_charge",
    "to_openai_messages",
    "to_openai_tools",
    "usage_or_none",
]

log = logging.getLogger("crew_budget.langchain")

ROLE_KEY = "crew_budget_role"
"""Run metadata key that names the role of one call (``config={"metadata": {...}}``)."""

# Set while the agent middleware runs the model, so a BudgetCallbackHandler on
# that same model does not reserve the call a second time.
covered_by_middleware: ContextVar[bool] = ContextVar("crew_budget_lc_covered", default=False)

ConfigSource = BudgetConfig | Mapping[str, Any] | str | os.PathLike[str]


_MAX_TAGS = 20
_MAX_LABEL = 200


def attribution(run_name: Any, tags: Any, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Spend-record metadata naming what a call was for (``report --by task``).

    ``run_name`` (the LangChain run's ``name``, e.g. ``config={"run_name":
    "summarize"}``), ``tags`` (the run's tags) and ``task`` (a ``"task"`` key
    in the run's metadata), each only when set. Bounded (200 characters
    each, 20 tags) since every record carries them.
    """
    out: dict[str, Any] = {}
    if isinstance(run_name, str) and run_name:
        out["run_name"] = run_name[:_MAX_LABEL]
    if isinstance(tags, (list, tuple)):
        clean = [t[:_MAX_LABEL] for t in tags if isinstance(t, str) and t][:_MAX_TAGS]
        if clean:
            out["tags"] = clean
    task = (metadata or {}).get("task")
    if isinstance(task, str) and task:
        out["task"] = task[:_MAX_LABEL]
    return out


def resolve_guard(
    guard: Guard | None, config: ConfigSource | None, ledger: Ledger | str | None
) -> Guard:
    """One guard from ``guard=`` or ``config=`` (+ optional ``ledger=``), never both."""
    if guard is not None:
        if config is not None or ledger is not None:
            raise ConfigError(
                "pass either guard=... or config=... (with an optional ledger=...), not both; "
                "a guard already has its config and ledger",
                source="crew_budget.langchain",
            )
        return guard
    if config is None:
        config = find_config()  # $CREW_BUDGET_CONFIG, else ./budgets.yaml (the CLI's order)
    if config is None:
        raise ConfigError(
            "no budget given: pass config='budgets.yaml' (or a dict / BudgetConfig), set "
            "CREW_BUDGET_CONFIG, or pass guard=Guard.from_config(...) to share one guard "
            "between handlers",
            source="crew_budget.langchain",
        )
    return Guard.from_config(config, ledger)


# Where chat model classes keep the URL they send to (ChatOpenAI's
# openai_api_base, ChatAnthropic's anthropic_api_url, AzureChatOpenAI's
# azure_endpoint, ...).
BASE_URL_FIELDS = ("openai_api_base", "base_url", "anthropic_api_url", "azure_endpoint",
                   "api_base", "groq_api_base", "endpoint_url", "endpoint")


def provider_hint(
    ls_provider: Any, fields: Mapping[str, Any] | None, class_name: Any
) -> str | None:
    """What a LangChain chat model says about where its calls go, for pricing.

    A base URL wins (a ``ChatOpenAI`` pointed at OpenRouter or Groq is billed
    by them, though LangChain still reports ``ls_provider="openai"``), then
    ``ls_provider``, then the class name (``ChatAnthropic``,
    ``ChatBedrockConverse``, ...). ``crew_budget.pricing.normalize_provider``
    reads all three; a local server's URL names no provider, so the model
    name decides.
    """
    for key in BASE_URL_FIELDS:
        value = (fields or {}).get(key)
        if isinstance(value, str) and "://" in value:
            return value
    if isinstance(ls_provider, str) and ls_provider:
        return ls_provider
    if isinstance(class_name, str) and class_name:
        return class_name
    return None


def to_openai_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """LangChain messages as OpenAI chat dicts: the shape the estimator prices best."""
    from langchain_core.messages import convert_to_openai_messages

    converted = convert_to_openai_messages(list(messages))
    return [dict(m) for m in converted]


def to_openai_tools(tools: Sequence[Any] | None) -> list[dict[str, Any]] | None:
    """Tool definitions (BaseTool, dicts, functions) as OpenAI ``tools`` entries."""
    if not tools:
        return None
    from langchain_core.utils.function_calling import convert_to_openai_tool

    out: list[dict[str, Any]] = []
    for tool in tools:
        try:
            out.append(dict(convert_to_openai_tool(tool)))
        except Exception:  # provider-native tool dicts (web search, ...) stay as they are
            if isinstance(tool, Mapping):
                out.append(dict(tool))
    return out or None


def usage_or_none(raw: Any) -> Usage | None:
    """Parsed usage, or None when absent, unreadable, or all zeros.

    A real call always reads at least one prompt token, so an all-zero usage
    (what some integrations report for a stream without a usage chunk) is
    treated as missing: charged at the reservation, never as free.
    """
    if raw is None:
        return None
    try:
        usage = parse_usage(raw)
    except Exception as exc:  # UsageError, or a shape nobody anticipated
        log.warning("crew-budget: unreadable usage %r (%s)", raw, exc)
        return None
    if usage.prompt_tokens == 0 and usage.output_tokens == 0:
        return None
    return usage


def usage_from_messages(messages: Sequence[Any]) -> Usage | None:
    """``usage_metadata`` of the first AI message that has it.

    Not a sum: with ``n > 1`` langchain-openai puts the whole response's usage
    on every generation's message.
    """
    for msg in messages:
        usage = usage_or_none(getattr(msg, "usage_metadata", None))
        if usage is not None:
            return usage
    return None


def never_billed(exc: BaseException) -> bool:
    """Did this error happen before the provider did billable work?

    LangChain reports no usage for a failed run, so only errors known not to
    have reached the provider release the reservation; timeouts, broken
    streams and unknown errors are charged (see ``crew_budget.failures``).
    """
    return classify_failure(exc) == "not_sent"


def settle_or_charge(guard: Guard, ticket: Ticket, usage: Usage | None, what: str) -> None:
    """Settle from ``usage``; with none, charge the reservation and say why (never $0)."""
    try:
        if usage is None:
            log.error(
                "crew-budget: %s call for role %r returned no token usage (%s); charging its "
                "reservation ($%s) instead of $0. Fix: for ChatOpenAI streams set "
                "stream_usage=True.", ticket.model, ticket.role, what, ticket.estimate,
            )
        guard.settle(ticket, usage)
    except Exception:  # a settle problem must never turn a good answer into an error
        log.exception("crew-budget: could not settle reservation %s", ticket.reservation_id)


def close_failed(guard: Guard, ticket: Ticket, exc: BaseException, usage: Usage | None) -> None:
    """A failed call: settle what it reported, release it if never billed, else charge."""
    try:
        if usage is not None:
            guard.settle(ticket, usage)
        elif never_billed(exc):
            guard.release(ticket)
        else:
            log.warning(
                "crew-budget: %s call for role %r failed (%s) without reporting usage; "
                "charging its reservation ($%s)", ticket.model, ticket.role,
                type(exc).__name__, ticket.estimate,
            )
            guard.settle(ticket, None)
    except Exception:  # never mask the provider's error with ours
        log.exception("crew-budget: could not close reservation %s", ticket.reservation_id)
