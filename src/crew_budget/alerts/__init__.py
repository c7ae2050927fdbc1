"""Budget alerts: thresholds, anomaly rules and sinks, off the hot path.

``AlertManager(guard)`` listens to a ``Guard``; every alert is put into the
ledger's outbox (once per sink, idempotent by key) before it is sent, so it
fires once however many processes share the budget, and it is delivered with
retries, in ascending order per budget, by whichever process is alive (see
``crew_budget.alerts.delivery``). The rules in ``crew_budget.alerts.rules``
are pure functions over bucket states and spend records. A guard built from
a config with an ``alerts:`` section starts its manager itself
(``crew_budget.alerts.wiring``).

Names are imported on first use (PEP 562): ``crew_budget.config`` imports
``crew_budget.alerts.config``, and loading a budget file must not pay for
the manager, the sinks or the rules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crew_budget.alerts.config import AlertsConfig, AnomalyConfig
    from crew_budget.alerts.events import Alert
    from crew_budget.alerts.manager import AlertManager, SinkStats
    from crew_budget.alerts.sinks import CallableSink, EmailSink, LogSink, Sink, WebhookSink

_LAZY: dict[str, str] = {
    "Alert": "events",
    "AlertManager": "manager",
    "AlertsConfig": "config",
    "AnomalyConfig": "config",
    "CallableSink": "sinks",
    "EmailSink": "sinks",
    "LogSink": "sinks",
    "Sink": "sinks",
    "SinkStats": "manager",
    "WebhookSink": "sinks",
}

__all__ = [
    "Alert",
    "AlertManager",
    "AlertsConfig",
    "AnomalyConfig",
    "CallableSink",
    "EmailSink",
    "LogSink",
    "Sink",
    "SinkStats",
    "WebhookSink",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'crew_budget.alerts' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"crew_budget.alerts.{module}"), name)
    globals()[name] = value
    return value
