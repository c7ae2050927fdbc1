"""``BudgetLogger``: one litellm ``CustomLogger`` for the SDK and the proxy.

Where each path lets a logger block (checked against litellm 1.110):

``litellm.acompletion`` (async SDK)
    ``async_pre_call_deployment_hook(kwargs, call_type)`` runs inside
    litellm's ``@client`` wrapper before the provider request, and an
    exception it raises reaches the caller unchanged; the kwargs it returns
    are the ones sent. So the logger reserves there, injects ``max_tokens``
    (and ``stream_options.include_usage`` for streams) and raises
    ``CrewBudgetExceededError`` (a ``litellm.BudgetExceededError``) to block.
``litellm.completion`` (sync SDK)
    No hook can block: the deployment hook is not called on the sync path,
    and ``log_pre_api_call`` exceptions are logged and swallowed by
    litellm's logging object. ``crew_budget.litellm.completion`` is the
    smallest correct alternative: the same reservation, then
    ``litellm.completion``. A plain ``litellm.completion`` with this logger
    registered is still *counted* (its usage is booked when litellm reports
    success, and a warning says it was not blocked), never lost.
LiteLLM proxy
    ``async_pre_call_hook(user_api_key_dict, cache, data, call_type)`` runs
    before routing; raising there rejects the request before any upstream
    call. The agent's role comes from the virtual key's metadata (set by the
    admin, binding) or, where the operator opted in, a request header;
    budgets only from crew-budget's YAML (see ``_proxy.py``).

Settlement: a non-streaming async call (SDK or proxy) is settled in
``async_post_call_success_deployment_hook``, which litellm awaits inside
the call itself, so the record is in the ledger before ``acompletion``
returns. ``async_log_success_event`` cannot promise that: litellm queues it
on a background logging worker bound to one event loop, so it runs late,
and when the loop is gone (``asyncio.run`` called again, a notebook cell)
it waits for the next loop or process exit. Streams settle when litellm
reports the finished stream (``log_success_event`` /
``async_log_success_event``, from the assembled response, whose usage is
the provider's final usage chunk, or litellm's own count when the provider
sent none). Whichever handler comes first settles; the others find the
reservation gone and do nothing. Failures release the reservation when the
provider never billed (connection refused, HTTP error status) and charge it
otherwise.

Reservations are keyed by a fresh id made here (``RESERVATION_KEY`` in the
request's metadata), never by ``litellm_call_id``: the proxy takes that from
the client's ``x-litellm-call-id`` header, so two requests may share it.

Nested adapters (``crew_budget.nesting``): a call made inside an outer
crew-budget adapter (a CrewAI ``BudgetLLM`` over a litellm-routed ``LLM``,
LangChain's ``BudgetMiddleware`` over a litellm-backed model) is already
reserved and settled by that adapter, so this logger neither reserves nor
books it. The outer adapter's marker is a ``ContextVar``: visible in
``async_pre_call_deployment_hook`` and ``log_pre_api_call`` (the caller's
thread or task, or litellm's executor with a copy of its context), not
necessarily in the success/failure handlers (litellm may run sync ones on a
thread pool), so the pre-call hooks note the ``litellm_call_id`` as covered
and the closing handlers skip it by that id.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import litellm
from litellm.exceptions import BudgetExceededError as _LiteLLMBudgetExceededError
from litellm.integrations.custom_logger import CustomLogger

from crew_budget.config import BudgetConfig, find_config
from crew_budget.errors import BudgetExceeded, ConfigError, UsageError
from crew_budget.failures import classify_failure
from crew_budget.guard import Guard, Ticket
from crew_budget.ledger import Ledger
from crew_budget.litellm._common import (
    CHAT_CALLS,
    RESERVATION_KEY,
    ROLE_KEY,
    Origin,
    reservation_key,
)
from crew_budget.litellm._proxy import ProxyPolicy, pre_call
from crew_budget.nesting import covering_ticket
from crew_budget.usage import Usage, parse_usage

__all__ = [
    "ROLE_KEY",
    "BudgetLogger",
    "CrewBudgetExceededError",
    "budget_role",
    "never_billed",
]

log = logging.getLogger("crew_budget.litellm")

HEALTH_CHECK_ROLE = "litellm-health-check"
"""Role charged for the LiteLLM proxy's own health-check calls when they name none."""

_ROLE: ContextVar[str | None] = ContextVar("crew_budget_litellm_role", default=None)

_CAP_KEYS = ("max_tokens", "max_completion_tokens")
_EXTRA_KEYS = ("tool_choice", "functions", "function_call", "response_format")
# Completions per request: the guard reserves output for each (OpenAI bills
# every choice's tokens; ``max_tokens`` caps each choice, not their sum).
_COUNT_KEYS = ("n", "best_of")

ConfigSource = BudgetConfig | Mapping[str, Any] | str | os.PathLike[str]


class CrewBudgetExceededError(_LiteLLMBudgetExceededError, BudgetExceeded):
    """Over budget: litellm's own ``BudgetExceededError``, with crew-budget's facts.

    ``except litellm.BudgetExceededError`` and ``except crew_budget.BudgetExceeded``
    both catch it. It carries ``role``, ``scope``, ``window``, ``period``,
    ``limit``, ``spent``, ``reserved``, ``estimate`` (``Decimal``) and, for
    litellm's consumers, ``current_cost``/``max_budget`` (floats, display
    only), ``entity_type="crew_budget_role"`` and ``entity_id=<role>``.
    """

    def __init__(self, **fields: Any) -> None:
        BudgetExceeded.__init__(self, **fields)
        self.current_cost = float(self.spent + self.reserved)
        self.max_budget = float(self.limit)
        self.status_code = litellm.budget_exceeded_status_code
        self.llm_provider = ""
        self.entity_type = "crew_budget_role"
        self.entity_id = self.role
        self.category = "litellm_rate_limit"
        self.rate_limit_type = "budget"
        self.message = str(self)

    @classmethod
    def from_exceeded(cls, exc: BudgetExceeded) -> CrewBudgetExceededError:
        return cls(**exc._fields(), message=str(exc))


@contextlib.contextmanager
def budget_role(role: str) -> Iterator[None]:
    """Name the role for litellm calls made inside the block (threads and tasks alike)."""
    token = _ROLE.set(role)
    try:
        yield
    finally:
        _ROLE.reset(token)


def never_billed(exc: BaseException) -> bool:
    """Did this error happen before the provider did billable work?

    litellm's exceptions carry the upstream ``status_code``; timeouts, broken
    streams and unknown errors are charged at the reservation (see
    ``crew_budget.failures``).
    """
    return classify_failure(exc) == "not_sent"


@dataclass(slots=True)
class _Call:
    ticket: Ticket
    origin: Origin
    call_id: str
    started: float = field(default_factory=time.monotonic)
    # Settled by the caller (our completion/acompletion wrappers) right after
    # the call returns: litellm's success/failure hooks, which run later on
    # its thread pool, leave it alone, so the reservation is never held past
    # the call's return by a slow background thread.
    by_caller: bool = False


class BudgetLogger(CustomLogger):
    """Per-role dollar budgets for litellm calls, SDK and proxy.

    ``BudgetLogger(config="budgets.yaml")`` or ``BudgetLogger(guard=guard)``;
    ``role=`` is the role of calls that name none. Register it once::

        litellm.callbacks = [BudgetLogger(config="budgets.yaml", role="researcher")]

    and name the role per call with ``metadata={"crew_budget_role": ...}`` or
    ``with crew_budget.litellm.budget_role(...)``.

    Proxy only: ``header_roles`` lists the roles a request may name itself
    (``role_header`` or ``metadata.crew_budget_role``) when its key is bound
    to none (``"*"``: every role of the YAML; default: none, so the key's
    metadata decides); ``master_key_names_roles`` lets the master key do so
    too. See ``crew_budget.litellm._proxy`` for the whole trust model.
    """

    def __init__(
        self,
        guard: Guard | None = None,
        *,
        config: ConfigSource | None = None,
        ledger: Ledger | str | None = None,
        role: str | None = None,
        crew: str | None = None,
        role_header: str = "x-crew-budget-role",
        inject_stream_usage: bool = True,
        allow_unbudgeted_routes: bool = False,
        header_roles: Iterable[str] | str | None = None,
        master_key_names_roles: bool = False,
    ) -> None:
        super().__init__()
        if guard is not None and (config is not None or ledger is not None):
            raise ConfigError("pass either guard=... or config=... (with an optional "
                              "ledger=...), not both", source="crew_budget.litellm")
        if guard is None:
            if config is None:
                config = find_config()  # $CREW_BUDGET_CONFIG, else ./budgets.yaml
            if config is None:
                raise ConfigError(
                    "no budget given: pass BudgetLogger(config='budgets.yaml') (or a dict / "
                    "BudgetConfig), set CREW_BUDGET_CONFIG, or pass "
                    "guard=Guard.from_config(...)",
                    source="crew_budget.litellm",
                )
            guard = Guard.from_config(config, ledger)
        self.guard = guard
        self.role = role
        self.crew = crew
        self.role_header = role_header.lower()
        self.inject_stream_usage = inject_stream_usage
        self.allow_unbudgeted_routes = allow_unbudgeted_routes
        self.proxy_policy = ProxyPolicy.build(
            guard.config, role_header=role_header, header_roles=header_roles,
            master_key_names_roles=master_key_names_roles, default_role=role,
            allow_unbudgeted_routes=allow_unbudgeted_routes,
        )
        self._lock = threading.Lock()
        self._calls: dict[str, _Call] = {}
        self._done: collections.OrderedDict[str, None] = collections.OrderedDict()
        # (deployment, answered as) -> the name to bill by, or None: looked up once
        self._deployment_billing: dict[tuple[str, str], str | None] = {}
        # Calls an outer crew-budget adapter reserved (see crew_budget.nesting).
        self._covered: collections.OrderedDict[str, None] = collections.OrderedDict()

    @classmethod
    def from_env(cls) -> BudgetLogger:
        """The proxy's logger: ``CREW_BUDGET_CONFIG`` (YAML path; else ``./budgets.yaml``),
        ``CREW_BUDGET_LEDGER`` (optional, beats the YAML's ``ledger:``),
        ``CREW_BUDGET_DEFAULT_ROLE``, ``CREW_BUDGET_ROLE_HEADER``,
        ``CREW_BUDGET_HEADER_ROLES`` (``researcher,writer`` or ``*``),
        ``CREW_BUDGET_MASTER_KEY_NAMES_ROLES=1`` and
        ``CREW_BUDGET_ALLOW_UNBUDGETED_ROUTES=1`` (optional)."""
        path = find_config()  # $CREW_BUDGET_CONFIG, else ./budgets.yaml: the CLI's order
        if path is None:
            raise ConfigError(
                "CREW_BUDGET_CONFIG is not set and there is no ./budgets.yaml; point it at your "
                "budgets YAML before starting the proxy (e.g. CREW_BUDGET_CONFIG=budgets.yaml "
                "litellm --config config.yaml)",
                source="crew_budget.litellm",
            )
        return cls(
            config=path,
            role=os.environ.get("CREW_BUDGET_DEFAULT_ROLE") or None,
            role_header=os.environ.get("CREW_BUDGET_ROLE_HEADER") or "x-crew-budget-role",
            allow_unbudgeted_routes=_env_flag("CREW_BUDGET_ALLOW_UNBUDGETED_ROUTES"),
            header_roles=os.environ.get("CREW_BUDGET_HEADER_ROLES") or None,
            master_key_names_roles=_env_flag("CREW_BUDGET_MASTER_KEY_NAMES_ROLES"),
        )

    def __repr__(self) -> str:
        return f"BudgetLogger(role={self.role!r}, ledger={self.guard.ledger.url!r})"

    @property
    def in_flight(self) -> int:
        """Reservations made and not yet settled or released."""
        with self._lock:
            return len(self._calls)

    # -- reserving -----------------------------------------------------------------

    def _sdk_role(self, kwargs: Mapping[str, Any]) -> str:
        for key in ("metadata", "litellm_metadata"):
            meta = kwargs.get(key)
            if isinstance(meta, Mapping) and meta.get(ROLE_KEY):
                return str(meta[ROLE_KEY])
        role = _ROLE.get() or self.role
        if not role and _is_health_check(kwargs):
            # The proxy's own model health checks hit the provider too: count
            # them under a role of their own instead of failing them.
            return HEALTH_CHECK_ROLE
        if not role:
            raise ConfigError(
                "this litellm call names no role: pass metadata={'crew_budget_role': "
                "'researcher'}, wrap it in `with crew_budget.litellm.budget_role(...)`, or "
                "give BudgetLogger(role=...) a default",
                source="crew_budget.litellm",
            )
        return role

    def reserve(
        self, call_id: str, role: str, kwargs: dict[str, Any], origin: Origin,
        *, model: str | None = None, messages: Sequence[Any] | None = None,
        by_caller: bool = False,
    ) -> Ticket:
        """Reserve one chat call and adjust ``kwargs`` in place (``max_tokens``,
        ``stream_options``, ``model`` when the role's ``on_exceed: downgrade``
        moved the call to a cheaper model, and the reservation's key in its
        metadata); raises ``CrewBudgetExceededError`` when over budget.

        ``call_id`` (litellm's) is only recorded; the reservation is keyed by
        a fresh id (``RESERVATION_KEY``), so equal call ids never collide.
        """
        model_name = str(model or kwargs.get("model") or "")
        msgs = messages if messages is not None else kwargs.get("messages")
        if not model_name or msgs is None:
            raise ConfigError(
                "crew-budget cannot see this litellm call's model and messages, so it cannot "
                "be priced; it was not sent. Fix: pass model= and messages= as keywords.",
                source="crew_budget.litellm",
            )
        cap = next((kwargs[k] for k in _CAP_KEYS
                    if isinstance(kwargs.get(k), int) and kwargs[k] > 0), None)
        tools = kwargs.get("tools") if isinstance(kwargs.get("tools"), list) else None
        extra: dict[str, Any] = {k: kwargs[k] for k in _EXTRA_KEYS
                                 if isinstance(kwargs.get(k), (dict, list, str))}
        extra.update({k: kwargs[k] for k in _COUNT_KEYS
                      if isinstance(kwargs.get(k), int) and not isinstance(kwargs[k], bool)})
        info = {"framework": "litellm-proxy" if origin == "proxy" else "litellm",
                "litellm_call_id": call_id}
        # An Azure deployment is named by its owner ("azure/prod-chat"); what it
        # runs, and so what it costs, is litellm's ``base_model=`` (the kwarg
        # litellm's own cost tracking reads). Only the SDK caller's own kwarg
        # counts: on the proxy a request body must not choose its price.
        base = kwargs.get("base_model") if origin == "sdk" else None
        priced_as = base.strip() if isinstance(base, str) and base.strip() else model_name
        try:
            ticket = self.guard.preflight(role, priced_as, list(msgs), tools, cap, info,
                                          crew=self.crew, extra=extra or None)
        except BudgetExceeded as exc:
            raise CrewBudgetExceededError.from_exceeded(exc) from None
        if ticket.downgraded_from is not None:
            # on_exceed: downgrade. The request goes to the model it was
            # reserved at: the SDK wrappers send these kwargs, and on the
            # proxy the hook's data["model"] picks the route (so the listed
            # names must be model names the proxy serves).
            kwargs["model"] = ticket.model
            model_name = ticket.model
        if ticket.max_tokens is not None:
            kwargs["max_tokens"] = ticket.max_tokens
        if self.inject_stream_usage and kwargs.get("stream") and not kwargs.get("stream_options") \
                and _supports_stream_options(model_name, kwargs):
            kwargs["stream_options"] = {"include_usage": True}
        key = uuid.uuid4().hex
        _put_key(kwargs, key, in_place=origin == "proxy")
        with self._lock:
            self._calls[key] = _Call(ticket, origin, call_id, by_caller=by_caller)
            self._prune_locked()
        return ticket

    def has_call(self, kwargs: Any) -> bool:
        """Is the request in ``kwargs`` (or litellm's logging kwargs) reserved here and open?"""
        key = reservation_key(kwargs)
        with self._lock:
            return key is not None and key in self._calls

    def _prune_locked(self) -> None:
        # Calls whose end litellm never reported (an abandoned stream): the
        # ledger charges them at lease expiry; do not hold them in memory forever.
        if len(self._calls) < 4096:
            return
        horizon = time.monotonic() - float(self.guard.config.lease_seconds)
        for key in [k for k, c in self._calls.items() if c.started < horizon]:
            del self._calls[key]

    def _left_to_caller(self, key: str | None) -> bool:
        with self._lock:
            call = self._calls.get(key) if key is not None else None
            return call is not None and call.by_caller

    def _take(self, key: str | None, *, origin: Origin | None = None) -> _Call | None:
        if key is None:
            return None
        with self._lock:
            call = self._calls.get(key)
            if call is None or (origin is not None and call.origin != origin):
                return None
            del self._calls[key]
            self._done[key] = None
            while len(self._done) > 10_000:
                self._done.popitem(last=False)
            return call

    def _cover(self, call_id: str | None, kwargs: Any) -> bool:
        """Note ``call_id`` as an outer adapter's call if one covers this context."""
        if not call_id or covering_ticket() is None:
            return False
        key = reservation_key(kwargs)
        with self._lock:
            if key is not None and key in self._calls:  # reserved by us: ours to close
                return False
            self._covered[call_id] = None
            while len(self._covered) > 10_000:  # calls whose end never came
                self._covered.popitem(last=False)
        return True

    def _uncover(self, call_id: str | None) -> bool:
        """Was ``call_id`` covered by an outer adapter? Then it is done here: litellm
        may report one async call to both the async and the sync success handler."""
        if call_id is None:
            return False
        with self._lock:
            if call_id not in self._covered:
                return False
            del self._covered[call_id]
            self._done[call_id] = None
            while len(self._done) > 10_000:
                self._done.popitem(last=False)
            return True

    # -- closing ---------------------------------------------------------------------

    def settle_call(self, call_id: str | None, response: Any, kwargs: Mapping[str, Any],
                    *, from_hook: bool = False) -> None:
        """Settle the call reserved for ``kwargs`` (request or litellm's logging kwargs)
        from ``response``'s usage; a call reserved by no one is booked unreserved.
        ``from_hook``: litellm's success hook, which leaves calls its caller settles."""
        key = reservation_key(kwargs)
        if from_hook and self._left_to_caller(key):
            return
        call = self._take(key)
        if call is None:
            # An outer adapter's call is settled by that adapter: never book it twice.
            if self._uncover(call_id) or covering_ticket() is not None:
                return
            if key is None and call_id is not None:
                self._book_unreserved(kwargs, response)
            # else: reserved here and already closed by an earlier hook
            return
        usage = _usage_of(response)
        self._settle(call, usage, response)

    def _settle(self, call: _Call, usage: Usage | None, response: Any = None) -> None:
        try:
            if usage is None:
                log.error("crew-budget: litellm reported no usage for %s (role %r); charging "
                          "its reservation ($%s) instead of $0", call.ticket.model,
                          call.ticket.role, call.ticket.estimate)
            billed = None
            if response is not None and call.ticket.model[:6].lower() == "azure/":
                billed = self._billed_model(call.ticket, response)
            self.guard.settle(call.ticket, usage, billed_model=billed)
        except Exception:  # never turn a delivered answer into an error
            log.exception("crew-budget: could not settle reservation %s",
                          call.ticket.reservation_id)

    def fail_call(self, call_id: str | None, exc: BaseException | None,
                  *, origin: Origin | None = None, kwargs: Any = None,
                  from_hook: bool = False) -> None:
        """Close the call reserved for ``kwargs`` after a failure: released when the
        provider never billed, charged at its reservation otherwise."""
        if from_hook and self._left_to_caller(reservation_key(kwargs)):
            return
        call = self._take(reservation_key(kwargs), origin=origin)
        if call is None:
            self._uncover(call_id)  # an outer adapter's call: that adapter closes it
            return
        try:
            if exc is not None and never_billed(exc):
                self.guard.release(call.ticket)
            else:
                log.warning("crew-budget: %s call for role %r failed (%s) without usage; "
                            "charging its reservation ($%s)", call.ticket.model,
                            call.ticket.role, type(exc).__name__, call.ticket.estimate)
                self.guard.settle(call.ticket, None)
        except Exception:
            log.exception("crew-budget: could not close reservation %s",
                          call.ticket.reservation_id)

    def _book_unreserved(self, kwargs: Mapping[str, Any], response: Any) -> None:
        """A call that was never reserved (sync ``litellm.completion``): count it anyway."""
        usage = _usage_of(response)
        model = str(kwargs.get("model") or getattr(response, "model", "") or "")
        try:
            role = self._sdk_role(_request_kwargs(kwargs))
        except ConfigError:
            role = self.role or "unassigned"
        log.warning(
            "crew-budget: a %s call for role %r was not budgeted before it was sent (litellm's "
            "sync completion() cannot be blocked by a callback); booking its cost now. Fix: "
            "call crew_budget.litellm.completion(...) instead of litellm.completion(...).",
            model, role,
        )
        if usage is None or not model:
            log.error("crew-budget: cannot book the unbudgeted %s call: no usage", model)
            return
        try:
            ticket = self.guard.preflight(role, model, [], None, 1,
                                          {"framework": "litellm", "unreserved": True},
                                          crew=self.crew)
        except BudgetExceeded:
            log.error("crew-budget: the unbudgeted %s call for role %r went over its budget "
                      "(usage %s)", model, role, usage)
            return
        except Exception:
            log.exception("crew-budget: could not book the unbudgeted %s call", model)
            return
        self.guard.settle(ticket, usage)

    # -- litellm hooks: SDK --------------------------------------------------------------

    async def async_pre_call_deployment_hook(
        self, kwargs: dict[str, Any], call_type: Any
    ) -> dict[str, Any] | None:
        kind = getattr(call_type, "value", call_type)
        if kind not in CHAT_CALLS:
            return None
        call_id = kwargs.get("litellm_call_id")
        if not isinstance(call_id, str) or not call_id:
            call_id = kwargs["litellm_call_id"] = str(uuid.uuid4())
        if self.has_call(kwargs):  # reserved by the proxy hook, our wrappers or a retry
            return None
        if self._cover(call_id, kwargs):  # reserved by an outer crew-budget adapter
            return None
        logging_obj = kwargs.get("litellm_logging_obj")
        self.reserve(
            call_id, self._sdk_role(kwargs), kwargs, "sdk",
            model=kwargs.get("model") or getattr(logging_obj, "model", None),
            messages=kwargs.get("messages") or getattr(logging_obj, "messages", None),
        )
        return kwargs

    async def async_post_call_success_deployment_hook(
        self, request_data: dict[str, Any], response: Any, call_type: Any
    ) -> Any:
        """Settle a non-streaming async call before ``acompletion`` returns.

        litellm awaits this hook inside the call (SDK and proxy alike), unlike
        ``async_log_success_event``, which its logging worker runs later on
        the event loop of the moment. A stream (or an answer without usage) is
        left to the success event, which sees the finished stream.
        """
        if request_data.get("stream"):
            return None
        usage = _usage_of(response)
        if usage is None:
            return None
        call = self._take(reservation_key(request_data))
        if call is not None:
            self._settle(call, usage, response)
        return None

    def _billed_model(self, ticket: Ticket, response: Any) -> str | None:
        """The name Azure bills an answer by, when it is priced differently from
        the deployment the call was reserved as; else None.

        Before the call only the deployment name is known ("azure/<name>",
        or ``base_model=``), so the call is reserved at that name's price; the
        response's ``model`` is what Azure runs and invoices. A deployment
        named "gpt-4o-mini" that runs gpt-4o would be under-charged ~16x, so
        the call is charged at the answering model's price (``Guard.settle``'s
        ``billed_model``; a ``prices:`` entry for the deployment still wins)
        and the mismatch is logged with its fix once per name pair: the
        reservation was at the cheaper rate, so such calls can overrun it.
        """
        served = getattr(response, "model", None)
        if not isinstance(served, str) or not served:
            return None
        pair = (ticket.model, served)
        if pair in self._deployment_billing:
            return self._deployment_billing[pair]
        billed: str | None = None
        try:
            priced = self.guard.price(ticket.model, ticket.provider)
            name = "azure/" + served.rsplit("/", 1)[-1]
            answered = self.guard.price(name)
        except Exception:  # an unpriced answer name: the deployment's price stands
            self._deployment_billing[pair] = None
            return None
        if answered.model != priced.model:
            if priced.source == "override":
                log.warning(
                    "crew-budget: Azure deployment %s answered as %s (priced as %s); its "
                    "calls are charged at your `prices:` entry for %s, as configured",
                    ticket.model, served, answered.model, ticket.model)
            else:
                billed = name
                log.warning(
                    "crew-budget: Azure deployment %s is priced as %s, but it answered as %s "
                    "(priced as %s); its calls are charged at %s's rates, as Azure bills "
                    "them, but reserved at %s's, so they can overrun. Fix: pass "
                    "base_model='azure/%s' to litellm, or price the deployment under `prices:`",
                    ticket.model, priced.model, served, answered.model, answered.model,
                    priced.model, answered.model,
                )
        self._deployment_billing[pair] = billed
        return billed

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        # The one hook of the sync path that runs in the caller's context: the
        # only place to see an outer adapter's marker before the success
        # handler runs on litellm's thread pool.
        self._cover(_call_id(kwargs), kwargs)

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                          end_time: Any) -> None:
        self.settle_call(_call_id(kwargs), response_obj, kwargs, from_hook=True)

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        self.settle_call(_call_id(kwargs), response_obj, kwargs, from_hook=True)

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                          end_time: Any) -> None:
        self.fail_call(_call_id(kwargs), _exception(kwargs), origin="sdk", kwargs=kwargs,
                       from_hook=True)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        self.fail_call(_call_id(kwargs), _exception(kwargs), origin="sdk", kwargs=kwargs,
                       from_hook=True)

    # -- litellm hooks: proxy --------------------------------------------------------------
    # Defined on this class itself: the proxy only calls an async_pre_call_hook
    # that is in vars(type(callback)).

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any] | None:
        call_id = data.get("litellm_call_id")
        if not isinstance(call_id, str) or not call_id:
            call_id = data["litellm_call_id"] = str(uuid.uuid4())

        def reserve(role: str, model: str) -> object:
            return self.reserve(call_id, role, data, "proxy", model=model)

        return pre_call(self.proxy_policy, self.guard, reserve, user_api_key_dict, data,
                        call_type)

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        self.fail_call(_call_id(request_data), original_exception, kwargs=request_data)


# -- helpers ---------------------------------------------------------------------------


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def _put_key(kwargs: dict[str, Any], key: str, *, in_place: bool) -> None:
    """Write the reservation key into the request's metadata, which litellm hands
    back to every closing hook. SDK callers may share one metadata dict between
    concurrent calls, so theirs is copied; the proxy's is its own per request."""
    field_name = "litellm_metadata" if (not isinstance(kwargs.get("metadata"), dict)
                                        and isinstance(kwargs.get("litellm_metadata"), dict)) \
        else "metadata"
    meta = kwargs.get(field_name)
    if in_place and isinstance(meta, dict):
        meta[RESERVATION_KEY] = key
    else:
        kwargs[field_name] = {**(meta if isinstance(meta, Mapping) else {}),
                              RESERVATION_KEY: key}


def _call_id(kwargs: Any) -> str | None:
    if not isinstance(kwargs, Mapping):
        return None
    value = kwargs.get("litellm_call_id")
    if not value:
        params = kwargs.get("litellm_params")
        if isinstance(params, Mapping):
            value = params.get("litellm_call_id")
    return str(value) if value else None


def _is_health_check(kwargs: Mapping[str, Any]) -> bool:
    for key in ("litellm_metadata", "metadata"):
        meta = kwargs.get(key)
        tags = meta.get("tags") if isinstance(meta, Mapping) else None
        if isinstance(tags, list) and "litellm-internal-health-check" in tags:
            return True
    return False


def _exception(kwargs: Any) -> BaseException | None:
    exc = kwargs.get("exception") if isinstance(kwargs, Mapping) else None
    return exc if isinstance(exc, BaseException) else None


def _request_kwargs(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    params = kwargs.get("litellm_params")
    if isinstance(params, Mapping) and isinstance(params.get("metadata"), Mapping):
        return {"metadata": params["metadata"]}
    return kwargs


def _usage_of(response: Any) -> Usage | None:
    raw = getattr(response, "usage", None)
    if raw is None and isinstance(response, Mapping):
        raw = response.get("usage")
    if raw is None:
        return None
    try:
        usage = parse_usage(raw)
    except UsageError as exc:
        log.warning("crew-budget: unreadable litellm usage %r (%s)", raw, exc)
        return None
    if usage.prompt_tokens == 0 and usage.output_tokens == 0:
        return None
    return usage


def _supports_stream_options(model: str, kwargs: Mapping[str, Any]) -> bool:
    try:
        params = litellm.get_supported_openai_params(
            model=model, custom_llm_provider=kwargs.get("custom_llm_provider")
        )
    except Exception:
        return False
    return isinstance(params, list) and "stream_options" in params
