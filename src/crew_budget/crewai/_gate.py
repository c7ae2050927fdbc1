"""Where a crew's LLM calls are caught: CrewAI's hooks plus a gate on ``call``.

What CrewAI 1.15 offers, and what each piece can see and stop:

- ``EXECUTION_START`` / ``EXECUTION_END`` interception hooks run
  synchronously, on the kickoff's own thread and context, with the crew on
  the context. They tell us *which attached crew is running* here: every
  call made inside that window (agents, manager, planner, converters,
  guardrails, the ``crew.test()`` evaluator, memory's background saves,
  which copy the context they were submitted from) belongs to that crew.
  Used for that, and to mark the start of a run for ``summary()`` (instead
  of a ``before_kickoff_callback``, which made CrewAI turn ``inputs=None``
  into ``{}``).
- The ``PRE_MODEL_CALL`` hook (``before_llm_call``) can stop a call before
  any HTTP by raising ``HookAborted``, but it cannot see the request's
  tools or ``response_model`` (so it would under-price tool schemas and
  structured output), the executor dispatches it before the
  context-window summariser makes its own, unhooked, call, and there is no
  matching end: ``after_llm_call`` is skipped for tool calls and failures,
  and ``LLMCallCompletedEvent``/``LLMCallFailedEvent`` reach handlers later
  on a thread pool. A reservation opened there could neither be priced in
  full nor settled or released at the right moment.
- So the call itself is gated *in place*: ``call``/``acall`` of every
  ``BaseLLM`` class are wrapped once (on the class that defines them, like
  CrewAI's own rate-limit wrapper). The gate sees the whole request,
  reserves before the provider is reached (raising ``CrewBudgetExceeded``,
  a ``HookAborted``, so CrewAI does not retry), and settles on every exit.
  The user's LLM object is never replaced or copied, so its type, its token
  counters and any state it keeps (response ids, call counters) stay its
  own. A call that is not made for an attached crew or agent passes
  straight through.
- Classes: ``attach`` imports CrewAI's native provider modules and gates
  every ``BaseLLM`` subclass there is; each kickoff of an attached crew
  gates any class imported since. A class defined *during* a run is not
  gated until the next kickoff (``gate_llm_class(cls)`` does it at once).
  The ``PRE_MODEL_CALL`` hook is deliberately not registered: once any
  global LLM hook exists, every executor dispatches hooks (and CrewAI emits
  a ``HookDispatchedEvent``) on every call, a visible change to the crew.

Which role pays: an agent of the running crew (or its manager) pays for its
own calls; every other call made during the crew's run is made *for the
crew* and is charged to the callback's ``crew_role``.
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crewai.hooks.dispatch import InterceptionPoint, register
from crewai.llms.base_llm import BaseLLM

from crew_budget.crewai._llm import BudgetLLM, TaskEnded, guarded, is_covered
from crew_budget.runs import Run, begin_run, current_run, end_run, run_name

if TYPE_CHECKING:
    from crew_budget.crewai._callback import BudgetCallback

log = logging.getLogger("crew_budget.crewai")

_GATE_MARK = "_crew_budget_gate"
_LOCK = threading.RLock()

# Native provider modules CrewAI imports lazily from ``LLM(model=...)``.
# Importing them up front lets the gate wrap their classes before a crew
# builds one mid-run (a planner, an evaluator); a missing SDK is skipped.
_PROVIDER_MODULES = (
    "crewai.llm",
    "crewai.llms.providers.openai.completion",
    "crewai.llms.providers.anthropic.completion",
    "crewai.llms.providers.gemini.completion",
    "crewai.llms.providers.azure.completion",
    "crewai.llms.providers.bedrock.completion",
    "crewai.llms.providers.openai_compatible.completion",
)


@dataclass(frozen=True, slots=True)
class _Entry:
    """An attached crew or agent and the callback that budgets it."""

    obj: Any
    callback: BudgetCallback


# Registries: id -> entry (the entry holds the object, so ids stay valid
# while attached). Crews also by ``key``: ``crew.copy()`` (what
# ``crew.test()`` and ``kickoff_for_each`` run) keeps the key.
_CREWS: dict[int, _Entry] = {}
_CREW_KEYS: dict[str, _Entry] = {}
_AGENTS: dict[int, _Entry] = {}
_RUNS: ContextVar[tuple[_Entry, ...]] = ContextVar("crew_budget_crewai_runs", default=())
# The ``crew_budget.run``s the hooks started, with the crew or flow each is
# for: a kickoff or Flow run outside any run is one run (see _begin_run).
_OWN_RUNS: ContextVar[tuple[tuple[Any, Run], ...]] = ContextVar(
    "crew_budget_crewai_own_runs", default=())
_HOOKS_INSTALLED = False


# -- registries ------------------------------------------------------------------


def _crew_key(crew: Any) -> str | None:
    try:
        key = getattr(crew, "key", None)
    except Exception:  # a key built from odd agents; identity still works
        return None
    return key if isinstance(key, str) else None


def register_crew(crew: Any, callback: BudgetCallback) -> None:
    entry = _Entry(crew, callback)
    with _LOCK:
        _CREWS[id(crew)] = entry
        key = _crew_key(crew)
        if key is not None:
            _CREW_KEYS[key] = entry


def register_agent(agent: Any, callback: BudgetCallback) -> None:
    with _LOCK:
        _AGENTS[id(agent)] = _Entry(agent, callback)


def unregister(callback: BudgetCallback) -> None:
    with _LOCK:
        for table in (_CREWS, _CREW_KEYS, _AGENTS):
            for k in [k for k, e in table.items() if e.callback is callback]:
                del table[k]  # type: ignore[arg-type]


def forget_all() -> None:
    """Drop every attachment (what each callback's ``detach()`` does, at once)."""
    with _LOCK:
        for table in (_CREWS, _CREW_KEYS, _AGENTS):
            table.clear()


def crew_entry(crew: Any) -> _Entry | None:
    """The attachment of ``crew``, or of the crew it was copied from.

    ``crew.copy()`` (run by ``crew.test()`` and ``kickoff_for_each``) builds
    a new crew with copied agents, tasks and LLMs; it is recognised by its
    ``key`` (a hash of its agents' and tasks' definitions) and budgeted by
    the original's callback. So is any other crew with the very same agents
    and tasks: over-counted if anything, never let through unbudgeted.
    """
    entry = _CREWS.get(id(crew))
    if entry is not None and entry.obj is crew:
        return entry
    key = _crew_key(crew)
    return _CREW_KEYS.get(key) if key is not None else None


def active_run() -> Any:
    """The attached crew running in this context, if any."""
    runs = _RUNS.get()
    return runs[-1].obj if runs else None


# -- routing one call ------------------------------------------------------------


def _agent_of(crew: Any, agent: Any) -> bool:
    if agent is None:
        return False
    if any(a is agent for a in (getattr(crew, "agents", None) or [])):
        return True
    return getattr(crew, "manager_agent", None) is agent


def route(from_agent: Any) -> tuple[BudgetCallback, str] | None:
    """Which callback budgets this call, and under which role (None: not ours)."""
    runs = _RUNS.get()
    if runs:
        run = runs[-1]
        if _agent_of(run.obj, from_agent) or id(from_agent) in _AGENTS:
            return run.callback, str(from_agent.role)
        return run.callback, run.callback.crew_role
    if from_agent is not None:
        entry = _AGENTS.get(id(from_agent))
        if entry is not None and entry.obj is from_agent:
            return entry.callback, str(from_agent.role)
    return None


# -- the gate on call / acall ----------------------------------------------------


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], name: str, index: int) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else None


def _gate_call(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def gated(self: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(self, BudgetLLM) or is_covered(self):
            return method(self, *args, **kwargs)
        routed = route(_arg(args, kwargs, "from_agent", 5))
        if routed is None:
            return method(self, *args, **kwargs)
        callback, role = routed
        try:
            with guarded(self, callback.guard, role, _arg(args, kwargs, "messages", 0),
                         _arg(args, kwargs, "tools", 1), _arg(args, kwargs, "from_task", 4),
                         _arg(args, kwargs, "response_model", 6)):
                return method(self, *args, **kwargs)
        except TaskEnded as ended:  # on_exceed: end_task, nothing was sent
            return ended.answer

    setattr(gated, _GATE_MARK, True)
    return gated


def _gate_acall(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    async def gated(self: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(self, BudgetLLM) or is_covered(self):
            return await method(self, *args, **kwargs)
        routed = route(_arg(args, kwargs, "from_agent", 5))
        if routed is None:
            return await method(self, *args, **kwargs)
        callback, role = routed
        try:
            with guarded(self, callback.guard, role, _arg(args, kwargs, "messages", 0),
                         _arg(args, kwargs, "tools", 1), _arg(args, kwargs, "from_task", 4),
                         _arg(args, kwargs, "response_model", 6)):
                return await method(self, *args, **kwargs)
        except TaskEnded as ended:  # on_exceed: end_task, nothing was sent
            return ended.answer

    setattr(gated, _GATE_MARK, True)
    return gated


def gate_llm_class(cls: type[Any]) -> None:
    """Put ``cls``'s calls behind crew-budget (``call``/``acall``, once each).

    ``attach`` and each attached kickoff do this for every ``BaseLLM`` class
    that exists then; call it yourself for an LLM class defined later and
    used before the next kickoff (e.g. by an agent attached on its own).
    Gated calls that belong to no attached crew or agent pass straight through.
    """
    if not (isinstance(cls, type) and issubclass(cls, BaseLLM)):
        return
    with _LOCK:
        for owner in cls.__mro__:
            if owner is BaseLLM or not (isinstance(owner, type) and issubclass(owner, BaseLLM)):
                continue
            if issubclass(owner, BudgetLLM):
                continue
            for name, wrap in (("call", _gate_call), ("acall", _gate_acall)):
                method = owner.__dict__.get(name)
                if method is None or getattr(method, "__isabstractmethod__", False):
                    continue
                if getattr(method, _GATE_MARK, False):
                    continue
                type.__setattr__(owner, name, wrap(method))


def is_gated(cls: type[Any]) -> bool:
    call = getattr(cls, "call", None)
    return bool(getattr(call, _GATE_MARK, False))


def _all_subclasses(cls: type[Any]) -> list[type[Any]]:
    out: list[type[Any]] = []
    stack = [cls]
    while stack:
        for sub in stack.pop().__subclasses__():
            out.append(sub)
            stack.append(sub)
    return out


def gate_everything() -> None:
    """Import CrewAI's provider classes, gate every ``BaseLLM`` class, add the hooks."""
    for name in _PROVIDER_MODULES:
        try:
            importlib.import_module(name)
        except Exception:
            continue
    for cls in _all_subclasses(BaseLLM):
        gate_llm_class(cls)
    _install_hooks()


# -- CrewAI hooks ------------------------------------------------------------------


def _begin_run(obj: Any, name: str) -> None:
    """Make this kickoff (or Flow run) one ``crew_budget.run``, unless it is inside one.

    A crew's kickoff outside any run is a run of its own, so ``per_run``
    limits (the YAML's, ``BudgetCallback(per_run_usd=...)``) cap each
    kickoff; concurrent kickoffs run on their own threads and contexts, so
    they are separate runs. A Flow run is one run too: the crews it kicks
    off find it current and are charged to it, as is a kickoff inside the
    user's own ``with crew_budget.run(...)``.
    """
    if current_run() is not None:
        return
    r = begin_run(name)
    _OWN_RUNS.set((*_OWN_RUNS.get(), (obj, r)))


def _end_run(obj: Any) -> None:
    own = _OWN_RUNS.get()
    if own and own[-1][0] is obj:
        end_run(own[-1][1])
        _OWN_RUNS.set(own[:-1])


def _on_execution_start(ctx: Any) -> None:
    crew = getattr(ctx, "crew", None)
    if crew is None:  # a flow's execution: one run; its crews dispatch their own
        flow = getattr(ctx, "flow", None)
        if flow is not None:
            _begin_run(flow, run_name(getattr(flow, "name", None), type(flow).__name__))
        return None
    entry = crew_entry(crew)
    if entry is None:
        return None
    for cls in _all_subclasses(BaseLLM):  # classes imported since attach
        if not is_gated(cls):
            gate_llm_class(cls)
    run = _Entry(crew, entry.callback)
    _RUNS.set((*_RUNS.get(), run))
    config_crew = entry.callback.guard.config.crew
    _begin_run(crew, run_name(config_crew.name if config_crew else getattr(crew, "name", None),
                              "kickoff"))
    entry.callback._run_began()
    return None  # never replace the inputs


def _on_execution_end(ctx: Any) -> None:
    crew = getattr(ctx, "crew", None)
    runs = _RUNS.get()
    if crew is not None and runs and runs[-1].obj is crew:
        _RUNS.set(runs[:-1])
    target = crew if crew is not None else getattr(ctx, "flow", None)
    if target is not None:
        _end_run(target)
    # never replace the output


def _install_hooks() -> None:
    global _HOOKS_INSTALLED
    with _LOCK:
        if _HOOKS_INSTALLED:
            return
        register(InterceptionPoint.EXECUTION_START, _on_execution_start)
        register(InterceptionPoint.EXECUTION_END, _on_execution_end)
        _HOOKS_INSTALLED = True
