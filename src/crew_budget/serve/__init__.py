"""``crew-budget serve``: a live, read-only web dashboard over a ledger.

Gauges per scope and window (spent, reserved, left, reset time), spend per
role, model and hour, blocked calls, overruns and the alert feed, updated
every second over Server-Sent Events. Needs the ``serve`` extra
(``pip install 'crew-budget[serve]'``: Starlette and uvicorn); the chart
library (uPlot, MIT, see ``static/uPlot.LICENSE``) ships inside the package,
so the page works offline. ``import crew_budget`` never imports this.

Use it from Python::

    import uvicorn
    from crew_budget import Guard
    from crew_budget.serve import create_app

    uvicorn.run(create_app(Guard.from_config("budgets.yaml")), host="127.0.0.1", port=8765)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crew_budget.serve.app import create_app
    from crew_budget.serve.data import snapshot

__all__ = ["create_app", "snapshot"]


def __getattr__(name: str) -> Any:
    # Lazy, so `crew_budget.serve.data` is usable without Starlette installed.
    if name == "create_app":
        from crew_budget.serve.app import create_app

        return create_app
    if name == "snapshot":
        from crew_budget.serve.data import snapshot

        return snapshot
    raise AttributeError(f"module 'crew_budget.serve' has no attribute {name!r}")
