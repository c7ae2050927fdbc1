"""The guard imports nothing from crew_budget.alerts; the top of the package
wires an `alerts:` section's manager into every guard built from a config."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import crew_budget
from crew_budget import wiring

GUARD = Path(crew_budget.__file__).with_name("guard.py")


def test_guard_module_imports_nothing_from_alerts() -> None:
    tree = ast.parse(GUARD.read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not [m for m in imported if m.startswith("crew_budget.alerts")]
    assert "crew_budget.wiring" in imported


def test_the_alerts_hook_is_registered_once_by_name() -> None:
    assert wiring.guard_hooks().count("crew_budget.alerts.wiring:start_alerts") == 1
    wiring.add_guard_hook("crew_budget.alerts.wiring:start_alerts")  # idempotent
    assert wiring.guard_hooks().count("crew_budget.alerts.wiring:start_alerts") == 1


def test_guard_from_the_submodule_still_starts_alerts_and_import_stays_lazy() -> None:
    """In a fresh interpreter: importing the guard loads no alert manager, and a
    guard built from a config with `alerts:` has one (the package's hook)."""
    code = textwrap.dedent("""
        import sys
        from crew_budget.guard import Guard
        assert "crew_budget.alerts.manager" not in sys.modules, "imported too early"
        g = Guard({"alerts": {"sinks": []}}, "memory://")
        print(type(g.alerts).__name__, "crew_budget.alerts.manager" in sys.modules)
        g.close()
        g = Guard({}, "memory://")
        print(g.alerts)
        g.close()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.split("\n")[:2] == ["AlertManager True", "None"]


def test_a_hook_runs_for_every_guard_and_can_be_removed() -> None:
    from crew_budget import Guard

    seen: list[object] = []
    wiring.add_guard_hook(seen.append)
    try:
        g = Guard({}, "memory://")
        assert seen == [g]
        Guard({}, "memory://", start_alerts=False)
        assert seen == [g]
    finally:
        wiring.remove_guard_hook(seen.append)
    Guard({}, "memory://")
    assert seen == [g]
