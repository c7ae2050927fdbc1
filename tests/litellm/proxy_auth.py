"""Custom auth for the proxy under test: virtual keys with metadata, without a database.

Real deployments create keys with ``POST /key/generate`` (``metadata:
{"crew_budget_role": ...}``), which needs the proxy's Postgres database. The
test proxy has none, so this module (copied next to the generated config and
named in ``general_settings.custom_auth``) returns the same ``UserAPIKeyAuth``
the proxy would build from such a key: the role lives in ``metadata``, set by
the admin, not by the request.

A custom auth replaces the proxy's own, master key included, so the master
key is answered here the way litellm 1.110 answers it
(``user_api_key_auth_builder``: ``api_key=LITELLM_PROXY_MASTER_KEY_ALIAS``,
``user_role=PROXY_ADMIN``, ``user_id=litellm_proxy_admin_name``).
"""

from __future__ import annotations

import os

from fastapi import HTTPException, Request
from litellm.constants import LITELLM_PROXY_ADMIN_NAME, LITELLM_PROXY_MASTER_KEY_ALIAS
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth

KEYS = {
    "sk-agent-open": {},  # a key with no role: the request must name one
    "sk-agent-writer": {"crew_budget_role": "writer"},  # bound to the writer role
}


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    key = api_key.removeprefix("Bearer ").strip()
    if key and key == os.environ.get("LITELLM_MASTER_KEY"):
        return UserAPIKeyAuth(api_key=LITELLM_PROXY_MASTER_KEY_ALIAS,
                              user_role=LitellmUserRoles.PROXY_ADMIN,
                              user_id=LITELLM_PROXY_ADMIN_NAME)
    if key not in KEYS:
        raise HTTPException(status_code=401, detail="unknown test key")
    return UserAPIKeyAuth(api_key=key, key_alias=key, user_role=LitellmUserRoles.INTERNAL_USER,
                          metadata=dict(KEYS[key]))
