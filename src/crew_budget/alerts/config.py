"""The ``alerts:`` section of the budget YAML, as pydantic models.

Every field has a default, so ``alerts: {}`` (or no section at all) gives the
50/80/100 % thresholds, all four anomaly rules and a logging sink::

    alerts:
      thresholds: [50, 80, 100]          # percent of each limit, once per window
      scope_thresholds:                  # optional overrides for single budgets
        "role:researcher": [25, 50, 75, 100]
        "crew:research": [90, 100]
      anomalies:
        baseline_days: 7
        burn_rate: {factor: 2.0, min_fraction: 0.25}
        spend_spike: {sigma: 3.0, min_baseline_hours: 24, min_usd: "0.01"}
        new_model: {min_baseline_calls: 10}
        cost_per_call: {factor: 2.0, window_minutes: 60, min_calls: 3}
      sinks:
        - {type: log, level: warning}
        - {type: webhook, url: "https://hooks.slack.com/services/...", format: slack}
        - {type: email, host: smtp.example.com, port: 587, from: budget@example.com,
           to: [ops@example.com], starttls: true, username: budget, password_env: SMTP_PASSWORD}
        - {type: callable, path: "my_package.alerts:page_someone"}

Unknown keys are errors (a typo must not silently switch an alert off).
This module imports nothing from ``crew_budget.config`` or the guard, because
``crew_budget.config`` imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from crew_budget.money import parse_usd

__all__ = [
    "AlertsConfig",
    "AnomalyConfig",
    "BurnRateRule",
    "CallableSinkConfig",
    "CostPerCallRule",
    "DeliveryConfig",
    "EmailSinkConfig",
    "LogSinkConfig",
    "NewModelRule",
    "SinkConfig",
    "SpendSpikeRule",
    "WebhookSinkConfig",
    "alerts_key_hint",
]


def _usd(value: object) -> Decimal:
    try:
        amount = parse_usd(value)
    except ValueError as exc:
        raise ValueError(f"{exc}; write a dollar amount such as 0.5 or \"0.50\"") from None
    if amount < 0:
        raise ValueError(f"{value!r} is negative; use 0 or a positive dollar amount")
    return amount


USD = Annotated[Decimal, BeforeValidator(_usd)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class BurnRateRule(_Model):
    """Spending a window's budget faster than pro-rata.

    Fires when at least ``min_fraction`` of a limit is spent *and* the spent
    fraction is ``factor`` times the elapsed fraction of the window (30 % of
    a daily budget in the first 2 hours is 3.6x pro-rata).
    """

    enabled: bool = True
    factor: float = Field(default=2.0, gt=1.0)
    min_fraction: float = Field(default=0.25, gt=0.0, le=1.0)


class SpendSpikeRule(_Model):
    """This hour's spend more than ``sigma`` standard deviations above the
    role's hourly baseline (needs ``min_baseline_hours`` of history)."""

    enabled: bool = True
    sigma: float = Field(default=3.0, gt=0.0)
    min_baseline_hours: int = Field(default=24, ge=2)
    min_usd: USD = Decimal("0.01")


class NewModelRule(_Model):
    """A role calling a model it has not used in its baseline (needs at least
    ``min_baseline_calls`` calls in the baseline, so new roles stay quiet)."""

    enabled: bool = True
    min_baseline_calls: int = Field(default=10, ge=1)
    window_minutes: int = Field(default=60, gt=0)


class CostPerCallRule(_Model):
    """Average cost per call over the last ``window_minutes`` at least
    ``factor`` times the role's baseline average."""

    enabled: bool = True
    factor: float = Field(default=2.0, gt=1.0)
    window_minutes: int = Field(default=60, gt=0)
    min_calls: int = Field(default=3, ge=1)
    min_baseline_calls: int = Field(default=10, ge=1)


class AnomalyConfig(_Model):
    """The four anomaly rules and the trailing baseline they compare against."""

    enabled: bool = True
    baseline_days: int = Field(default=7, ge=1, le=90)
    check_interval_seconds: float = Field(default=60.0, ge=0.0)
    burn_rate: BurnRateRule = Field(default_factory=BurnRateRule)
    spend_spike: SpendSpikeRule = Field(default_factory=SpendSpikeRule)
    new_model: NewModelRule = Field(default_factory=NewModelRule)
    cost_per_call: CostPerCallRule = Field(default_factory=CostPerCallRule)


class LogSinkConfig(_Model):
    """Python ``logging`` on the ``crew_budget.alerts`` logger."""

    type: Literal["log"] = "log"
    level: Literal["debug", "info", "warning", "error", "critical"] = "warning"
    logger: str = "crew_budget.alerts"


class WebhookSinkConfig(_Model):
    """POST the alert as JSON; ``format: slack`` posts Slack's ``{"text", "blocks"}``."""

    type: Literal["webhook"]
    url: str
    format: Literal["json", "slack"] = "json"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float = Field(default=5.0, gt=0.0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"webhook url {value!r} must start with http:// or https://")
        return value


class EmailSinkConfig(_Model):
    """Plain-text mail over SMTP. The password is read from ``password_env``
    (never from the YAML file) when the sink is built."""

    type: Literal["email"]
    host: str
    port: int = Field(default=25, gt=0, lt=65536)
    from_: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    starttls: bool = False
    ssl: bool = False
    username: str | None = None
    password_env: str | None = None
    subject_prefix: str = "[crew-budget]"
    timeout_seconds: float = Field(default=10.0, gt=0.0)

    @field_validator("to", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class CallableSinkConfig(_Model):
    """Any Python callable taking one ``Alert``: ``"package.module:function"``."""

    type: Literal["callable"]
    path: str = Field(pattern=r"^[A-Za-z_][\w.]*([:.][A-Za-z_]\w*)$")


SinkConfig = Annotated[
    LogSinkConfig | WebhookSinkConfig | EmailSinkConfig | CallableSinkConfig,
    Field(discriminator="type"),
]


class DeliveryConfig(_Model):
    """How alerts reach their sinks: through the ledger's outbox, with retries.

    Every alert is stored in the ledger before it is sent, once per sink.
    A process *claims* it for ``lease_seconds`` (longer than any sink's
    timeout), sends it, and acknowledges it. A failed send is retried with
    exponential backoff (``backoff_seconds`` doubling up to
    ``max_backoff_seconds``) until it succeeds or ``give_up_after_seconds``
    have passed since the alert was raised (or ``attempts`` sends failed,
    if set); then an ERROR is logged naming the alert and the sink. A
    budget's alerts are sent in order, so one waiting behind an earlier one
    may reach its give-up time first: it still gets one try. If the
    claiming process dies, its lease runs out and any other process sharing
    the ledger delivers the alert. Idle delivery loops look for due alerts
    every ``poll_seconds``. ``queue_size`` is accepted for older files and
    unused: alerts wait in the ledger, not in memory.
    """

    attempts: int | None = Field(default=None, ge=1)
    backoff_seconds: float = Field(default=0.5, ge=0.0)
    max_backoff_seconds: float = Field(default=30.0, ge=0.0)
    give_up_after_seconds: float = Field(default=86400.0, gt=0.0)
    lease_seconds: float = Field(default=60.0, gt=0.0)
    poll_seconds: float = Field(default=1.0, gt=0.0)
    queue_size: int = Field(default=1000, ge=1)


def _default_sinks() -> list[SinkConfig]:
    return [LogSinkConfig()]


class AlertsConfig(_Model):
    """Thresholds, anomaly rules, sinks and delivery settings."""

    enabled: bool = True
    thresholds: list[int] = Field(default_factory=lambda: [50, 80, 100])
    scope_thresholds: dict[str, list[int]] = Field(default_factory=dict)
    anomalies: AnomalyConfig = Field(default_factory=AnomalyConfig)
    sinks: list[SinkConfig] = Field(default_factory=_default_sinks)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)

    @field_validator("thresholds")
    @classmethod
    def _check_thresholds(cls, value: list[int]) -> list[int]:
        return _percentages(value)

    @field_validator("scope_thresholds")
    @classmethod
    def _check_scope_thresholds(cls, value: dict[str, list[int]]) -> dict[str, list[int]]:
        for scope in value:
            kind, _, name = scope.partition(":")
            model, at, role = name.partition("@role:")
            ok = (scope == "global" or (kind in ("role", "crew") and name)
                  or (kind == "model" and model and (not at or role)))
            if not ok:
                raise ValueError(
                    f"{scope!r} is not a budget scope; write \"role:NAME\", \"crew:NAME\", "
                    "\"model:MODEL\", \"model:MODEL@role:NAME\" or \"global\" (quoted in YAML)"
                )
        return {scope: _percentages(pcts) for scope, pcts in value.items()}

    def thresholds_for(self, scope: str) -> list[int]:
        """The scope's own thresholds, else the default ``thresholds``."""
        return self.scope_thresholds.get(scope, self.thresholds)


def _percentages(value: list[int]) -> list[int]:
    for pct in value:
        if not 0 < pct <= 1000:
            raise ValueError(
                f"threshold {pct} is not a percentage of the limit; use e.g. [50, 80, 100]"
            )
    return sorted(set(value))


_KNOWN: dict[str, type[BaseModel]] = {
    "alerts": AlertsConfig,
    "anomalies": AnomalyConfig,
    "burn_rate": BurnRateRule,
    "spend_spike": SpendSpikeRule,
    "new_model": NewModelRule,
    "cost_per_call": CostPerCallRule,
    "delivery": DeliveryConfig,
    "log": LogSinkConfig,
    "webhook": WebhookSinkConfig,
    "email": EmailSinkConfig,
    "callable": CallableSinkConfig,
}


def alerts_key_hint(loc: Sequence[Any]) -> str:
    """The keys allowed where an unknown key ``loc[-1]`` was found under ``alerts``.

    ``loc`` is pydantic's error location, e.g. ``("alerts", "sinks", 0,
    "webhook", "urll")``: the parent model is named by the last string
    component before the bad key.
    """
    parent = next((p for p in reversed(list(loc)[:-1]) if isinstance(p, str)), "alerts")
    if parent == "sinks":
        return "a sink needs a type: log, webhook, email or callable"
    model = _KNOWN.get(parent, AlertsConfig)
    keys = [f.alias or name for name, f in model.model_fields.items()]
    label = f"a {parent} sink" if parent in ("log", "webhook", "email", "callable") else parent
    return f"{label} takes {', '.join(keys)}"
