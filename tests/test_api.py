"""The public API is a contract: pinned names, and a core free of frameworks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import crew_budget

PUBLIC = [
    "BudgetConfig",
    "BudgetExceeded",
    "BudgetStatus",
    "ConfigError",
    "CrewBudgetError",
    "CrewLimits",
    "Guard",
    "Ledger",
    "LedgerError",
    "LedgerReset",
    "LedgerUnavailable",
    "Limits",
    "ModelPrice",
    "Price",
    "PriceBook",
    "PricingError",
    "ReservationError",
    "RoleBudget",
    "RolePaused",
    "Run",
    "Settlement",
    "SpendRecord",
    "Ticket",
    "UnknownModelError",
    "UnknownRoleError",
    "Usage",
    "UsageError",
    "__version__",
    "cost_of",
    "current_run",
    "load_config",
    "open_ledger",
    "parse_usage",
    "run",
]


def test_all_is_sorted_pinned_and_resolvable() -> None:
    assert crew_budget.__all__ == sorted(crew_budget.__all__)
    assert crew_budget.__all__ == PUBLIC
    for name in crew_budget.__all__:
        assert getattr(crew_budget, name) is not None


def test_error_hierarchy() -> None:
    from crew_budget import errors

    for cls in (
        errors.ConfigError,
        errors.PricingError,
        errors.UsageError,
        errors.LedgerError,
        errors.BudgetExceeded,
    ):
        assert issubclass(cls, errors.CrewBudgetError)
    assert issubclass(errors.UnknownModelError, errors.PricingError)
    assert issubclass(errors.LedgerUnavailable, errors.LedgerError)
    assert issubclass(errors.LedgerUnavailable, ConnectionError)
    assert issubclass(errors.ConfigError, ValueError)


BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {"crewai", "langchain", "langchain_core", "langchain_openai", "litellm", "redis",
               "openai", "anthropic"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed (blocked by the test)")
            return None
    sys.meta_path.insert(0, Block())
""")


def test_core_works_with_no_framework_installed() -> None:
    """The core imports no agent framework: with all of them unimportable, a
    guard on the memory ledger prices, reserves and settles a call (prices
    read from litellm's bundled JSON as data, not by importing litellm)."""
    code = BLOCKER + textwrap.dedent("""
        import crew_budget
        from crew_budget import Guard
        g = Guard({"roles": {"r": {"daily": 1}}}, "memory://")
        t = g.preflight("r", "gpt-4o-mini", [{"role": "user", "content": "hi"}], max_tokens=10)
        s = g.settle(t, {"prompt_tokens": 100, "completion_tokens": 10})
        # 100 x $0.15/M + 10 x $0.60/M (litellm's gpt-4o-mini prices)
        assert str(s.cost) == "0.000021", s.cost
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_plain_import_loads_nothing_heavy() -> None:
    code = (
        "import sys, crew_budget; heavy = [m for m in ('pydantic', 'yaml', 'tiktoken', "
        "'typer', 'rich') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_errors_survive_pickling_for_process_pools() -> None:
    import pickle

    from crew_budget import ConfigError, LedgerUnavailable, UnknownModelError

    errors: list[Exception] = [
        LedgerUnavailable("redis://h:6379/0", "connection refused"),
        ConfigError("budget -1 is negative", source="b.yaml", path="roles.r.daily"),
        UnknownModelError("gpt-x", suggestions=("gpt-4o",)),
    ]
    for err in errors:
        clone = pickle.loads(pickle.dumps(err))
        assert type(clone) is type(err)
        assert str(clone) == str(err)
        assert vars(clone) == vars(err)
