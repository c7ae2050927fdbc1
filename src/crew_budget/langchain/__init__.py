"""LangChain adapter: per-role dollar budgets on chat models and v1 agents.

Two ways in, both blocking a call *before* its HTTP request::

    from crew_budget.langchain import BudgetCallbackHandler, BudgetMiddleware

    # any chat model or chain: a callback handler
    handler = BudgetCallbackHandler(role="researcher", config="budgets.yaml")
    llm = ChatOpenAI(model="gpt-4o-mini", max_tokens=512, callbacks=[handler])
    llm.invoke("...")                      # raises crew_budget.BudgetExceeded when over

    # a LangChain v1 agent: middleware around every model call
    agent = create_agent(llm, tools, middleware=[
        BudgetMiddleware(role="researcher", guard=handler.guard, exit_behavior="end"),
    ])

Blocking hooks: ``on_chat_model_start`` / ``on_llm_start`` raising with
``raise_error = True`` (the handler), and ``wrap_model_call`` /
``awrap_model_call`` (the middleware). Settlement reads
``AIMessage.usage_metadata`` (streams included: ``ChatOpenAI(streaming=True,
stream_usage=True)`` puts the final usage chunk there) or
``llm_output["token_usage"]``; a call that reports none is charged at its
reservation and logged, never counted as free.

``langchain-core`` is needed for the handler; ``langchain`` (v1, which has
``create_agent``) only for ``BudgetMiddleware``, imported when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    from crew_budget.langchain._handler import BudgetCallbackHandler
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"crew_budget.langchain needs langchain-core ({exc}). Fix: "
        "pip install 'crew-budget[langchain]'"
    ) from exc

from crew_budget.langchain._common import ROLE_KEY

if TYPE_CHECKING:
    from crew_budget.langchain._middleware import BudgetMiddleware

__all__ = ["ROLE_KEY", "BudgetCallbackHandler", "BudgetMiddleware"]


def __getattr__(name: str) -> Any:
    if name == "BudgetMiddleware":
        try:
            from crew_budget.langchain._middleware import BudgetMiddleware
        except ImportError as exc:
            raise ImportError(
                f"BudgetMiddleware needs LangChain v1 agents ({exc}). Fix: "
                "pip install 'langchain>=1.0'"
            ) from exc
        return BudgetMiddleware
    raise AttributeError(f"module 'crew_budget.langchain' has no attribute {name!r}")
