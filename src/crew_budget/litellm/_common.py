"""Names the SDK logger and the proxy gate share (kept here so neither imports the other).

``_logger`` (the ``CustomLogger``) imports ``_proxy`` (the proxy's trust
rules); ``_proxy`` imports only this module and the core, never ``_logger``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["CHAT_CALLS", "RESERVATION_KEY", "ROLE_KEY", "Origin", "reservation_key"]

ROLE_KEY = "crew_budget_role"
"""Request metadata key naming the role: ``metadata={"crew_budget_role": "researcher"}``."""

RESERVATION_KEY = "crew_budget_reservation"
"""Request metadata key carrying the logger's own key for one reservation.

Why not ``litellm_call_id``: the LiteLLM proxy copies a client's
``x-litellm-call-id`` header into it, so two requests can share one id and
one would overwrite the other's reservation (one of them then goes
unbilled). This key is a fresh ``uuid4`` made by the logger when it
reserves, written into the request's metadata (which litellm hands back to
every closing hook) and overwritten whatever the client sent.
"""

# Call types whose requests we can price (chat-style messages).
CHAT_CALLS = frozenset({"completion", "acompletion"})

Origin = Literal["sdk", "proxy"]


def reservation_key(kwargs: Any) -> str | None:
    """The logger's reservation key in a request or in litellm's logging kwargs.

    Request kwargs carry it in ``metadata`` (or ``litellm_metadata``);
    litellm's success/failure payloads carry the request's metadata under
    ``litellm_params``.
    """
    if not isinstance(kwargs, Mapping):
        return None
    sources: list[Any] = [kwargs.get("metadata"), kwargs.get("litellm_metadata")]
    params = kwargs.get("litellm_params")
    if isinstance(params, Mapping):
        sources += [params.get("metadata"), params.get("litellm_metadata")]
    for meta in sources:
        if isinstance(meta, Mapping):
            value = meta.get(RESERVATION_KEY)
            if isinstance(value, str) and value:
                return value
    return None
