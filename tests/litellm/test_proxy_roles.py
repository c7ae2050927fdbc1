"""The proxy's role rules, case by case, in the proxy's own environment.

``test_proxy.py`` drives a real proxy with one configuration; the rules
for the other settings (the master key allowed to name roles, ``*``, a
default role, admin users' keys) are checked here against litellm's real
``UserAPIKeyAuth`` and fastapi's ``HTTPException``, which only the proxy
environment has, so the table runs in a subprocess of that Python.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.litellm_proxy import proxy_python

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import json, sys
from fastapi import HTTPException
from litellm.constants import LITELLM_PROXY_MASTER_KEY_ALIAS
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth
from crew_budget.config import BudgetConfig
from crew_budget.litellm._proxy import ProxyPolicy, resolve_role

config = BudgetConfig.model_validate({
    "roles": {"researcher": {"daily": "1"}, "writer": {"daily": "1"}},
    "default_role": {"daily": "0.5"},
})
KEYS = {
    "master": UserAPIKeyAuth(api_key=LITELLM_PROXY_MASTER_KEY_ALIAS,
                             user_role=LitellmUserRoles.PROXY_ADMIN),
    "admin-user": UserAPIKeyAuth(api_key="hashed-admin", user_role=LitellmUserRoles.PROXY_ADMIN),
    "open": UserAPIKeyAuth(api_key="hashed-open", user_role=LitellmUserRoles.INTERNAL_USER),
    "ghost": UserAPIKeyAuth(api_key="hashed-ghost", user_role=LitellmUserRoles.INTERNAL_USER,
                            metadata={"crew_budget_role": "ghost"}),
}
out = []
for policy_args, key, named in json.loads(sys.stdin.read()):
    policy = ProxyPolicy.build(config, role_header="x-crew-budget-role",
                               allow_unbudgeted_routes=False, **policy_args)
    data = {"metadata": {"headers": {"x-crew-budget-role": named}} if named else {}}
    try:
        out.append(["ok", resolve_role(policy, config, KEYS[key], data)])
    except HTTPException as exc:
        out.append([exc.status_code, exc.detail])
print(json.dumps(out))
'''

LISTED = {"header_roles": "researcher", "master_key_names_roles": False, "default_role": None}
MASTER_OK = {**LISTED, "master_key_names_roles": True}
EVERY = {**LISTED, "header_roles": "*"}
DEFAULT = {**LISTED, "default_role": "writer"}

CASES = [
    # (policy, key, role named by header, expected status or "ok", role or message part)
    (LISTED, "master", "researcher", 403, "the master key (or a proxy-admin key) cannot name"),
    (LISTED, "admin-user", "researcher", 403, "the master key (or a proxy-admin key) cannot"),
    (MASTER_OK, "master", "researcher", "ok", "researcher"),
    (MASTER_OK, "master", "writer", 403, "requests may not name role 'writer' themselves "
                                         "(roles a request may name: researcher)"),
    (LISTED, "open", "researcher", "ok", "researcher"),
    (LISTED, "open", "writer", 403, "requests may not name role 'writer' themselves"),
    (EVERY, "open", "writer", "ok", "writer"),
    (EVERY, "open", "ceo", 400, "unknown role 'ceo' (configured roles: researcher, writer)"),
    (LISTED, "open", None, 400, "this request names no agent role"),
    (DEFAULT, "open", None, "ok", "writer"),
    (DEFAULT, "master", None, "ok", "writer"),
    (DEFAULT, "open", "ceo", 400, "unknown role 'ceo'"),
    # a key the admin bound to a role the YAML does not list: the admin's choice,
    # charged under default_role; the request cannot move it elsewhere
    (LISTED, "ghost", None, "ok", "ghost"),
    (LISTED, "ghost", "researcher", 403, "this API key is bound to role 'ghost'"),
]


def test_role_rules_table() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "HF_HUB_OFFLINE": "1"}
    table = [[policy, key, named] for policy, key, named, _, _ in CASES]
    done = subprocess.run([str(proxy_python()), "-c", SCRIPT], input=json.dumps(table),
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == len(CASES) == 14
    for (policy, key, named, status, expected), (got_status, got) in zip(CASES, results,
                                                                          strict=True):
        case = f"{policy} {key} {named!r}"
        assert got_status == status, f"{case}: {got_status} {got}"
        if status == "ok":
            assert got == expected, case
        else:
            assert expected in got, f"{case}: {got}"
