"""The LiteLLM proxy side of ``BudgetLogger``: who is calling, and the pre-call check.

Trust model (invariant 8: a request may name a role, never raise a limit):

- The role comes from the virtual key's metadata ``crew_budget_role`` (or its
  team's), which only the proxy admin can set. Such a key is *bound*: a
  request that names another role in a header or its metadata is refused
  (403), so an agent cannot move its spend to a richer role.
- Otherwise the client names the role with the ``x-crew-budget-role`` header
  (or ``metadata.crew_budget_role`` in the body). It must be a role the
  budget YAML lists (or the YAML must have ``default_role``): an unknown name
  would otherwise escape every role limit, so it is refused (400).
- Limits come only from crew-budget's YAML. Nothing in the request is read
  as a limit; ``metadata.crew_budget_role`` is overwritten with the role
  actually charged.

Only chat completions (``/chat/completions``) can be priced. Every other
route that reaches this hook (``/completions``, ``/embeddings``,
``/responses``, ``/v1/messages``, ...) is refused (400) so it cannot be used
to spend around the budget, unless the logger was built with
``allow_unbudgeted_routes=True`` (``CREW_BUDGET_ALLOW_UNBUDGETED_ROUTES=1``).
"""

from __future__ import annotations

import importlib
import logging
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from crew_budget.errors import ConfigError, LedgerUnavailable, PricingError, UnknownModelError
from crew_budget.litellm._logger import _CHAT_CALLS, ROLE_KEY

if TYPE_CHECKING:
    from crew_budget.litellm._logger import BudgetLogger

__all__ = ["pre_call", "resolve_role"]

log = logging.getLogger("crew_budget.litellm")


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


def resolve_role(logger: BudgetLogger, user_api_key_dict: Any, data: Mapping[str, Any]) -> str:
    """The role one proxy request is charged to (see the module doc for the rules)."""
    key_role: str | None = None
    for attr in ("metadata", "team_metadata"):
        meta = getattr(user_api_key_dict, attr, None)
        if isinstance(meta, Mapping) and meta.get(ROLE_KEY):
            key_role = str(meta[ROLE_KEY])
            break
    header_role = _headers(data).get(logger.role_header) or None
    body_meta = data.get("metadata")
    body_role = body_meta.get(ROLE_KEY) if isinstance(body_meta, Mapping) else None
    body_role = str(body_role) if body_role else None
    if header_role and body_role and header_role != body_role:
        raise _http_error(400, f"crew-budget: the {logger.role_header} header names role "
                               f"{header_role!r} but metadata.{ROLE_KEY} names {body_role!r}; "
                               "name one role")
    client_role = header_role or body_role
    if key_role:
        if client_role and client_role != key_role:
            raise _http_error(403, f"crew-budget: this API key is bound to role {key_role!r}; "
                                   f"it cannot spend as {client_role!r}. Use a key for that "
                                   "role.")
        role = key_role
    else:
        role = client_role or logger.role or ""
    if not role:
        raise _http_error(400, f"crew-budget: this request names no agent role; send the "
                               f"{logger.role_header} header (or use a key whose metadata "
                               f"has {ROLE_KEY!r})")
    cfg = logger.guard.config
    if role not in cfg.roles and cfg.default_role is None:
        known = ", ".join(sorted(cfg.roles)) or "none"
        raise _http_error(400, f"crew-budget: unknown role {role!r} (configured roles: "
                               f"{known}); budgets are only set in the budget YAML")
    return role


def _priced_model(logger: BudgetLogger, public: str) -> str:
    """The model to price: the public name if priced, else its deployment's model."""
    try:
        logger.guard.prices.get(public)
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
                logger.guard.prices.get(name)
            except PricingError:
                continue
            return name
    return public


def pre_call(
    logger: BudgetLogger, user_api_key_dict: Any, data: dict[str, Any], call_type: Any
) -> dict[str, Any] | None:
    """Reserve one proxy request before routing, or reject it."""
    kind = getattr(call_type, "value", call_type)
    if kind not in _CHAT_CALLS:
        if logger.allow_unbudgeted_routes:
            log.warning("crew-budget: %s request passed through UNBUDGETED "
                        "(allow_unbudgeted_routes)", kind)
            return None
        raise _http_error(400, f"crew-budget: {kind} requests cannot be budgeted, so this proxy "
                               "refuses them; use /chat/completions, or set "
                               "CREW_BUDGET_ALLOW_UNBUDGETED_ROUTES=1 to let them through "
                               "unbudgeted")
    role = resolve_role(logger, user_api_key_dict, data)
    call_id = data.get("litellm_call_id")
    if not isinstance(call_id, str) or not call_id:
        call_id = data["litellm_call_id"] = str(uuid.uuid4())
    meta = data.get("metadata")
    if not isinstance(meta, dict):
        meta = data["metadata"] = {}
    meta[ROLE_KEY] = role  # the role actually charged, whatever the client sent
    model = _priced_model(logger, str(data.get("model") or ""))
    try:
        logger.reserve(call_id, role, data, "proxy", model=model)
    except UnknownModelError as exc:
        raise _http_error(500, f"crew-budget: {exc}") from None
    except LedgerUnavailable as exc:
        raise _http_error(503, f"crew-budget: {exc}") from None
    except ConfigError as exc:
        raise _http_error(400, f"crew-budget: {exc}") from None
    return data
