"""A table of malformed budget files, each with the exact error it must give.

Issue 9 found mistakes that loaded silently (a duplicate key winning, an
empty file meaning "no limits", hourly above daily, a 150 % threshold) or
gave raw tracebacks (a binary file, a directory, ``daily: 1e30``, limits
Redis cannot compare exactly). Every row below is a file a person could
really write; each must fail at load with a ``ConfigError`` whose key path
and message are exactly the ones listed (file-level rows carry the line),
``crew-budget validate`` must exit 2 with the same message, and the shipped
JSON Schema must reject the row too unless the rule is one JSON Schema cannot
express (marked ``schema=False``: YAML-level, cross-field and file checks).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from crew_budget import ConfigError, load_config
from crew_budget.cli import app

SCHEMA = Path(__file__).resolve().parents[2] / "src" / "crew_budget" / "budgets.schema.json"
DUP = "YAML would silently keep only the last one, so merge them into one entry"
EMPTY = ("the file is empty (or only comments), which would mean no budgets at all; write at "
         "least one of roles:, default_role:, crew: or global: (see examples/budgets.yaml)")
OVER_MAX = ("is above the maximum of $1,000,000; limits are kept in nano-dollars that the "
            "Redis ledger compares exactly only below 2**53; use at most 1000000 (split larger "
            "budgets across roles or windows)")
NOT_AMOUNT = 'write a dollar amount such as 5 or "5.00"'
NEVER_FIRES = "spend stops at the limit, so it would never fire; use e.g. [50, 80, 100]"
ROLE_KEYS = ("a role takes hourly, daily, monthly, per_run, max_output_tokens, aliases, models, "
             "on_exceed and exact_count")
MODEL_KEYS = "a model budget takes hourly, daily, monthly, per_run and exact_count"
SPACED_MODEL = ("is blank or contains whitespace, so it would match no call; write the model as "
                "your code names it, e.g. gpt-4o or openai/gpt-4o")
POLICY_FIX = ("write stop, end_task, shadow, or {downgrade: [gpt-4o-mini]} (cheaper models to "
              "try in order)")
COLLIDE = "(roles match ignoring case and extra whitespace); give each role distinct names"


@dataclass(frozen=True)
class Case:
    id: str
    text: str | bytes
    path: str
    detail: str
    line: int | None = None  # the line the message names, for file-level mistakes
    schema: bool = True  # the JSON Schema rejects it too

    def __str__(self) -> str:
        return self.id


CASES = [
    # -- duplicate keys: YAML keeps the last one silently --------------------------
    Case("two-roles-blocks", "roles:\n  researcher: {daily: 1}\ncrew: {name: t, daily: 5}\n"
         "roles:\n  writer: {daily: 2}\n", "roles",
         f"line 4: duplicate key 'roles' (first set on line 1); {DUP}", 4, schema=False),
    Case("daily-then-daily", "roles:\n  researcher:\n    daily: 1\n    daily: 100\n",
         "roles.researcher.daily",
         f"line 4: duplicate key 'daily' (first set on line 3); {DUP}", 4, schema=False),
    Case("role-listed-twice", "roles:\n  researcher: {daily: 1}\n  researcher: {daily: 50}\n",
         "roles.researcher",
         f"line 3: duplicate key 'researcher' (first set on line 2); {DUP}", 3, schema=False),
    Case("duplicate-in-flow-mapping", "roles:\n  researcher: {daily: 1, hourly: 0.5, daily: 100}\n",
         "roles.researcher.daily",
         f"line 2: duplicate key 'daily' (first set on line 2); {DUP}", 2, schema=False),
    Case("two-crews", "crew: {name: a, daily: 1}\ncrew: {name: b, daily: 9}\nroles: {r: {}}\n",
         "crew", f"line 2: duplicate key 'crew' (first set on line 1); {DUP}", 2, schema=False),
    Case("price-twice", "roles: {r: {}}\nprices:\n  m: {input_per_million: 1, "
         "output_per_million: 2}\n  m: {input_per_million: 0, output_per_million: 0}\n",
         "prices.m", f"line 4: duplicate key 'm' (first set on line 3); {DUP}", 4, schema=False),
    Case("sink-type-twice", "roles: {r: {}}\nalerts:\n  sinks:\n    - type: log\n"
         "      type: webhook\n", "alerts.sinks.0.type",
         f"line 5: duplicate key 'type' (first set on line 4); {DUP}", 5),
    Case("fail-open-twice", "fail_open: false\nroles: {r: {daily: 1}}\nfail_open: true\n",
         "fail_open", f"line 3: duplicate key 'fail_open' (first set on line 1); {DUP}", 3,
         schema=False),
    # -- the file itself ----------------------------------------------------------
    Case("empty-file", "", "", EMPTY),
    Case("only-comments", "# budgets go here\n\n", "", EMPTY),
    Case("only-document-markers", "---\n...\n", "", EMPTY),
    Case("binary-file", b"roles:\x00\x01\x02", "",
         "is not a text file (a NUL byte at offset 6); pass the budget YAML", schema=False),
    Case("latin-1-file", "roles:\n  r: {daily: 1}\n  caf\xe9: {daily: 1}\n".encode("latin-1"),
         "", "line 3: is not UTF-8 text (byte 0xe9 at offset 28); save the file as UTF-8", 3,
         schema=False),
    Case("huge-file", "# padding\n" * 110_000, "",
         "is larger than 1,048,576 bytes; a budget YAML is a few kilobytes, so this is "
         "probably the wrong file"),
    Case("alias-bomb", "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['x'] * 9)}]\n"
        for p, n in zip(["", "a", "b", "c", "d", "e"], "abcdef", strict=True))
         + "roles: {r: {}}\n", "f",
         "line 6: expands to more than 100,000 values (YAML anchors and aliases included); "
         "a budget file needs far fewer", 6),
    Case("runaway-brackets", "[" * 50_000 + "]" * 50_000, "",
         "is nested too deeply to be a budget file; check for runaway brackets", schema=False),
    Case("top-level-list", "- researcher\n- writer\n", "",
         "the top level must be a mapping (roles:, crew:, ...), not list"),
    Case("top-level-word", "researcher\n", "",
         "the top level must be a mapping (roles:, crew:, ...), not str"),
    Case("unclosed-brace", "roles:\n  r: {daily: 5\n", "",
         "line 3, column 1: not valid YAML (expected ',' or '}', but got '<stream end>'); fix "
         "the syntax there", 3, schema=False),
    Case("two-documents", "roles: {r: {daily: 1}}\n---\nroles: {w: {daily: 1}}\n", "",
         "line 2, column 1: not valid YAML (but found another document); fix the syntax there",
         2, schema=False),
    Case("tab-indent", "roles:\n\tr: {daily: 1}\n", "",
         "line 2, column 1: not valid YAML (found character '\\t' that cannot start any "
         "token); fix the syntax there", 2, schema=False),
    Case("undefined-anchor", "roles: {r: *missing}\n", "",
         "line 1, column 12: not valid YAML (found undefined alias 'missing'); fix the syntax "
         "there", 1, schema=False),
    # -- amounts ------------------------------------------------------------------
    Case("negative-budget", "roles: {r: {daily: -1}}\n", "roles.r.daily",
         "budget -1 is negative; use 0 to block all calls or a positive amount"),
    Case("quoted-negative", "roles: {r: {daily: \"-0.50\"}}\n", "roles.r.daily",
         "budget '-0.50' is negative; use 0 to block all calls or a positive amount"),
    Case("1e30-dollars", "roles: {r: {daily: 1e30}}\n", "roles.r.daily",
         f"budget '1e30' {OVER_MAX}"),
    Case("2-pow-53-nano", "roles: {r: {daily: 9007199.25}}\n", "roles.r.daily",
         f"budget 9007199.25 {OVER_MAX}"),
    Case("a-cent-over-max", "crew: {name: t, daily: \"1000000.01\"}\nroles: {r: {}}\n",
         "crew.daily", f"budget '1000000.01' {OVER_MAX}"),
    Case("monthly-over-max", "global: {monthly: 5000000}\nroles: {r: {}}\n", "global.monthly",
         f"budget 5000000 {OVER_MAX}"),
    Case("word-for-money", "roles: {r: {daily: lots}}\n", "roles.r.daily",
         "'lots' is not a dollar amount (write e.g. 5 or \"5.00\")"),
    Case("infinity", "roles: {r: {daily: .inf}}\n", "roles.r.daily",
         f"inf is not a finite dollar amount; {NOT_AMOUNT}"),
    Case("not-a-number", "roles: {r: {daily: .nan}}\n", "roles.r.daily",
         f"nan is not a finite dollar amount; {NOT_AMOUNT}", schema=False),
    Case("yes-for-money", "roles: {r: {daily: yes}}\n", "roles.r.daily",
         f"True is not a dollar amount; {NOT_AMOUNT}"),
    Case("finer-than-nano", "roles: {r: {daily: 0.0000000001}}\n", "roles.r.daily",
         "1e-10 is finer than one nano-dollar (1e-9)",
         schema=False),  # a number's decimals are beyond JSON Schema (strings: 9 at most)
    Case("list-for-money", "roles: {r: {daily: [1, 2]}}\n", "roles.r.daily",
         f"[1, 2] (list) is not a dollar amount; {NOT_AMOUNT}"),
    # -- windows out of order -------------------------------------------------------
    Case("hourly-above-daily", "roles: {r: {hourly: 50, daily: 5}}\n", "roles.r",
         "hourly $50 is more than daily $5, so the hourly limit could never apply; lower "
         "hourly to at most 5 or raise daily", schema=False),
    Case("daily-above-monthly", "roles: {r: {daily: 50, monthly: 20}}\n", "roles.r",
         "daily $50 is more than monthly $20, so the daily limit could never apply; lower "
         "daily to at most 20 or raise monthly", schema=False),
    Case("hourly-above-monthly", "roles: {r: {hourly: 30, monthly: 20}}\n", "roles.r",
         "hourly $30 is more than monthly $20, so the hourly limit could never apply; lower "
         "hourly to at most 20 or raise monthly", schema=False),
    Case("crew-hourly-above-daily", "crew: {name: t, hourly: 3, daily: 2}\nroles: {r: {}}\n",
         "crew", "hourly $3 is more than daily $2, so the hourly limit could never apply; "
         "lower hourly to at most 2 or raise daily", schema=False),
    Case("global-daily-above-monthly", "global: {daily: 40, monthly: 30}\nroles: {r: {}}\n",
         "global", "daily $40 is more than monthly $30, so the daily limit could never apply; "
         "lower daily to at most 30 or raise monthly", schema=False),
    Case("default-role-hourly-above-daily", "roles: {r: {}}\ndefault_role: {hourly: 2, daily: 1}\n",
         "default_role", "hourly $2 is more than daily $1, so the hourly limit could never "
         "apply; lower hourly to at most 1 or raise daily", schema=False),
    # -- token caps, lease, retention ----------------------------------------------------
    Case("zero-output-tokens", "roles: {r: {max_output_tokens: 0}}\n",
         "roles.r.max_output_tokens", "Input should be greater than or equal to 1 (got 0)"),
    Case("two-million-output-tokens", "roles: {r: {max_output_tokens: 2000000}}\n",
         "roles.r.max_output_tokens",
         "Input should be less than or equal to 1000000 (got 2000000)"),
    Case("fractional-output-tokens", "roles: {r: {max_output_tokens: 1.5}}\n",
         "roles.r.max_output_tokens",
         "Input should be a valid integer, got a number with a fractional part (got 1.5)"),
    Case("huge-default-output-tokens", "roles: {r: {}}\ndefault_max_output_tokens: 99999999999\n",
         "default_max_output_tokens",
         "Input should be less than or equal to 1000000 (got 99999999999)"),
    Case("zero-lease", "roles: {r: {}}\nlease_seconds: 0\n", "lease_seconds",
         "Input should be greater than or equal to 1 (got 0)"),
    Case("lease-over-a-day", "roles: {r: {}}\nlease_seconds: 100000\n", "lease_seconds",
         "Input should be less than or equal to 86400 (got 100000)"),
    Case("retention-breaks-redis", "roles: {r: {}}\nretention_days: 200000000000\n",
         "retention_days", "Input should be less than or equal to 3650 (got 200000000000)"),
    Case("negative-retention", "roles: {r: {}}\nretention_days: -1\n", "retention_days",
         "Input should be greater than or equal to 1 (got -1)"),
    Case("namespace-with-space", "roles: {r: {}}\nnamespace: my budgets\n", "namespace",
         "namespace 'my budgets' may use only letters, digits, '_', '.' and '-' (it is part "
         "of every ledger key); e.g. research-prod"),
    # -- roles -----------------------------------------------------------------------
    Case("role-without-s", "role:\n  r: {daily: 1}\n", "role",
         "unknown key 'role'; known keys: version, timezone, ledger, namespace, fail_open, "
         "on_ledger_reset, journal, lease_seconds, retention_days, records_retention_days, "
         "default_max_output_tokens, global, crew, roles, default_role, unknown_roles, "
         "crew_role, on_exceed, mode, prices, models, alerts, estimate_margin, "
         "exact_count_timeout"),
    Case("weekly-window", "roles: {r: {weekly: 5}}\n", "roles.r.weekly",
         f"unknown key 'weekly'; {ROLE_KEYS}"),
    Case("alias-names-another-role", "roles:\n  researcher: {daily: 1}\n"
         "  analyst: {daily: 1, aliases: [Researcher]}\n", "roles.analyst",
         f"alias 'Researcher' matches role 'researcher' too {COLLIDE}", schema=False),
    Case("roles-differ-in-case", "roles:\n  researcher: {daily: 1}\n  Researcher: {daily: 5}\n",
         "roles.Researcher", f"role 'Researcher' matches role 'researcher' too {COLLIDE}",
         schema=False),
    Case("roles-differ-in-spaces", "roles:\n  senior researcher: {daily: 1}\n"
         "  \"senior  researcher \": {daily: 5}\n", "roles.senior  researcher ",
         f"role 'senior  researcher ' matches role 'senior researcher' too {COLLIDE}",
         schema=False),
    Case("role-named-default-role", "roles:\n  default_role: {daily: 1}\n",
         "roles.default_role", "'default_role' is reserved for the default_role: budget; "
         "rename this role, or move its limits under default_role:", schema=False),
    Case("blank-role-name", "roles:\n  \"  \": {daily: 1}\n", "roles.  ",
         "a role name cannot be empty or blank; name the agent role, e.g. researcher",
         schema=False),
    Case("empty-role-name", "roles:\n  \"\": {daily: 1}\n", "roles.",
         "a role name cannot be empty or blank; name the agent role, e.g. researcher",
         schema=False),
    Case("blank-alias", "roles:\n  r: {aliases: [\" \"]}\n", "roles.r.aliases",
         "an alias cannot be empty or blank; remove it or write the agent's role name",
         schema=False),
    Case("alias-not-a-list", "roles:\n  r: {aliases: Senior Researcher}\n", "roles.r.aliases",
         "aliases is a list of names; write aliases: ['Senior Researcher']"),
    Case("aliases-on-default-role", "roles: {r: {}}\ndefault_role: {daily: 1, aliases: [x]}\n",
         "default_role.aliases", "unknown key 'aliases'; default_role takes hourly, daily, "
         "monthly, per_run, max_output_tokens, on_exceed and exact_count"),
    Case("default-role-and-allow", "roles: {r: {}}\ndefault_role: {daily: 1}\n"
         "unknown_roles: allow\n", "unknown_roles",
         "unknown_roles: allow and default_role: both say what happens to roles not listed; "
         "keep default_role: (they share its budget) or unknown_roles: allow (crew/global "
         "budgets only), not both", schema=False),
    Case("unknown-roles-typo", "roles: {r: {}}\nunknown_roles: maybe\n", "unknown_roles",
         "Input should be 'refuse' or 'allow' (got 'maybe')"),
    Case("role-with-nothing", "roles:\n  researcher:\n", "roles.researcher",
         "is empty; give it settings such as {daily: 5}, or {} for no limits of its own"),
    Case("roles-as-a-list", "roles:\n  - researcher\n  - writer\n", "roles",
         "Input should be a valid dictionary; write it as a mapping (researcher: {daily: 5}), "
         "not list"),
    # -- prices ---------------------------------------------------------------------
    Case("negative-price", "roles: {r: {}}\nprices: {m: {input_per_million: -1, "
         "output_per_million: 2}}\n", "prices.m.input_per_million",
         "price -1 is negative; use 0 to block all calls or a positive amount"),
    Case("price-per-token-not-per-million", "roles: {r: {}}\nprices: {m: {input_per_million: "
         "1, output_per_million: 20000}}\n", "prices.m.output_per_million",
         "price 20000 is above the maximum of $10,000; prices are USD per million tokens "
         "(e.g. 2.5 for $2.50/M); check the unit"),
    Case("price-without-output", "roles: {r: {}}\nprices: {m: {input_per_million: 1}}\n",
         "prices.m.output_per_million", "required key is missing; add it"),
    Case("unknown-provider", "roles: {r: {}}\nprices: {m: {input_per_million: 1, "
         "output_per_million: 2, provider: azure}}\n", "prices.m.provider",
         "Input should be 'openai', 'anthropic' or 'other' (got 'azure')"),
    # -- alerts ---------------------------------------------------------------------
    Case("threshold-150-percent", "roles: {r: {daily: 1}}\nalerts: {thresholds: [50, 150]}\n",
         "alerts.thresholds", f"threshold 150 is above 100 %: {NEVER_FIRES}"),
    Case("threshold-zero", "roles: {r: {daily: 1}}\nalerts: {thresholds: [0, 50]}\n",
         "alerts.thresholds",
         "threshold 0 is not a percentage of the limit; use e.g. [50, 80, 100]"),
    Case("threshold-for-misspelt-role", "roles: {researcher: {daily: 1}}\n"
         "alerts: {scope_thresholds: {\"role:reseacher\": [50]}}\n",
         "alerts.scope_thresholds.role:reseacher",
         "scope 'role:reseacher' is not a budget in this file (budgets: global, "
         "role:researcher); fix the name", schema=False),
    Case("scope-threshold-120", "roles: {researcher: {daily: 1}}\n"
         "alerts: {scope_thresholds: {\"role:researcher\": [120]}}\n",
         "alerts.scope_thresholds.role:researcher",
         f"threshold 120 is above 100 %: {NEVER_FIRES}"),
    # -- everything else ----------------------------------------------------------------
    Case("mars-time", "roles: {r: {}}\ntimezone: Mars/Olympus\n", "timezone",
         "unknown time zone 'Mars/Olympus'; use an IANA name such as 'Europe/Berlin' or 'UTC'",
         schema=False),
    Case("postgres-ledger", "roles: {r: {}}\nledger: postgres://db/budgets\n", "ledger",
         "ledger URL 'postgres://db/budgets' has unsupported scheme 'postgres'; use one of "
         "memory://, sqlite:///path/to/ledger.db, redis://host:6379/0, rediss://...",
         schema=False),
    Case("version-2", "version: 2\nroles: {r: {}}\n", "version", "Input should be 1 (got 2)"),
    Case("empty-crew-name", "crew: {name: \"\", daily: 1}\nroles: {r: {}}\n", "crew.name",
         "the crew name is empty; name the crew, e.g. name: research (got '')"),
    Case("crew-name-with-space", "crew: {name: \" team\", daily: 1}\nroles: {r: {}}\n",
         "crew.name", "crew name ' team' starts or ends with whitespace; write 'team'"),
    # -- per-run budgets and model budgets (issue 12) ---------------------------------
    Case("per-run-negative", "crew: {name: t, per_run: -2}\nroles: {r: {}}\n", "crew.per_run",
         "budget -2 is negative; use 0 to block all calls or a positive amount"),
    Case("per-run-with-dash", "roles: {r: {per-run: 1}}\n", "roles.r.per-run",
         f"unknown key 'per-run'; {ROLE_KEYS}"),
    Case("per-run-not-money", "default_role: {per_run: x1}\n", "default_role.per_run",
         "'x1' is not a dollar amount (write e.g. 5 or \"5.00\")"),
    Case("per-run-over-max", "global: {per_run: 2000000}\nroles: {r: {}}\n", "global.per_run",
         f"budget 2000000 {OVER_MAX}"),
    Case("per-run-on-crew-typo", "crew: {name: t, run: 2}\nroles: {r: {}}\n", "crew.run",
         "unknown key 'run'; use hourly, daily, monthly or per_run (crew also takes name)"),
    # -- on-exceed policies (issue 12 part 5) -----------------------------------------
    Case("on-exceed-typo", "roles: {r: {on_exceed: end-task}}\n", "roles.r.on_exceed",
         f"unknown on_exceed policy 'end-task'; did you mean 'end_task'? {POLICY_FIX}"),
    Case("on-exceed-unknown", "on_exceed: retry\nroles: {r: {}}\n", "on_exceed",
         f"unknown on_exceed policy 'retry'; {POLICY_FIX}"),
    Case("downgrade-as-word", "roles: {r: {on_exceed: downgrade}}\n", "roles.r.on_exceed",
         "on_exceed 'downgrade' needs the models to try; write on_exceed: {downgrade: "
         "[gpt-4o-mini]}"),
    Case("downgrade-model-as-word", "roles: {r: {on_exceed: {downgrade: gpt-4o-mini}}}\n",
         "roles.r.on_exceed", "downgrade is a list of models; write downgrade: [gpt-4o-mini]"),
    Case("downgrade-empty", "roles: {r: {on_exceed: {downgrade: []}}}\n", "roles.r.on_exceed",
         "downgrade needs at least one model to try; write downgrade: [gpt-4o-mini]"),
    Case("downgrade-spaced-model", "roles: {r: {on_exceed: {downgrade: [gpt 4o mini]}}}\n",
         "roles.r.on_exceed", "downgrade model 'gpt 4o mini' is not a model name (blank, "
         "spaced or not text); write the model as your code names it, e.g. gpt-4o-mini"),
    Case("downgrade-twice", "roles: {r: {on_exceed: {downgrade: [a, a]}}}\n",
         "roles.r.on_exceed", "downgrade lists a model twice (['a', 'a']); list each model "
         "once, dearest first"),
    Case("on-exceed-extra-key", "roles: {r: {on_exceed: {downgrade: [a], to: b}}}\n",
         "roles.r.on_exceed", f"on_exceed as a mapping takes only downgrade, not to; "
         f"{POLICY_FIX}"),
    Case("on-exceed-list", "roles: {r: {on_exceed: [stop]}}\n", "roles.r.on_exceed",
         f"on_exceed is list, not a policy; {POLICY_FIX}"),
    Case("mode-typo", "mode: shadowed\nroles: {r: {}}\n", "mode",
         "Input should be 'enforce' or 'shadow' (got 'shadowed')"),
    Case("on-exceed-on-crew", "crew: {name: t, on_exceed: stop}\nroles: {r: {}}\n",
         "crew.on_exceed",
         "unknown key 'on_exceed'; use hourly, daily, monthly or per_run (crew also takes name)"),
    Case("models-as-list", "models: [gpt-4o]\nroles: {r: {}}\n", "models",
         "Input should be a valid dictionary; write it as a mapping (gpt-4o: {daily: 10}), "
         "not list"),
    Case("role-models-as-word", "roles: {r: {models: gpt-4o}}\n", "roles.r.models",
         "Input should be a valid dictionary; write it as a mapping (gpt-4o: {daily: 10}), "
         "not str"),
    Case("model-weekly", "models: {gpt-4o: {weekly: 5}}\nroles: {r: {}}\n",
         "models.gpt-4o.weekly", f"unknown key 'weekly'; {MODEL_KEYS}"),
    Case("role-model-output-cap", "roles: {r: {models: {gpt-4o: {max_output_tokens: 5}}}}\n",
         "roles.r.models.gpt-4o.max_output_tokens",
         f"unknown key 'max_output_tokens'; {MODEL_KEYS}"),
    Case("model-hourly-over-daily", "models: {gpt-4o: {hourly: 5, daily: 1}}\nroles: {r: {}}\n",
         "models.gpt-4o", "hourly $5 is more than daily $1, so the hourly limit could never "
         "apply; lower hourly to at most 1 or raise daily", schema=False),
    Case("model-per-run-not-money", "models: {gpt-4o: {per_run: lots}}\nroles: {r: {}}\n",
         "models.gpt-4o.per_run", "'lots' is not a dollar amount (write e.g. 5 or \"5.00\")"),
    Case("model-name-with-space", "models: {\"gpt 4o\": {daily: 1}}\nroles: {r: {}}\n",
         "models.gpt 4o", f"model name 'gpt 4o' {SPACED_MODEL}", schema=False),
    Case("role-model-blank-name", "roles: {r: {models: {\" \": {daily: 1}}}}\n",
         "roles.r.models. ", f"model name ' ' {SPACED_MODEL}", schema=False),
    Case("fail-open-maybe", "roles: {r: {}}\nfail_open: maybe\n", "fail_open",
         "Input should be a valid boolean, unable to interpret input (got 'maybe')"),
    # Token and call limits (issue 12, item 3).
    Case("calls-as-number", "roles: {r: {calls: 500}}\n", "roles.r.calls",
         "calls takes windows, not int 500; write calls: {daily: 500} (hourly, daily, monthly "
         "or per_run)"),
    Case("tokens-as-list", "default_role: {output_tokens: [1000]}\n", "default_role.output_tokens",
         "output_tokens takes windows, not list [1000]; write output_tokens: {daily: 500} "
         "(hourly, daily, monthly or per_run)"),
    Case("calls-negative", "roles: {r: {calls: {daily: -1}}}\n", "roles.r.calls.daily",
         "limit -1 is negative; use 0 to block all calls or a positive count"),
    Case("tokens-window-typo", "roles: {r: {input_tokens: {dayly: 5}}}\n",
         "roles.r.input_tokens.dayly",
         "unknown key 'dayly'; did you mean 'daily'? input_tokens takes hourly, daily, monthly "
         "and per_run (whole counts), e.g. input_tokens: {daily: 500}"),
    Case("tokens-hourly-over-daily", "roles: {r: {input_tokens: {hourly: 10_000, daily: 5_000}}}\n",
         "roles.r.input_tokens", "hourly 10,000 is more than daily 5,000, so the hourly limit "
         "could never apply; lower hourly to at most 5000 or raise daily", schema=False),
    Case("calls-fraction", "crew: {name: c, calls: {per_run: 2.5}}\nroles: {r: {}}\n",
         "crew.calls.per_run",
         "2.5 is not a whole number of tokens or calls; write e.g. 500 or 2_000_000"),
    Case("tokens-with-suffix", "models: {gpt-4o: {output_tokens: {daily: 2M}}}\nroles: {r: {}}\n",
         "models.gpt-4o.output_tokens.daily",
         "'2M' is not a whole number of tokens or calls; write e.g. 500 or 2_000_000"),
    Case("calls-yes", "roles: {r: {calls: {daily: yes}}}\n", "roles.r.calls.daily",
         "True is not a whole number of tokens or calls; write e.g. 500 or 2_000_000"),
    Case("tokens-over-max", "global: {input_tokens: {monthly: 2_000_000_000_000}}\n",
         "global.input_tokens.monthly",
         "limit 2000000000000 is above the maximum of 1,000,000,000,000; counts are compared "
         "exactly only below 2**53, and no budget needs more than a trillion tokens per window"),
    Case("flat-daily-tokens", "roles: {r: {daily_tokens: 5}}\n", "roles.r.daily_tokens",
         f"unknown key 'daily_tokens'; {ROLE_KEYS}; token and call limits: input_tokens, "
         "output_tokens, calls (e.g. calls: {daily: 500})"),
    Case("threshold-for-unbudgeted-model", "models: {gpt-4o: {daily: 5}}\n"
         "roles: {r: {models: {gpt-4o-mini: {daily: 1}}}}\n"
         "alerts: {scope_thresholds: {\"model:gpt-4o-mni@role:r\": [50]}}\n",
         "alerts.scope_thresholds.model:gpt-4o-mni@role:r",
         "scope 'model:gpt-4o-mni@role:r' is not a budget in this file (budgets: global, "
         "model:gpt-4o, model:gpt-4o-mini@role:r, role:r); fix the name", schema=False),
    Case("threshold-for-a-model-without-a-name", "models: {gpt-4o: {daily: 5}}\n"
         "roles: {r: {}}\nalerts: {scope_thresholds: {\"model:\": [50]}}\n",
         "alerts.scope_thresholds",
         "'model:' is not a budget scope; write \"role:NAME\", \"crew:NAME\", "
         "\"model:MODEL\", \"model:MODEL@role:NAME\" or \"global\" (quoted in YAML)",
         schema=False),
    # -- estimate_margin / exact_count (issue 10, items 4 and 5) ---------------------
    Case("margin-quantile-low", "roles: {r: {}}\nestimate_margin: {quantile: 0.3}\n",
         "estimate_margin.quantile", "Input should be greater than or equal to 0.5 (got 0.3)"),
    Case("margin-max-above-one", "roles: {r: {}}\nestimate_margin: {max: 2}\n",
         "estimate_margin.max", "Input should be less than or equal to 1 (got 2)"),
    Case("margin-min-samples-over-history",
         "roles: {r: {}}\nestimate_margin: {min_samples: 600, history: 1000}\n",
         "estimate_margin", "min_samples 600 is more than half of history 1000, so the margin "
         "would switch off each time old samples are halved; raise history to at least 1200 or "
         "lower min_samples", schema=False),
    Case("margin-unknown-key", "roles: {r: {}}\nestimate_margin: {p: 0.95}\n",
         "estimate_margin.p", "unknown key 'p'; estimate_margin takes enabled, quantile, max, "
         "min_samples and history"),
    Case("exact-count-maybe", "roles: {r: {exact_count: maybe}}\n", "roles.r.exact_count",
         "Input should be a valid boolean, unable to interpret input (got 'maybe')"),
    Case("exact-count-timeout-zero", "roles: {r: {}}\nexact_count_timeout: 0\n",
         "exact_count_timeout", "Input should be greater than 0"),
]


def write(tmp_path: Path, case: Case) -> Path:
    path = tmp_path / "budgets.yaml"
    if isinstance(case.text, bytes):
        path.write_bytes(case.text)
    else:
        path.write_text(case.text, encoding="utf-8")
    return path


def test_the_table_has_at_least_fifty_distinct_mistakes() -> None:
    assert len(CASES) >= 50
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({c.text for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_malformed_config_fails_with_its_exact_error(tmp_path: Path, case: Case) -> None:
    file = write(tmp_path, case)
    with pytest.raises(ConfigError) as info:
        load_config(file)
    err = info.value
    assert (err.source, err.path, err.detail) == (str(file), case.path, case.detail)
    where = f"{file}: {case.path}: " if case.path else f"{file}: "
    assert str(err) == where + case.detail
    if case.line is not None:
        assert f"line {case.line}" in err.detail.split(":")[0]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_validate_exits_2_with_the_same_message(tmp_path: Path, case: Case) -> None:
    file = write(tmp_path, case)
    result = CliRunner().invoke(app, ["validate", str(file)])
    assert result.exit_code == 2
    where = f"{file}: {case.path}: " if case.path else f"{file}: "
    assert result.stderr.strip() == "crew-budget validate: error: " + " ".join(
        (where + case.detail).split())


def _schema_rejects(data: Any) -> bool:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    return not validator.is_valid(data)


@pytest.mark.parametrize("case", [c for c in CASES if isinstance(c.text, str)], ids=str)
def test_the_json_schema_agrees_where_json_schema_can_say_it(case: Case) -> None:
    try:
        data = yaml.safe_load(case.text)  # what an editor's YAML plugin would check
    except (yaml.YAMLError, RecursionError):
        assert not case.schema
        return
    assert _schema_rejects(data) is case.schema


def test_the_schema_accepts_the_boundaries_the_validator_accepts() -> None:
    good = {"roles": {"r": {"daily": 1_000_000, "hourly": "999999.999999999",
                            "max_output_tokens": 1_000_000, "aliases": ["R"]}},
            "default_role": {"daily": 0}, "lease_seconds": 86_400, "retention_days": 3_650,
            "default_max_output_tokens": 1, "unknown_roles": "refuse",
            "prices": {"m": {"input_per_million": "10000", "output_per_million": 0.000000001}},
            "alerts": {"thresholds": [1, 100]},
            "crew": {"name": "c", "per_run": 1_000_000},
            "models": {"openai/gpt-4o": {"per_run": "0.000000001", "daily": 5}}}
    good["roles"]["r"]["models"] = {"gpt-4o": {"hourly": 1, "per_run": 0}}
    assert not _schema_rejects(good)
    assert load_config(good).roles["r"].daily == 1_000_000
    schema = json.loads(SCHEMA.read_text())
    assert schema["$id"] == "https://crew-budget.dev/schemas/budgets.schema.json"
    assert not math.isnan(float(schema["$defs"]["Limits"]["properties"]["daily"]["anyOf"][0][
        "maximum"]))


@pytest.mark.parametrize("path", ["directory", "missing.yaml"])
def test_a_directory_or_a_missing_path_is_a_config_error(tmp_path: Path, path: str) -> None:
    target = tmp_path / path
    if path == "directory":
        target.mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(target)
    assert info.value.detail == {
        "directory": "is a directory, not a file; pass the budget YAML file inside it "
                     "(e.g. budgets.yaml)",
        "missing.yaml": "file not found; pass the path of your budget YAML (see "
                        "examples/budgets.yaml)",
    }[path]
