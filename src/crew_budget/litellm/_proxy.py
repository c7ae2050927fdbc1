"""The LiteLLM proxy side of ``BudgetLogger``: who is calling, and the pre-call check.

Trust model (invariant 8: a request may name a role, never raise a limit,
invent a budget or choose the id that keys its reservation):

- **The key decides.** A virtual key whose metadata (or its team's) has
  ``crew_budget_role`` is *bound* to that role; only the proxy admin can set
  it. A request with such a key that names another role (header or
  ``metadata.crew_budget_role``) is refused (403).
- **Naming a role by header is opt-in.** With a key bound to no role, a
  request may name one (``x-crew-budget-role`` header or
  ``metadata.crew_budget_role``) only when the operator listed it in
  ``header_roles`` (``CREW_BUDGET_HEADER_ROLES=researcher,writer``, or ``*``
  for every role of the budget YAML); otherwise 403.
- **Not the master key.** The master key (and other proxy-admin keys) can
  do anything on the proxy; letting it name roles would make every leaked
  admin key a way to spend any role's budget. It may name a role only when
  ``master_key_names_roles`` (``CREW_BUDGET_MASTER_KEY_NAMES_ROLES=1``) is set.
- **No invented budgets.** A name a request brings must be a role the budget
  YAML lists. The YAML's ``default_role`` budget is for the operator's own
  names (a key's bound role, ``CREW_BUDGET_DEFAULT_ROLE``), never for names a
  client makes up: otherwise each invented header would open a fresh
  default budget (400).
- A request naming no role is charged to ``CREW_BUDGET_DEFAULT_ROLE`` when
  set, else refused (400).
- **Server-side reservation ids.** The reservation is keyed by a fresh id
  the logger makes (``metadata.crew_budget_reservation``, overwritten
  whatever the client sent), never by ``litellm_call_id``, which the proxy
  takes from the client's ``x-litellm-call-id`` header.

Only chat completions (``/chat/completions``) can be priced. Every other
route that reaches this hook (``/completions``, ``/embeddings``,
``/responses``, ``/v1/messages``, ...) is refused (400) so it cannot be used
to spend around the budget, unless ``allow_unbudgeted_routes`` is set
(``CREW_BUDGET_ALLOW_UNBUDGETED_ROUTES=1``).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from crew_budget.config import BudgetConfig
from crew_budget.errors import (
    ConfigError,
    LedgerUnavailable,
    PricingError,
    UnknownModelError,
)
from crew_budget.guard import Guard
from crew_budget.litellm._common import CHAT_CALLS, RESERVATION_KEY, ROLE_KEY

__all__ = ["ProxyPolicy", "is_master_key", "pre_call", "resolve_role"]

log = logging.getLogger("crew_budget.litellm")

MASTER_KEY_ALIAS = "litellm_proxy_master_key"
"""What litellm (>= 1.110) puts in ``UserAPIKeyAuth.api_key`` for the master key
(``litellm.constants.LITELLM_PROXY_MASTER_KEY_ALIAS``), instead of the key itself."""

PROXY_ADMIN = "proxy_admin"
"""``LitellmUserRoles.PROXY_ADMIN``: the master key's role, also given to admin users' keys."""

Reserve = Callable[[str, str], object]
"""``reserve(role, model)``: reserve the request in ``data`` or raise (see ``pre_call``)."""


@dataclass(frozen=True, slots=True)
class ProxyPolicy:
    """Who may name which role through the proxy (see the module doc)."""

    role_header: str = "x-crew-budget-role"
    header_roles: frozenset[str] = frozenset()
    all_listed_roles: bool = False
    master_key_names_roles: bool = False
    default_role: str | None = None
    allow_unbudgeted_routes: bool = False

    @classmethod
    def build(
        cls,
        config: BudgetConfig,
        *,
        role_header: str,
        header_roles: Iterable[str] | str | None,
        master_key_names_roles: bool,
        default_role: str | None,
        allow_unbudgeted_routes: bool,
    ) -> ProxyPolicy:
        """Check the opt-ins against the budget YAML: a header role it does not list
        would be a name that can only ever be refused, so it is a config error."""
        everything = False
        if header_roles is None:
            names: frozenset[str] = frozenset()
        elif isinstance(header_roles, str):
            parts = [p.strip() for p in header_roles.split(",") if p.strip()]
            everything = parts == ["*"]
            names = frozenset() if everything else frozenset(parts)
        else:
            names = frozenset(str(p) for p in header_roles)
        unknown = sorted(names - set(config.roles))
        if unknown:
            known = ", ".join(sorted(config.roles)) or "none"
            raise ConfigError(
                f"header_roles names {', '.join(map(repr, unknown))}, which the budget YAML does "
                f"not list (its roles: {known}); list only configured roles, or '*' for all of "
                "them (CREW_BUDGET_HEADER_ROLES)",
                source="crew_budget.litellm",
            )
        return cls(role_header.lower(), names, everything, master_key_names_roles,
                   default_role, allow_unbudgeted_routes)

    def may_name(self, role: str, config: BudgetConfig) -> bool:
        """May a request bring this role name itself?"""
        return role in config.roles and (self.all_listed_roles or role in self.header_roles)

    def describe_header_roles(self, config: BudgetConfig) -> str:
        if self.all_listed_roles:
            return ", ".join(sorted(config.roles)) or "none"
        return ", ".join(sorted(self.header_roles)) or "none"


def _http_error(status: int, message: str) -> Exception:
    # fastapi ships with the proxy, not with the SDK; the proxy turns its
    # HTTPException into an OpenAI-shaped error with this status.
    fastapi = importlib.import_module("fastapi")
    error: Exception = fastapi.HTTPException(status_code=status, detail=message)
    return error


def _headers(data: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for source in (data.get("proxy_server_request"), data.get("metadata")):
        headers = source.get("headers") if isinstance(source, Mapping) else None
        if isinstance(headers, Mapping):
            for key, value in headers.items():
                out.setdefault(str(key).lower(), str(value))
    return out


def is_master_key(user_api_key_dict: Any) -> bool:
    """Is this request authenticated with the master key (or another proxy-admin key)?"""
    if getattr(user_api_key_dict, "api_key", None) == MASTER_KEY_ALIAS:
        return True
    role = getattr(user_api_key_dict, "user_role", None)
    return getattr(role, "value", role) == PROXY_ADMIN


def resolve_role(policy: ProxyPolicy, config: BudgetConfig, user_api_key_dict: Any,
                 data: Mapping[str, Any]) -> str:
    """The role one proxy request is charged to (see the module doc for the rules)."""
    key_role: str | None = None
    for attr in ("metadata", "team_metadata"):
        meta = getattr(user_api_key_dict, attr, None)
        if isinstance(meta, Mapping) and meta.get(ROLE_KEY):
            key_role = str(meta[ROLE_KEY])
            break
    header = policy.role_header
    header_role = _headers(data).get(header) or None
    body_meta = data.get("metadata")
    body_role = body_meta.get(ROLE_KEY) if isinstance(body_meta, Mapping) else None
    body_role = str(body_role) if body_role else None
    if header_role and body_role and header_role != body_role:
        raise _http_error(400, f"crew-budget: the {header} header names role {header_role!r} "
                               f"but metadata.{ROLE_KEY} names {body_role!r}; name one role")
    client_role = header_role or body_role
    if key_role:
        if client_role and client_role != key_role:
            raise _http_error(403, f"crew-budget: this API key is bound to role {key_role!r}; "
                                   f"it cannot spend as {client_role!r}. Use a key for that "
                                   "role.")
        return key_role
    if client_role:
        if client_role not in config.roles:
            known = ", ".join(sorted(config.roles)) or "none"
            raise _http_error(400, f"crew-budget: unknown role {client_role!r} (configured "
                                   f"roles: {known}); a request can only name a role the "
                                   "budget YAML lists, and budgets are only set there")
        if is_master_key(user_api_key_dict) and not policy.master_key_names_roles:
            raise _http_error(403, f"crew-budget: the master key (or a proxy-admin key) cannot "
                                   f"name a role ({header}: {client_role!r}); give each agent "
                                   f"a virtual key whose metadata has {ROLE_KEY!r}, or set "
                                   "CREW_BUDGET_MASTER_KEY_NAMES_ROLES=1 on the proxy")
        if not policy.may_name(client_role, config):
            raise _http_error(403, f"crew-budget: requests may not name role {client_role!r} "
                                   f"themselves (roles a request may name: "
                                   f"{policy.describe_header_roles(config)}); use a virtual "
                                   f"key whose metadata has {ROLE_KEY!r}, or list the role in "
                                   "CREW_BUDGET_HEADER_ROLES on the proxy")
        return client_role
    if policy.default_role:
        return policy.default_role
    raise _http_error(400, f"crew-budget: this request names no agent role; use a key whose "
                           f"metadata has {ROLE_KEY!r} (or, where the proxy allows it, send "
                           f"the {header} header)")


def _priced_model(guard: Guard, public: str) -> str:
    """The model to price: the public name if priced, else its deployment's model."""
    try:
        guard.prices.get(public)
        return public
    except PricingError:
        pass
    try:
        from litellm.proxy.proxy_server import llm_router
    except Exception:
        return public
    if llm_router is None:
        return public
    try:
        deployments = llm_router.get_model_list(model_name=public) or []
    except Exception:
        return public
    for deployment in deployments:
        params = deployment.get("litellm_params") if isinstance(deployment, Mapping) else None
        name = params.get("model") if isinstance(params, Mapping) else None
        if isinstance(name, str):
            try:
                guard.prices.get(name)
            except PricingError:
                continue
            return name
    return public


def pre_call(policy: ProxyPolicy, guard: Guard, reserve: Reserve, user_api_key_dict: Any,
             data: dict[str, Any], call_type: Any) -> dict[str, Any] | None:
    """Reserve one proxy request before routing (through ``reserve``), or reject it."""
    meta = data.get("metadata")
    if not isinstance(meta, dict):
        meta = data["metadata"] = {}
    # A client must never choose the key of a reservation, not even on a route
    # that passes through unbudgeted.
    meta.pop(RESERVATION_KEY, None)
    kind = getattr(call_type, "value", call_type)
    if kind not in CHAT_CALLS:
        if policy.allow_unbudgeted_routes:
            log.warning("crew-budget: %s request passed through UNBUDGETED "
                        "(allow_unbudgeted_routes)", kind)
            return None
        raise _http_error(400, f"crew-budget: {kind} requests cannot be budgeted, so this proxy "
                               "refuses them; use /chat/completions, or set "
                               "CREW_BUDGET_ALLOW_UNBUDGETED_ROUTES=1 to let them through "
                               "unbudgeted")
    role = resolve_role(policy, guard.config, user_api_key_dict, data)
    meta[ROLE_KEY] = role  # the role actually charged, whatever the client sent
    model = _priced_model(guard, str(data.get("model") or ""))
    try:
        reserve(role, model)
    except UnknownModelError as exc:
        raise _http_error(500, f"crew-budget: {exc}") from None
    except LedgerUnavailable as exc:
        raise _http_error(503, f"crew-budget: {exc}") from None
    except ConfigError as exc:
        raise _http_error(400, f"crew-budget: {exc}") from None
    return data
