"""What runs when a ``Guard`` is built: hooks installed from the top of the package.

The guard sits below alerts (and anything else that watches it) and imports
none of it. Yet a budget file's ``alerts:`` section must act when
``Guard(config)`` is built, as it always has: silently ignoring it would
switch alerts off. So ``Guard.__init__`` calls the hooks registered here,
and ``crew_budget/__init__.py`` (the top of the package, which Python runs
before any of its submodules) registers the alerts hook *by name*,
``"crew_budget.alerts.wiring:start_alerts"``: it is imported only when a
guard is built, and costs nothing at ``import crew_budget``.

Imports point down only: ``crew_budget`` -> ``wiring`` (names) and
``guard`` -> ``wiring``; nothing here imports the guard or the alerts.
``Guard(..., start_alerts=False)`` builds a guard without running the hooks.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["GuardHook", "add_guard_hook", "guard_hooks", "remove_guard_hook", "run_guard_hooks"]

GuardHook = Callable[[Any], None]
"""Called with each new ``Guard`` (typed ``Any``: this module must not import it)."""

_lock = threading.Lock()
_hooks: list[str | GuardHook] = []
_resolved: dict[str, GuardHook] = {}


def add_guard_hook(hook: str | GuardHook) -> None:
    """Run ``hook(guard)`` at the end of every ``Guard.__init__`` (once per hook).

    ``hook`` is a callable or ``"package.module:function"``, imported on the
    first guard built. What it raises propagates: a hook that cannot do what
    the configuration asks (e.g. an alert sink that cannot be built) must
    fail the guard's construction, not be skipped.
    """
    with _lock:
        if hook not in _hooks:
            _hooks.append(hook)


def remove_guard_hook(hook: str | GuardHook) -> None:
    with _lock:
        if hook in _hooks:
            _hooks.remove(hook)


def guard_hooks() -> list[str | GuardHook]:
    with _lock:
        return list(_hooks)


def run_guard_hooks(guard: Any) -> None:
    """Called by ``Guard.__init__``; runs every hook in registration order."""
    for hook in guard_hooks():
        _resolve(hook)(guard)


def _resolve(hook: str | GuardHook) -> GuardHook:
    if not isinstance(hook, str):
        return hook
    fn = _resolved.get(hook)
    if fn is None:
        module, _, name = hook.partition(":")
        fn = getattr(importlib.import_module(module), name)
        _resolved[hook] = fn
    return fn
