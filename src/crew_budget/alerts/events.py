"""The ``Alert`` value every rule produces and every sink receives."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Literal

__all__ = ["Alert", "AlertKind", "Severity", "fmt_pct", "fmt_usd"]

AlertKind = Literal[
    "threshold", "exhausted", "burn_rate", "spend_spike", "new_model", "cost_per_call",
    "shadow_blocked",
]
Severity = Literal["info", "warning", "critical"]


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert, fired once (``key`` is the exactly-once marker in the ledger).

    ``title`` is one short line (mail subject, chat headline); ``message``
    says what happened with the numbers; ``values`` carries the same facts
    for machines (money as exact decimal strings).
    """

    kind: AlertKind
    key: str
    title: str
    message: str
    severity: Severity = "warning"
    ts: float = 0.0
    scope: str | None = None
    role: str | None = None
    window: str | None = None
    period: str | None = None
    values: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: decimals as strings, ``ts`` also as ISO-8601 UTC."""
        return {
            "kind": self.kind,
            "key": self.key,
            "severity": self.severity,
            "title": self.title,
            "message": self.message,
            "ts": self.ts,
            "time": datetime.fromtimestamp(self.ts, timezone.utc).isoformat(),
            "scope": self.scope,
            "role": self.role,
            "window": self.window,
            "period": self.period,
            "values": {k: _plain(v) for k, v in self.values.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def fmt_usd(amount: Decimal) -> str:
    """``$5.00`` for dollars and whole cents, four decimals below a dollar
    (``$0.0125``), every digit for sub-cent sums (``$0.000035``)."""
    if amount == 0:
        return "$0.00"
    sign = "-" if amount < 0 else ""
    a = abs(amount)
    if a >= 1 or a == a.quantize(Decimal("0.01")):
        return f"{sign}${a.quantize(Decimal('0.01')):,}"
    if a >= Decimal("0.0001"):
        return f"{sign}${a.quantize(Decimal('0.0001'))}"
    return f"{sign}${a.normalize():f}"


def fmt_pct(fraction: Decimal) -> str:
    """``Decimal("0.3")`` -> ``"30.0%"``."""
    return f"{(fraction * 100).quantize(Decimal('0.1'))}%"
