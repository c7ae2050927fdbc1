"""LiteLLM adapter: per-role dollar budgets for ``litellm`` calls and the LiteLLM proxy.

SDK::

    import litellm
    from crew_budget.litellm import BudgetLogger, budget_role, completion

    litellm.callbacks = [BudgetLogger(config="budgets.yaml")]

    # async: blocked in litellm's own pre-call hook, settled before it returns
    await litellm.acompletion(model="gpt-4o-mini", messages=msgs,
                              metadata={"crew_budget_role": "researcher"})
    # or crew_budget.litellm.acompletion: the same, and an error if no logger is registered
    # sync: litellm gives callbacks no way to block, so use our wrapper
    with budget_role("researcher"):
        completion(model="gpt-4o-mini", messages=msgs)

A call over budget raises ``CrewBudgetExceededError``, a subclass of both
``litellm.BudgetExceededError`` and ``crew_budget.BudgetExceeded``, before
any HTTP request. Proxy (``config.yaml``)::

    litellm_settings:
      callbacks: crew_budget.litellm.proxy_budget_logger

with ``CREW_BUDGET_CONFIG=budgets.yaml`` in the proxy's environment. The role
comes from the virtual key's metadata; naming it by header is opt-in
(``CREW_BUDGET_HEADER_ROLES``); see ``examples/litellm_proxy/``.

Importing this module imports litellm (seconds, and it needs
``LITELLM_LOCAL_MODEL_COST_MAP=True`` offline); ``import crew_budget`` never does.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

try:
    import litellm
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"crew_budget.litellm needs litellm ({exc}). Fix: pip install 'crew-budget[litellm]'"
    ) from exc

from crew_budget.errors import ConfigError
from crew_budget.litellm._logger import (
    ROLE_KEY,
    BudgetLogger,
    CrewBudgetExceededError,
    budget_role,
    never_billed,
)
from crew_budget.nesting import covering_ticket

__all__ = [
    "ROLE_KEY",
    "BudgetLogger",
    "CrewBudgetExceededError",
    "acompletion",
    "budget_role",
    "completion",
    "never_billed",
    "proxy_budget_logger",
]


def registered_logger() -> BudgetLogger:
    """The ``BudgetLogger`` in ``litellm.callbacks`` (exactly one must be registered)."""
    found = [cb for cb in litellm.callbacks if isinstance(cb, BudgetLogger)]
    if len(found) != 1:
        problem = "no BudgetLogger is" if not found else f"{len(found)} BudgetLoggers are"
        raise ConfigError(
            f"{problem} registered in litellm.callbacks; register exactly one: "
            "litellm.callbacks.append(BudgetLogger(config='budgets.yaml'))",
            source="crew_budget.litellm",
        )
    return found[0]


def _call_kwargs(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    if args:
        kwargs.setdefault("model", args[0])
    if len(args) > 1:
        kwargs.setdefault("messages", args[1])
    if len(args) > 2:
        raise TypeError(f"crew_budget.litellm.{name} takes model and messages positionally; "
                        "pass everything else as keywords")
    return kwargs


def _reserve_here(logger: BudgetLogger, kwargs: dict[str, Any]) -> str:
    call_id = kwargs.get("litellm_call_id")
    if not isinstance(call_id, str) or not call_id:
        call_id = kwargs["litellm_call_id"] = str(uuid.uuid4())
    # A non-streaming call is settled by the wrapper as soon as it returns;
    # a stream when litellm reports it finished (its success hook).
    logger.reserve(call_id, logger._sdk_role(kwargs), kwargs, "sdk",
                   by_caller=not kwargs.get("stream"))
    return call_id


def completion(*args: Any, **kwargs: Any) -> Any:
    """``litellm.completion`` that is budgeted *before* it is sent.

    Why it exists: on litellm's sync path no callback hook can stop a call
    (``log_pre_api_call`` errors are swallowed and the deployment hook runs
    only for async calls). Same arguments and return value as
    ``litellm.completion``; raises ``CrewBudgetExceededError`` (nothing sent)
    when the call does not fit. Non-streaming calls are settled here from the
    response; streams when litellm reports the finished stream (an abandoned
    stream is charged at its reservation when the lease expires).
    """
    logger = registered_logger()
    kwargs = _call_kwargs("completion", args, kwargs)
    if covering_ticket() is not None:  # an outer crew-budget adapter owns this call
        return litellm.completion(**kwargs)
    call_id = _reserve_here(logger, kwargs)
    try:
        response = litellm.completion(**kwargs)
    except BaseException as exc:
        logger.fail_call(call_id, exc, kwargs=kwargs)
        raise
    if not kwargs.get("stream"):
        logger.settle_call(call_id, response, kwargs)
    return response


async def acompletion(*args: Any, **kwargs: Any) -> Any:
    """``litellm.acompletion``, reserved before it is sent and settled before it returns.

    A registered ``BudgetLogger`` already blocks and settles plain
    ``litellm.acompletion`` calls from litellm's deployment hooks; this
    wrapper does the same work itself, so it holds whatever litellm's hook
    order does: it raises ``ConfigError`` if no logger is registered (instead
    of an unbudgeted call), ``CrewBudgetExceededError`` before any HTTP
    request, and a non-streaming call's record is in the ledger when it
    returns, in every event loop (``asyncio.run`` called again, notebooks).
    The logger sees the reservation key in the request and neither reserves
    nor settles it a second time. Streams settle when litellm reports the
    finished stream.
    """
    logger = registered_logger()
    kwargs = _call_kwargs("acompletion", args, kwargs)
    if covering_ticket() is not None:  # an outer crew-budget adapter owns this call
        return await litellm.acompletion(**kwargs)
    call_id = _reserve_here(logger, kwargs)
    try:
        response = await litellm.acompletion(**kwargs)
    except BaseException as exc:
        logger.fail_call(call_id, exc, kwargs=kwargs)
        raise
    if not kwargs.get("stream"):
        logger.settle_call(call_id, response, kwargs)
    return response


_proxy_logger: BudgetLogger | None = None
_proxy_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    # ``litellm_settings.callbacks: crew_budget.litellm.proxy_budget_logger``:
    # built on first access from CREW_BUDGET_CONFIG, once per process.
    global _proxy_logger
    if name == "proxy_budget_logger":
        with _proxy_lock:
            if _proxy_logger is None:
                _proxy_logger = BudgetLogger.from_env()
            return _proxy_logger
    raise AttributeError(f"module 'crew_budget.litellm' has no attribute {name!r}")
