"""Budget configuration: pydantic models and the YAML loader.

Budgets come from here and only from here (invariant 8): an adapter may tell
the guard *which* role is calling, never *how much* it may spend. Money is
parsed exactly (``5``, ``5.0`` and ``"5.00"`` are the same five dollars), and
every mistake is reported with the file, the key path and the fix.

Example::

    timezone: Europe/Berlin
    ledger: redis://localhost:6379/0       # default: embedded SQLite file
    crew: {name: research, daily: 20}
    roles:
      researcher: {daily: "5.00", hourly: 1, max_output_tokens: 1024}
      writer: {daily: 2}
    prices:
      my-finetune: {input_per_million: 0.3, output_per_million: 1.2}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from crew_budget.alerts.config import AlertsConfig, alerts_key_hint
from crew_budget.errors import ConfigError
from crew_budget.money import parse_usd
from crew_budget.windows import WINDOWS, WindowName, get_tz

__all__ = [
    "BudgetConfig",
    "CrewLimits",
    "Limits",
    "ModelPrice",
    "RoleBudget",
    "default_ledger_url",
    "load_config",
]

LEDGER_SCHEMES = ("memory", "sqlite", "redis", "rediss", "redis+cluster", "rediss+cluster")
_WINDOW_FIELDS: dict[WindowName, str] = {"hour": "hourly", "day": "daily", "month": "monthly"}


def _usd(value: object) -> Decimal:
    try:
        amount = parse_usd(value)
    except ValueError as exc:
        raise ValueError(f'{exc}; write a dollar amount such as 5 or "5.00"') from None
    if amount < 0:
        raise ValueError(
            f"budget {value!r} is negative; use 0 to block all calls or a positive amount"
        )
    if amount * 10**9 != (amount * 10**9).to_integral_value():
        raise ValueError(f"{value!r} is finer than one nano-dollar (1e-9)")
    return amount


USD = Annotated[Decimal, BeforeValidator(_usd)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Limits(_Model):
    """Dollar limits per window; ``None`` means no limit for that window."""

    hourly: USD | None = None
    daily: USD | None = None
    monthly: USD | None = None

    def limit_for(self, window: WindowName) -> Decimal | None:
        value: Decimal | None = getattr(self, _WINDOW_FIELDS[window])
        return value

    def windows(self) -> tuple[WindowName, ...]:
        return tuple(w for w in WINDOWS if self.limit_for(w) is not None)


class RoleBudget(Limits):
    """A role's limits plus its cap on reserved output tokens."""

    max_output_tokens: int | None = Field(default=None, gt=0)


class CrewLimits(Limits):
    """The flat crew limit, shared by every role of the crew."""

    name: str = "default"


class ModelPrice(_Model):
    """A price the user configures, in USD per million tokens.

    ``tokenizer`` picks the local token counter (``o200k_base``,
    ``cl100k_base``, ``anthropic``, ``approx``) for models litellm's map does
    not describe.
    """

    input_per_million: USD
    output_per_million: USD
    cached_input_per_million: USD | None = None
    cache_write_per_million: USD | None = None
    reasoning_per_million: USD | None = None
    provider: Literal["openai", "anthropic", "other"] = "other"
    tokenizer: str | None = None


class BudgetConfig(_Model):
    """The whole budget configuration (one YAML file)."""

    version: Literal[1] = 1
    timezone: str = "UTC"
    ledger: str | None = None
    namespace: str = Field(default="default", pattern=r"^[A-Za-z0-9_.\-]+$")
    fail_open: bool = False
    lease_seconds: int = Field(default=600, gt=0)
    retention_days: int = Field(default=90, gt=0)
    default_max_output_tokens: int = Field(default=4096, gt=0)
    global_limits: Limits | None = Field(default=None, alias="global")
    crew: CrewLimits | None = None
    roles: dict[str, RoleBudget] = Field(default_factory=dict)
    default_role: RoleBudget | None = None
    crew_role: str | None = Field(default=None, min_length=1)
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    alerts: AlertsConfig | None = None

    @field_validator("timezone")
    @classmethod
    def _check_tz(cls, value: str) -> str:
        try:
            get_tz(value)
        except Exception:
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as 'Europe/Berlin' or 'UTC'"
            ) from None
        return value

    @field_validator("ledger")
    @classmethod
    def _check_ledger(cls, value: str | None) -> str | None:
        if value is not None:
            check_ledger_url(value)
        return value

    # -- derived -----------------------------------------------------------

    def role_budget(self, role: str) -> RoleBudget | None:
        """The role's own budget, or ``default_role`` for roles not listed."""
        return self.roles.get(role, self.default_role)

    def max_output_tokens(self, role: str) -> int:
        budget = self.role_budget(role)
        if budget is not None and budget.max_output_tokens is not None:
            return budget.max_output_tokens
        return self.default_max_output_tokens

    def ledger_url(self) -> str:
        """``CREW_BUDGET_LEDGER`` beats the file, which beats the default."""
        env = os.environ.get("CREW_BUDGET_LEDGER")
        if env:
            check_ledger_url(env)
            return env
        return self.ledger or default_ledger_url()

    def with_role_limits(
        self,
        role: str,
        *,
        hourly: object = None,
        daily: object = None,
        monthly: object = None,
        max_output_tokens: int | None = None,
    ) -> BudgetConfig:
        """Merge limits set in code (``BudgetLLM(daily_usd=5)``) for one role.

        Where both the YAML and the code set a window, the stricter wins;
        limits can only be tightened this way, never loosened.
        """
        current = self.roles.get(role) or self.default_role or RoleBudget()
        merged: dict[str, Any] = current.model_dump()
        for name, value in (("hourly", hourly), ("daily", daily), ("monthly", monthly)):
            if value is None:
                continue
            amount = _usd(value)
            old = merged.get(name)
            merged[name] = amount if old is None else min(old, amount)
        if max_output_tokens is not None:
            old_cap = merged.get("max_output_tokens")
            merged["max_output_tokens"] = (
                max_output_tokens if old_cap is None else min(old_cap, max_output_tokens)
            )
        roles = dict(self.roles)
        roles[role] = RoleBudget(**merged)
        return self.model_copy(update={"roles": roles})


def check_ledger_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in LEDGER_SCHEMES:
        raise ValueError(
            f"ledger URL {url!r} has unsupported scheme {parts.scheme!r}; use one of "
            "memory://, sqlite:///path/to/ledger.db, redis://host:6379/0, rediss://..."
        )
    if parts.scheme == "sqlite" and not parts.path.strip("/"):
        raise ValueError(f"ledger URL {url!r} names no file; write sqlite:///path/to/ledger.db")
    if parts.scheme.startswith("redis") and not parts.hostname:
        raise ValueError(f"ledger URL {url!r} names no host; write redis://host:6379/0")


def default_ledger_url() -> str:
    """The embedded SQLite ledger under the user's state directory."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return f"sqlite:///{Path(state) / 'crew-budget' / 'ledger.db'}"


def load_config(source: str | os.PathLike[str] | Mapping[str, Any] | BudgetConfig) -> BudgetConfig:
    """Load and validate a budget configuration from a YAML file or a mapping."""
    if isinstance(source, BudgetConfig):
        return source
    if isinstance(source, Mapping):
        return _validate(dict(source), "<dict>")
    path = Path(source)
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "file not found; pass the path of your budget YAML (see examples/budgets.yaml)",
            source=name,
        ) from None
    import yaml  # only file loading needs it; keeps `Guard(dict)` imports lean

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(
            f"{where}not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax there",
            source=name,
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"the top level must be a mapping (roles:, crew:, ...), not {type(data).__name__}",
            source=name,
        )
    return _validate(data, name)


def _validate(data: dict[str, Any], source: str) -> BudgetConfig:
    try:
        return BudgetConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        path = ".".join(str(p) for p in err["loc"]) or "<top>"
        raise ConfigError(_explain(err), source=source, path=path) from None


def _explain(err: Mapping[str, Any]) -> str:
    kind = err.get("type", "")
    loc = err.get("loc", ())
    if kind == "extra_forbidden":
        key = loc[-1] if loc else "?"
        parent = loc[-2] if len(loc) > 1 else ""
        known = {
            "": "version, timezone, ledger, namespace, fail_open, lease_seconds, retention_days, "
            "default_max_output_tokens, global, crew, roles, default_role, prices, alerts",
        }
        if parent == "roles" or (len(loc) > 2 and loc[-3] == "roles") or parent == "default_role":
            hint = "a role takes hourly, daily, monthly and max_output_tokens"
        elif parent in ("crew", "global"):
            hint = "use hourly, daily or monthly (crew also takes name)"
        elif loc and loc[0] == "alerts":
            hint = alerts_key_hint(loc)
        elif len(loc) > 2 and loc[-3] == "prices":
            hint = (
                "a price takes input_per_million, output_per_million, cached_input_per_million, "
                "cache_write_per_million, reasoning_per_million, provider, tokenizer"
            )
        else:
            hint = f"known keys: {known['']}"
        return f"unknown key {key!r}; {hint}"
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    if kind == "missing":
        return "required key is missing; add it"
    return f"{msg} (got {err.get('input')!r})"
