"""Starting a guard's alert manager from its configuration.

``crew_budget/__init__.py`` registers ``start_alerts`` as a guard hook
(``crew_budget.wiring``), so ``Guard(config)`` with an enabled ``alerts:``
section gets ``guard.alerts``, a running ``AlertManager``, without the guard
importing anything from ``crew_budget.alerts``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["start_alerts"]


def start_alerts(guard: Any) -> None:
    """Start an ``AlertManager`` for ``guard`` if its config has enabled alerts.

    The manager sets ``guard.alerts`` and is closed by ``guard.close()``; one
    built by hand later replaces it, so one guard never has two.
    """
    cfg = getattr(guard.config, "alerts", None)
    if cfg is None or not cfg.enabled:
        return
    from crew_budget.alerts.manager import AlertManager

    AlertManager(guard)
