"""Every call is budgeted (invariant 9): roles resolve to a budget or are refused.

Issue 9 measured the holes this closes: ``preflight(role="reseacher")`` was
granted 1,000 calls against a config whose only role had $0.05, and
``"RESEARCHER"`` likewise. Prices here are overrides (``m``: $10 per million
output tokens, nothing for input), so a call reserved at ``max_tokens=1000``
is exactly $0.01 and the sums below are worked out by hand.
"""

from __future__ import annotations

import logging
import pickle
from decimal import Decimal
from typing import Any

import pytest

from crew_budget import (
    BudgetExceeded,
    ConfigError,
    CrewBudgetError,
    Guard,
    UnknownRoleError,
    load_config,
)
from crew_budget.config import DEFAULT_ROLE, MAX_LIMIT_USD

MSG = [{"role": "user", "content": "hello"}]
PRICES = {"m": {"input_per_million": 0, "output_per_million": 10}}  # $0.00001 per output token
CALL = Decimal("0.01")  # 1000 output tokens x $0.00001
ONE_ROLE: dict[str, Any] = {"roles": {"researcher": {"daily": "0.05"}}, "prices": PRICES}


def spent(guard: Guard) -> dict[str, tuple[Decimal, Decimal]]:
    """(spent, reserved) of every configured scope's day window."""
    return {s.scope: (s.spent, s.reserved) for s in guard.status() if s.window == "day"}


def settled(guard: Guard) -> list[Any]:
    """The ledger's spend records of calls that were sent (not the blocked ones)."""
    return [r for r in guard.ledger.records() if r.outcome == "settled"]


def call(guard: Guard, role: Any) -> None:
    ticket = guard.preflight(role, "m", MSG, max_tokens=1000)
    guard.settle(ticket, {"prompt_tokens": 3, "completion_tokens": 1000})


# -- the misspelt role -----------------------------------------------------------


def test_a_misspelt_role_is_refused_a_thousand_times_and_nothing_is_charged() -> None:
    guard = Guard(ONE_ROLE, "memory://")
    refused = 0
    for _ in range(1000):  # issue 9: 1,000 calls ($11.10) were granted
        with pytest.raises(UnknownRoleError) as info:
            guard.preflight("reseacher", "m", MSG, max_tokens=1000)
        refused += 1
    assert refused == 1000
    err = info.value
    assert isinstance(err, CrewBudgetError) and isinstance(err, LookupError)
    assert (err.role, err.configured, err.suggestion) == ("reseacher", ("researcher",),
                                                          "researcher")
    assert str(err) == (
        "unknown role 'reseacher': it matches no budget under roles: (configured roles: "
        "researcher; closest match: 'researcher'), so the call was not sent rather than run "
        "without a role budget. Roles match exactly, or ignoring case and extra whitespace. "
        "Fix: use a configured role name, add 'reseacher' under roles: (or, if it is the same "
        "agent, as an alias: `researcher: {aliases: ['reseacher']}`), set default_role: to "
        "budget every role not listed, or set unknown_roles: allow to charge unlisted roles to "
        "the crew and global budgets only."
    )
    assert spent(guard) == {"role:researcher": (Decimal(0), Decimal(0))}
    assert guard.ledger.records() == []
    # The real role still has its whole $0.05: five calls, and the sixth is over.
    for _ in range(5):
        call(guard, "researcher")
    with pytest.raises(BudgetExceeded):
        guard.preflight("researcher", "m", MSG, max_tokens=1000)
    assert spent(guard) == {"role:researcher": (Decimal("0.05"), Decimal(0))}


def test_unknown_role_error_pickles_with_its_facts() -> None:
    err = UnknownRoleError("Senior Researcher", configured=("researcher", "writer"),
                           suggestion="researcher")
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is UnknownRoleError
    assert (clone.role, clone.configured, clone.suggestion, str(clone)) == (
        "Senior Researcher", ("researcher", "writer"), "researcher", str(err))


def test_closest_match_finds_the_role_inside_a_longer_name() -> None:
    cfg = load_config({"roles": {"researcher": {}, "writer": {}}})
    assert cfg.closest_role("Senior Researcher") == "researcher"
    assert cfg.closest_role("content_writer_v2") == "writer"
    assert cfg.closest_role("accountant") is None
    with pytest.raises(UnknownRoleError) as info:
        cfg.resolve_role("accountant")
    assert "configured roles: researcher, writer), so" in str(info.value)
    assert "alias" not in str(info.value).split("Fix:")[1].split("set default_role")[0]


# -- matching: case, whitespace, aliases ----------------------------------------------


@pytest.mark.parametrize("name", ["RESEARCHER", " researcher ", "Researcher", "\trEsEaRcHeR\n"])
def test_case_and_whitespace_variants_are_charged_to_the_configured_role(name: str) -> None:
    guard = Guard(ONE_ROLE, "memory://")
    ticket = guard.preflight(name, "m", MSG, max_tokens=1000)
    assert ticket.role == "researcher"
    assert ticket.metadata["requested_role"] == name
    guard.settle(ticket, {"prompt_tokens": 3, "completion_tokens": 1000})
    for _ in range(4):
        call(guard, name)
    with pytest.raises(BudgetExceeded) as info:  # the variants share researcher's $0.05
        guard.preflight("researcher", "m", MSG, max_tokens=1000)
    assert (info.value.scope, info.value.spent) == ("role:researcher", Decimal("0.05"))
    assert [r.role for r in settled(guard)] == ["researcher"] * 5
    assert settled(guard)[0].metadata["requested_role"] == name


def test_the_exact_name_carries_no_requested_role() -> None:
    guard = Guard(ONE_ROLE, "memory://")
    ticket = guard.preflight("researcher", "m", MSG, max_tokens=1000)
    assert "requested_role" not in ticket.metadata


def test_an_alias_is_charged_to_its_role() -> None:
    config = {"roles": {"researcher": {"daily": "0.05", "aliases": ["Senior Researcher"]},
                        "writer": {"daily": 1}}, "prices": PRICES}
    guard = Guard(config, "memory://")
    call(guard, "Senior Researcher")
    call(guard, "senior   RESEARCHER")
    assert spent(guard) == {"role:researcher": (Decimal("0.02"), Decimal(0)),
                            "role:writer": (Decimal(0), Decimal(0))}
    assert guard.config.match_role("SENIOR researcher") == "researcher"


def test_blank_and_missing_roles_are_refused_even_with_a_default_role() -> None:
    config = {**ONE_ROLE, "default_role": {"daily": 1}, "crew": {"name": "t", "daily": 1}}
    guard = Guard(config, "memory://")
    for bad in (None, "", "   "):
        with pytest.raises(UnknownRoleError) as info:
            guard.preflight(bad, "m", MSG, max_tokens=1000)  # type: ignore[arg-type]
        assert str(info.value) == (
            f"this LLM call names no agent role (got {bad!r}), so no role budget can be "
            "charged and it was not sent. Fix: pass the role whose budget it spends, e.g. "
            "role='researcher', a name listed under roles: in your budget YAML.")
    allow = Guard({**ONE_ROLE, "unknown_roles": "allow"}, "memory://")
    with pytest.raises(UnknownRoleError, match="names no agent role"):
        allow.preflight("", "m", MSG, max_tokens=1000)
    assert all(v == (0, 0) for v in spent(guard).values())
    assert guard.ledger.records() == []


def test_a_config_without_roles_refuses_every_role() -> None:
    guard = Guard({"crew": {"name": "t", "daily": 1}, "prices": PRICES}, "memory://")
    with pytest.raises(UnknownRoleError, match=r"configured roles: none\)"):
        guard.preflight("researcher", "m", MSG, max_tokens=1000)


# -- default_role and unknown_roles: allow --------------------------------------------


def test_unlisted_roles_share_the_one_default_role_budget() -> None:
    config = {**ONE_ROLE, "default_role": {"daily": "0.02"}}
    guard = Guard(config, "memory://")
    ticket = guard.preflight("intern", "m", MSG, max_tokens=1000)
    assert ticket.role == DEFAULT_ROLE and ticket.metadata["requested_role"] == "intern"
    guard.settle(ticket, {"prompt_tokens": 3, "completion_tokens": 1000})
    call(guard, "auditor")
    with pytest.raises(BudgetExceeded) as info:  # a third name gets no fresh budget
        guard.preflight("yet-another-name", "m", MSG, max_tokens=1000)
    assert (info.value.scope, info.value.limit, info.value.spent) == (
        "role:default_role", Decimal("0.02"), Decimal("0.02"))
    assert spent(guard) == {"role:researcher": (Decimal(0), Decimal(0)),
                            "role:default_role": (Decimal("0.02"), Decimal(0))}
    records = settled(guard)
    assert [(r.role, r.metadata.get("requested_role")) for r in records] == [
        (DEFAULT_ROLE, "intern"), (DEFAULT_ROLE, "auditor")]


def test_unknown_roles_allow_is_logged_and_charges_crew_and_global_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = {**ONE_ROLE, "unknown_roles": "allow", "crew": {"name": "team", "daily": "0.03"},
              "global": {"daily": "0.10"}}
    guard = Guard(config, "memory://")
    with caplog.at_level(logging.WARNING, logger="crew_budget"):
        call(guard, "ghost")
        call(guard, "ghost")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["crew-budget: role 'ghost' matches no budget under roles:; "
                        "unknown_roles: allow charges its calls to the crew and global "
                        "budgets only"]  # once per name, not per call
    assert spent(guard) == {"role:researcher": (Decimal(0), Decimal(0)),
                            "crew:team": (Decimal("0.02"), Decimal(0)),
                            "global": (Decimal("0.02"), Decimal(0))}
    call(guard, "ghost")
    with pytest.raises(BudgetExceeded) as info:
        guard.preflight("ghost", "m", MSG, max_tokens=1000)
    assert info.value.scope == "crew:team"
    assert [r.role for r in settled(guard)] == ["ghost"] * 3


def test_a_role_added_in_code_takes_effect_over_the_cached_resolution() -> None:
    config = {**ONE_ROLE, "unknown_roles": "allow", "crew": {"name": "team", "daily": 1}}
    guard = Guard(config, "memory://")
    call(guard, "newbie")  # crew only
    guard.limit_role("newbie", daily_usd="0.01")
    call(guard, "newbie")
    with pytest.raises(BudgetExceeded) as info:
        guard.preflight("newbie", "m", MSG, max_tokens=1000)
    assert (info.value.scope, info.value.spent) == ("role:newbie", Decimal("0.01"))
    assert spent(guard)["crew:team"] == (Decimal("0.02"), Decimal(0))


def test_status_lists_the_default_role_and_resolves_a_named_role() -> None:
    guard = Guard({**ONE_ROLE, "default_role": {"daily": 1}}, "memory://")
    assert [s.scope for s in guard.status() if s.window == "day"] == [
        "role:researcher", "role:default_role"]
    assert [s.scope for s in guard.status("RESEARCHER")] == ["role:researcher"]
    assert [s.scope for s in guard.status("intern")] == ["role:default_role"]
    strict = Guard(ONE_ROLE, "memory://")
    with pytest.raises(UnknownRoleError):
        strict.status("intern")


def test_estimate_matches_roles_but_refuses_nothing() -> None:
    guard = Guard({"roles": {"researcher": {"max_output_tokens": 256}},
                   "default_max_output_tokens": 1000, "prices": PRICES}, "memory://")
    assert guard.estimate("RESEARCHER", "m", MSG).output_tokens_reserved == 256
    est = guard.estimate("nobody", "m", MSG)  # reserves nothing, so it is not refused
    assert (est.output_tokens_reserved, est.amount) == (1000, CALL)


# -- limits set in code ---------------------------------------------------------------


def test_code_limits_tighten_the_matched_role_and_obey_the_bounds() -> None:
    guard = Guard(ONE_ROLE, "memory://")
    guard.limit_role(" RESEARCHER", daily_usd="0.01")
    assert list(guard.config.roles) == ["researcher"]
    assert guard.config.roles["researcher"].daily == CALL
    with pytest.raises(ConfigError) as info:
        guard.limit_role("researcher", daily_usd=2_000_000)
    assert str(info.value) == (
        "limits set in code: researcher: daily_usd: budget 2000000 is above the maximum of "
        "$1,000,000; limits are kept in nano-dollars that the Redis ledger compares exactly "
        "only below 2**53; use at most 1000000 (split larger budgets across roles or windows)")
    with pytest.raises(ConfigError, match=r"hourly_usd: budget -1 is negative"):
        guard.limit_role("researcher", hourly_usd=-1)
    with pytest.raises(ConfigError, match="max_output_tokens must be a whole number from 1 to "
                                          "1,000,000, got 0"):
        guard.limit_role("researcher", max_output_tokens=0)
    with pytest.raises(ConfigError, match="limits need a role name, got ''"):
        guard.limit_role("", daily_usd=1)
    with pytest.raises(ConfigError, match=r"researcher: hourly \$1 is more than daily \$0.01"):
        guard.limit_role("researcher", hourly_usd=1)
    assert guard.config.roles["researcher"].daily == CALL  # nothing half-applied


def test_code_limits_on_default_role_tighten_it() -> None:
    guard = Guard({**ONE_ROLE, "default_role": {"daily": 1}}, "memory://")
    guard.limit_role("default_role", daily_usd="0.5")
    assert guard.config.default_role is not None
    assert guard.config.default_role.daily == Decimal("0.5")
    assert list(guard.config.roles) == ["researcher"]


# -- the largest limit works on every ledger, Redis included ------------------------------


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
def test_the_maximum_limit_reserves_and_settles_exactly(
    backend: str, request: pytest.FixtureRequest, tmp_path: Any
) -> None:
    url = {"memory": lambda: "memory://",
           "sqlite": lambda: f"sqlite:///{tmp_path}/ledger.db",
           "redis": lambda: request.getfixturevalue("redis_url")}[backend]()
    config = {"roles": {"researcher": {"daily": str(MAX_LIMIT_USD), "hourly": "999999.99"}},
              "namespace": f"max-{backend}", "prices": PRICES}
    with Guard(config, url) as guard:
        call(guard, "researcher")
        day = {s.window: s for s in guard.status()}
        assert day["day"].limit == Decimal(1_000_000)
        assert day["day"].remaining == Decimal("999999.99")
        assert day["hour"].remaining == Decimal("999999.98")
    with pytest.raises(ConfigError, match=r"roles.researcher.daily: budget '1000000.000000001' "
                                          r"is above the maximum of \$1,000,000"):
        load_config({"roles": {"researcher": {"daily": "1000000.000000001"}}})


def test_crew_role_without_its_own_budget_is_charged_to_the_crew_budget_only() -> None:
    # Calls a crew makes for itself (planning, guardrails, the manager's
    # converter) are charged to crew_role; with no roles.crew they use the
    # crew's own budget: $0.03 a day here, so the fourth $0.01 call is refused.
    cfg = {**ONE_ROLE, "crew": {"name": "team", "daily": "0.03"}}
    guard = Guard(cfg, "memory://")
    for _ in range(3):
        call(guard, "Crew")  # matched like any role: case and spaces ignored
    with pytest.raises(BudgetExceeded) as info:
        call(guard, "crew")
    assert info.value.scope == "crew:team"
    assert spent(guard) == {"role:researcher": (Decimal(0), Decimal(0)),
                            "crew:team": (3 * CALL, Decimal(0))}
    assert {r.role for r in settled(guard)} == {"crew"}
    # A crew_role renamed in the YAML works the same, and "crew" is then unknown.
    renamed = Guard({**cfg, "crew_role": "overhead"}, "memory://")
    call(renamed, "overhead")
    with pytest.raises(UnknownRoleError):
        call(renamed, "crew")
    assert spent(renamed)["crew:team"] == (CALL, Decimal(0))


def test_crew_role_with_no_crew_or_global_budget_is_refused() -> None:
    # Nothing would cover such calls: refused, never unlimited (invariant 9).
    guard = Guard(ONE_ROLE, "memory://")
    with pytest.raises(UnknownRoleError, match="'crew'"):
        call(guard, "crew")
    assert settled(guard) == []
