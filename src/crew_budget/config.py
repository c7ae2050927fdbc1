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
      researcher: {daily: "5.00", hourly: 1, max_output_tokens: 1024,
                   aliases: ["Senior Researcher"]}
      writer: {daily: 2}
    default_role: {daily: 1}               # one shared budget for every role not listed
    prices:
      my-finetune: {input_per_million: 0.3, output_per_million: 1.2}

Runs. ``per_run:`` (beside ``hourly``/``daily``/``monthly`` in the crew,
``global``, each role, ``default_role`` and each model budget) caps what one
run may spend: a ``with crew_budget.run("name"):`` block, or a CrewAI
``kickoff()`` or Flow run under a ``BudgetCallback`` (each one is a run).
Calls made outside any run are not limited by it.

Models. ``models: {gpt-4o: {daily: 10}}`` limits one model across all
roles (scope ``model:gpt-4o``); ``roles.<r>.models.<m>`` limits it for one
role (scope ``model:<m>@role:<r>``). A key matches a call's model exactly,
or the model with its provider prefix removed (``openai/gpt-4o`` matches
``gpt-4o``; the key ``openai/gpt-4o`` matches only ``openai/gpt-4o``).

On-exceed policies: what a call that does not fit its budget does.
``roles.<r>.on_exceed`` (also on ``default_role``), else the top-level
``on_exceed``, is one of ``stop`` (raise ``BudgetExceeded``, the default),
``end_task`` (CrewAI: the agent's task ends with a "budget exhausted" final
answer and the crew goes on; other adapters stop as usual), ``shadow`` (never
block: the call is charged and its record says ``shadow_blocked``) or
``{downgrade: [gpt-4o-mini, ...]}`` (priced at each listed model in turn and
sent to the first that fits; stopped when none does). ``mode: shadow``
makes every role shadow, to roll budgets out without blocking anyone::

    mode: shadow                           # or enforce (the default)
    on_exceed: stop
    roles:
      writer: {daily: 2, on_exceed: {downgrade: [gpt-4o-mini]}}
      researcher: {daily: 5, on_exceed: end_task}

Tokens and calls. ``input_tokens:``, ``output_tokens:`` and ``calls:`` (in
a role, ``default_role``, ``crew``, ``global`` and a model budget) each take
the same window keys as dollars, with whole counts::

    roles:
      researcher: {daily: 5, input_tokens: {daily: 2_000_000},
                   output_tokens: {hourly: 50_000}, calls: {daily: 500, per_run: 3}}

They are checked in the same atomic reservation as the dollars (all or
nothing): a call takes its estimated prompt tokens, its reserved output
tokens (``max_tokens``, or the injected cap) and one call, and settles at
the usage's counts (input as the provider bills the prompt: cached and
cache-written tokens included; output with reasoning included).
``downgrade`` is tried only when a dollar limit refuses a call; a token or
call limit stops it (another model needs the same prompt and the same call).

Roles (invariant 9: every call is budgeted). A call's role matches a key
under ``roles:`` exactly, or ignoring case and extra whitespace (``"
RESEARCHER "`` is ``researcher``), or through the role's ``aliases:``
(matched the same way). A role that matches nothing is charged to
``default_role`` (one budget shared by all of them, scope
``role:default_role``) if configured; otherwise the call is refused with
``UnknownRoleError``, unless ``unknown_roles: allow`` says, explicitly, to
charge such roles to the crew and global budgets only (logged).

Bounds, checked at load and wherever code sets a limit: each limit is at
most $1,000,000 (``MAX_LIMIT_USD``; the Redis ledger compares nano-dollars
as doubles, exact only below 2**53), prices at most $10,000 per million
tokens, token caps at most 1,000,000, token and call limits whole counts at
most 10**12 (``MAX_LIMIT_COUNT``), ``lease_seconds`` 1..86400 and
``retention_days`` 1..3650 (``records_retention_days`` 0..3650). Within
one budget, hourly <= daily <= monthly.
The file itself must be UTF-8 text of at most 1 MiB with no duplicate keys.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from crew_budget.alerts.config import AlertsConfig, alerts_key_hint
from crew_budget.errors import ConfigError, UnknownRoleError
from crew_budget.money import parse_usd
from crew_budget.windows import WINDOWS, WindowName, get_tz

__all__ = [
    "DEFAULT_ROLE",
    "MAX_CONFIG_BYTES",
    "MAX_LEASE_SECONDS",
    "MAX_LIMIT_COUNT",
    "MAX_LIMIT_USD",
    "MAX_OUTPUT_TOKENS",
    "MAX_PRICE_PER_MILLION_USD",
    "MAX_RETENTION_DAYS",
    "POLICY_NAMES",
    "BudgetConfig",
    "CrewLimits",
    "Downgrade",
    "EstimateMargin",
    "Limits",
    "ModelLimits",
    "ModelPrice",
    "RoleBudget",
    "RoleLimits",
    "UnitLimits",
    "budgets_json_schema",
    "check_code_limits",
    "default_ledger_url",
    "find_config",
    "load_config",
    "normalize_role",
]

log = logging.getLogger("crew_budget")

SCHEMA_ID = "https://crew-budget.dev/schemas/budgets.schema.json"

#: The largest limit per scope and window. The Redis ledger's Lua scripts
#: compare nano-dollars as doubles, exact only below 2**53 (about $9.007M);
#: a million dollars leaves room for spend plus reservations in flight.
MAX_LIMIT_USD = Decimal(1_000_000)
#: The largest token or call limit per scope and window (a trillion: far
#: below 2**53, so the Redis ledger compares counts exactly, like dollars).
MAX_LIMIT_COUNT = 10**12
#: The largest configured price per million tokens (today's dearest models
#: cost a few hundred dollars per million).
MAX_PRICE_PER_MILLION_USD = Decimal(10_000)
#: The largest output-token cap (``max_output_tokens``, ``default_max_output_tokens``).
MAX_OUTPUT_TOKENS = 1_000_000
#: Reservations live at most a day: a longer lease only delays the charge of a crashed call.
MAX_LEASE_SECONDS = 86_400
#: Ten years of history; Redis key expiry times must stay representable.
MAX_RETENTION_DAYS = 3_650
#: A budget file is a few kilobytes; anything over this is the wrong file.
MAX_CONFIG_BYTES = 1 << 20
#: Values (mappings, lists and scalars, aliases expanded) a file may hold.
MAX_CONFIG_NODES = 100_000
#: The role name ``default_role`` is charged under (scope ``role:default_role``).
DEFAULT_ROLE = "default_role"
DEFAULT_CREW_ROLE = "crew"
"""The role charged for calls a crew makes for itself when ``crew_role`` is not set."""

LEDGER_SCHEMES = ("memory", "sqlite", "redis", "rediss", "redis+cluster", "rediss+cluster")
_WINDOW_FIELDS: dict[WindowName, str] = {"hour": "hourly", "day": "daily", "month": "monthly",
                                         "run": "per_run"}


def _amount(value: object, *, maximum: Decimal, what: str, fix: str) -> Decimal:
    try:
        amount = parse_usd(value)
    except ValueError as exc:
        text = str(exc)
        raise ValueError(text if "write" in text else
                         f'{text}; write a dollar amount such as 5 or "5.00"') from None
    if amount < 0:
        raise ValueError(
            f"{what} {value!r} is negative; use 0 to block all calls or a positive amount"
        )
    if amount > maximum:
        raise ValueError(f"{what} {value!r} is above the maximum of ${maximum:,}; {fix}")
    if amount * 10**9 != (amount * 10**9).to_integral_value():
        raise ValueError(f"{value!r} is finer than one nano-dollar (1e-9)")
    return amount


def _usd(value: object) -> Decimal:
    """A limit: 0 .. MAX_LIMIT_USD dollars, whole nano-dollars."""
    return _amount(
        value, maximum=MAX_LIMIT_USD, what="budget",
        fix="limits are kept in nano-dollars that the Redis ledger compares exactly only "
        "below 2**53; use at most 1000000 (split larger budgets across roles or windows)",
    )


def _price(value: object) -> Decimal:
    """A price per million tokens: 0 .. MAX_PRICE_PER_MILLION_USD."""
    return _amount(
        value, maximum=MAX_PRICE_PER_MILLION_USD, what="price",
        fix="prices are USD per million tokens (e.g. 2.5 for $2.50/M); check the unit",
    )


# Money is a number or a numeric string in YAML. The schemas say what the
# validators check: not negative, not above the maximum, at most 9 decimals.
_LIMIT_PATTERN = r"^\s*\$?(1000000(\.0{0,9})?|[0-9]{1,6}(\.[0-9]{0,9})?|\.[0-9]{1,9})\s*$"
_PRICE_PATTERN = r"^\s*\$?(10000(\.0{0,9})?|[0-9]{1,4}(\.[0-9]{0,9})?|\.[0-9]{1,9})\s*$"


def _money_schema(maximum: Decimal, pattern: str) -> dict[str, Any]:
    return {"anyOf": [{"type": "number", "minimum": 0, "maximum": int(maximum)},
                      {"type": "string", "pattern": pattern}]}


USD = Annotated[
    Decimal, BeforeValidator(_usd), WithJsonSchema(_money_schema(MAX_LIMIT_USD, _LIMIT_PATTERN))
]
PriceUSD = Annotated[
    Decimal, BeforeValidator(_price),
    WithJsonSchema(_money_schema(MAX_PRICE_PER_MILLION_USD, _PRICE_PATTERN)),
]
OutputTokens = Annotated[int, Field(ge=1, le=MAX_OUTPUT_TOKENS)]
ModelName = Annotated[str, Field(max_length=200)]  # blank or spaced: _check_models says why


def normalize_role(name: str) -> str:
    """The form roles are matched in: case folded, whitespace collapsed."""
    return " ".join(name.split()).casefold()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# -- on-exceed policies (issue 12) ---------------------------------------------

#: The policies named by one word; ``{downgrade: [...]}`` is the fourth.
POLICY_NAMES = ("stop", "end_task", "shadow")
_POLICY_FIX = ("write stop, end_task, shadow, or {downgrade: [gpt-4o-mini]} (cheaper models "
               "to try in order)")


class Downgrade(_Model):
    """``on_exceed: {downgrade: [gpt-4o-mini, ...]}``: a call that does not fit
    at its model is priced at each listed model in turn and sent to the first
    that fits; only when none fits is it stopped."""

    downgrade: tuple[ModelName, ...] = Field(min_length=1, max_length=20)


def _on_exceed(value: object) -> object:
    """Say what a policy looks like, instead of pydantic's union error dump."""
    if isinstance(value, str):
        if value in POLICY_NAMES:
            return value
        if value.strip().casefold() == "downgrade":
            raise ValueError(f"on_exceed {value!r} needs the models to try; write on_exceed: "
                             "{downgrade: [gpt-4o-mini]}")
        close = difflib.get_close_matches(value.strip().casefold(), POLICY_NAMES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown on_exceed policy {value!r}; {hint}{_POLICY_FIX}")
    if isinstance(value, Mapping):
        if set(value) != {"downgrade"}:
            extra = sorted(str(k) for k in value if k != "downgrade")
            raise ValueError(f"on_exceed as a mapping takes only downgrade, not "
                             f"{', '.join(extra) or 'nothing'}; {_POLICY_FIX}")
        models = value["downgrade"]
        if isinstance(models, str):
            raise ValueError(f"downgrade is a list of models; write downgrade: [{models}]")
        if not isinstance(models, (list, tuple)) or not models:
            raise ValueError("downgrade needs at least one model to try; write downgrade: "
                             "[gpt-4o-mini]")
        for m in models:
            if not isinstance(m, str) or not m.strip() or m != "".join(m.split()):
                raise ValueError(f"downgrade model {m!r} is not a model name (blank, spaced "
                                 "or not text); write the model as your code names it, "
                                 "e.g. gpt-4o-mini")
        if len(set(models)) != len(models):
            raise ValueError(f"downgrade lists a model twice ({list(models)}); list each "
                             "model once, dearest first")
        return Downgrade(downgrade=tuple(models))
    if isinstance(value, Downgrade):
        return value
    raise ValueError(f"on_exceed is {type(value).__name__}, not a policy; {_POLICY_FIX}")


_POLICY_SCHEMA: dict[str, Any] = {
    "description": "what a call that does not fit its budget does: stop (raise, the "
    "default), end_task (CrewAI: the agent's task ends with a 'budget exhausted' final "
    "answer and the crew goes on), shadow (never block: charge it and record it as "
    "shadow_blocked), or {downgrade: [models]} (send it to the first listed model it fits at)",
    "anyOf": [
        {"type": "string", "enum": list(POLICY_NAMES)},
        {"type": "object", "additionalProperties": False, "required": ["downgrade"],
         "properties": {"downgrade": {
             "type": "array", "minItems": 1, "maxItems": 20, "uniqueItems": True,
             "items": {"type": "string", "pattern": r"^\S+$", "maxLength": 200}}}},
    ],
}
OnExceed = Annotated[
    Literal["stop", "end_task", "shadow"] | Downgrade, BeforeValidator(_on_exceed),
    WithJsonSchema(_POLICY_SCHEMA),
]


def _count(value: object) -> int:
    """A token or call limit: a whole number 0 .. MAX_LIMIT_COUNT.

    ``2_000_000`` (YAML reads the underscores), ``"2,000,000"`` and
    ``"2_000_000"`` are all two million; ``2.5``, ``"2M"``, ``true`` and
    negatives are mistakes, said plainly.
    """
    n: int | None = None
    if isinstance(value, bool):
        n = None
    elif isinstance(value, int):
        n = value
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    elif isinstance(value, str):
        text = value.strip().replace("_", "").replace(",", "")
        if re.fullmatch(r"-?[0-9]{1,16}", text):
            n = int(text)
    if n is None:
        raise ValueError(f"{value!r} is not a whole number of tokens or calls; write e.g. "
                         "500 or 2_000_000")
    if n < 0:
        raise ValueError(f"limit {value!r} is negative; use 0 to block all calls or a "
                         "positive count")
    if n > MAX_LIMIT_COUNT:
        raise ValueError(f"limit {value!r} is above the maximum of {MAX_LIMIT_COUNT:,}; "
                         "counts are compared exactly only below 2**53, and no budget needs "
                         "more than a trillion tokens per window")
    return n


Count = Annotated[
    int, BeforeValidator(_count),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_LIMIT_COUNT},
                              {"type": "string", "pattern": r"^\s*[0-9][0-9_,]*\s*$"}]}),
]


def _check_window_order(values: list[tuple[WindowName, Any]], fmt: str) -> None:
    # A shorter window above a longer one can never bind: the longer one
    # stops spending first. That is a typo (hourly: 50, daily: 5), not a plan.
    for i, (short, low) in enumerate(values):
        for long, high in values[i + 1:]:
            if low > high:
                s, lg = _WINDOW_FIELDS[short], _WINDOW_FIELDS[long]
                raise ValueError(
                    f"{s} {fmt.format(low)} is more than {lg} {fmt.format(high)}, so the {s} "
                    f"limit could never apply; lower {s} to at most {high} or raise {lg}"
                )


class UnitLimits(_Model):
    """Token or call limits per window (``input_tokens:``, ``output_tokens:``,
    ``calls:``), the same window keys as dollars, in whole counts."""

    hourly: Count | None = None
    daily: Count | None = None
    monthly: Count | None = None
    per_run: Count | None = Field(
        default=None, description="cap per run (a `crew_budget.run()` block, e.g. one CrewAI "
        "kickoff); calls outside any run are not limited by it")

    def limit_for(self, window: WindowName) -> int | None:
        value: int | None = getattr(self, _WINDOW_FIELDS[window])
        return value

    def windows(self) -> tuple[WindowName, ...]:
        """The calendar windows with a limit (``per_run`` is not one of them)."""
        return tuple(w for w in WINDOWS if self.limit_for(w) is not None)

    @model_validator(mode="after")
    def _check_windows(self) -> UnitLimits:
        _check_window_order([(w, v) for w in WINDOWS if (v := self.limit_for(w)) is not None],
                            "{:,}")
        return self


#: The units beside USD a budget may limit, as YAML keys (and Bucket.unit).
COUNT_UNITS = ("input_tokens", "output_tokens", "calls")


class Limits(_Model):
    """Dollar limits per window; ``None`` means no limit for that window.

    ``per_run`` caps each run (``crew_budget.run``); it is not compared with
    the calendar limits, since a run may span hours or days.
    ``input_tokens``, ``output_tokens`` and ``calls`` limit those counts per
    window, beside the dollars (see the module docstring).
    """

    hourly: USD | None = None
    daily: USD | None = None
    monthly: USD | None = None
    per_run: USD | None = Field(
        default=None, description="USD cap per run (a `crew_budget.run()` block, e.g. one CrewAI "
        "kickoff); calls outside any run are not limited by it")
    input_tokens: UnitLimits | None = Field(
        default=None, description="prompt tokens per window (as the provider bills them: cached "
        "and cache-written tokens included), e.g. {daily: 2_000_000}")
    output_tokens: UnitLimits | None = Field(
        default=None, description="output tokens per window (reasoning included), reserved at "
        "the request's max_tokens, e.g. {hourly: 50_000}")
    calls: UnitLimits | None = Field(
        default=None, description="LLM calls per window, e.g. {daily: 500, per_run: 3}")

    @field_validator(*COUNT_UNITS, mode="before")
    @classmethod
    def _units_are_windows(cls, value: object, info: ValidationInfo) -> object:
        if value is not None and not isinstance(value, (Mapping, UnitLimits)):
            raise ValueError(
                f"{info.field_name} takes windows, not {type(value).__name__} {value!r}; write "
                f"{info.field_name}: {{daily: {value if isinstance(value, int) else 500}}} "
                "(hourly, daily, monthly or per_run)")
        return value

    def limit_for(self, window: WindowName) -> Decimal | None:
        value: Decimal | None = getattr(self, _WINDOW_FIELDS[window])
        return value

    def windows(self) -> tuple[WindowName, ...]:
        """The calendar windows with a limit (``per_run`` is not one of them)."""
        return tuple(w for w in WINDOWS if self.limit_for(w) is not None)

    def unit_limits(self) -> tuple[tuple[str, UnitLimits], ...]:
        """The token and call limits set, as (unit, limits), in COUNT_UNITS order."""
        out = []
        for unit in COUNT_UNITS:
            limits: UnitLimits | None = getattr(self, unit)
            if limits is not None:
                out.append((unit, limits))
        return tuple(out)

    @model_validator(mode="after")
    def _check_windows(self) -> Limits:
        _check_window_order([(w, v) for w in WINDOWS if (v := self.limit_for(w)) is not None],
                            "${}")
        return self


class ModelLimits(Limits):
    """A model budget (``models:``, or a role's ``models:``): limits, and
    ``exact_count`` (see ``RoleLimits``) for calls to that model."""

    exact_count: bool | None = Field(
        default=None, description="count this model's prompts with the provider's free "
        "token-counting endpoint (Anthropic count_tokens, Gemini countTokens) before "
        "reserving; falls back to the estimate after exact_count_timeout seconds")


class RoleLimits(Limits):
    """A role's limits plus its cap on reserved output tokens (``default_role``),
    and what its calls do when they do not fit (``on_exceed``; None: the
    top-level ``on_exceed``).

    ``exact_count: true`` asks the provider's free token-counting endpoint
    for the prompt's exact count before reserving (Anthropic and Gemini
    models; ``crew_budget.estimate.exact``); None: as the model says.
    """

    max_output_tokens: OutputTokens | None = None
    on_exceed: OnExceed | None = None
    exact_count: bool | None = Field(
        default=None, description="count this role's prompts with the provider's free "
        "token-counting endpoint (Anthropic count_tokens, Gemini countTokens) before "
        "reserving; falls back to the estimate after exact_count_timeout seconds")


class RoleBudget(RoleLimits):
    """A configured role: limits, output cap, and other names it is called by.

    ``aliases`` are matched like the role's own key (exactly, or ignoring
    case and extra whitespace): ``researcher: {aliases: ["Senior Researcher"]}``
    budgets a CrewAI ``Agent(role="Senior Researcher")`` as ``researcher``.
    """

    aliases: tuple[Annotated[str, Field(min_length=1, max_length=200)], ...] = ()
    models: dict[ModelName, ModelLimits] = Field(
        default_factory=dict, description="limits on this role's calls to one model (scope "
        "model:<m>@role:<r>); a key matches the model exactly or without its provider prefix")

    @field_validator("aliases", mode="before")
    @classmethod
    def _aliases_are_a_list(cls, value: object) -> object:
        if isinstance(value, str):
            raise ValueError(f"aliases is a list of names; write aliases: [{value!r}]")
        return value


class CrewLimits(Limits):
    """The flat crew limit, shared by every role of the crew."""

    name: str = Field(default="default", min_length=1, max_length=200,
                      pattern=r"^\S(.*\S)?$")

    @field_validator("name", mode="before")
    @classmethod
    def _check_name(cls, value: object) -> object:
        if isinstance(value, str) and value != value.strip():
            raise ValueError(f"crew name {value!r} starts or ends with whitespace; write "
                             f"{value.strip()!r}")
        if isinstance(value, str) and not value:
            raise ValueError("the crew name is empty; name the crew, e.g. name: research")
        return value


class ModelPrice(_Model):
    """A price the user configures, in USD per million tokens.

    ``tokenizer`` picks the local token counter (``o200k_base``,
    ``cl100k_base``, ``anthropic``, ``approx``) for models neither
    genai-prices nor litellm's map describes.
    """

    input_per_million: PriceUSD
    output_per_million: PriceUSD
    cached_input_per_million: PriceUSD | None = None
    cache_write_per_million: PriceUSD | None = None
    cache_write_1h_per_million: PriceUSD | None = None  # a 1-hour cache write (5-minute above)
    reasoning_per_million: PriceUSD | None = None
    provider: Literal["openai", "anthropic", "other"] = "other"
    tokenizer: str | None = None
    exact_count: bool | None = Field(
        default=None, description="count this model's prompts with the provider's free "
        "token-counting endpoint before reserving (see roles.<r>.exact_count)")


class EstimateMargin(_Model):
    """``estimate_margin:``: how much more than the estimate a call reserves.

    Per model family, a high ``quantile`` of how far the estimator's prompt
    counts fell under what the provider billed, learned from settled calls
    and kept in the ledger (``crew_budget.margin``), capped at ``max``, used
    once a family has ``min_samples`` settles; ``history`` samples are
    remembered (older ones fade by halves). Defaults: p95, 100 %, 20, 2000
    (the module ``crew_budget.margin`` says why).
    """

    enabled: bool = True
    quantile: Decimal = Field(default=Decimal("0.95"), ge=Decimal("0.5"), le=Decimal(1),
                              description="the quantile of under-estimation reserved for")
    max: Decimal = Field(default=Decimal(1), ge=Decimal(0), le=Decimal(1),
                         description="the largest margin, as a fraction of the prompt")
    min_samples: int = Field(default=20, ge=1, le=1_000_000,
                             description="settled calls of a family before its margin applies")
    history: int = Field(default=2000, ge=10, le=100_000_000,
                         description="samples a family remembers before old ones are halved")

    @model_validator(mode="after")
    def _check_history(self) -> EstimateMargin:
        if self.min_samples * 2 > self.history:
            raise ValueError(f"min_samples {self.min_samples} is more than half of history "
                             f"{self.history}, so the margin would switch off each time old "
                             f"samples are halved; raise history to at least "
                             f"{self.min_samples * 2} or lower min_samples")
        return self


def budgets_json_schema() -> dict[str, Any]:
    """The JSON Schema shipped as ``budgets.schema.json`` (editors validate YAML with it).

    Generated from the models, plus what only validators check: the schema
    ``$id`` and alert thresholds of 1..100 %. A test keeps the file in sync:
    regenerate it by writing ``json.dumps(budgets_json_schema(), indent=2)`` plus a
    newline to ``src/crew_budget/budgets.schema.json``.
    """
    schema = BudgetConfig.model_json_schema(by_alias=True)
    percent = {"type": "integer", "minimum": 1, "maximum": 100}
    alerts = schema["$defs"]["AlertsConfig"]["properties"]
    alerts["thresholds"]["items"] = dict(percent)
    alerts["scope_thresholds"]["additionalProperties"]["items"] = dict(percent)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            **schema}


def check_code_limits(
    role: object,
    *,
    hourly: object = None,
    daily: object = None,
    monthly: object = None,
    max_output_tokens: object = None,
) -> dict[str, Any]:
    """Check limits given in code (``Guard.limit_role``, ``BudgetLLM(daily_usd=...)``).

    The same bounds as the YAML, so a limit set in code cannot reach what
    the file would refuse. Returns the parsed values by field name.
    """
    source = "limits set in code"
    if not isinstance(role, str) or not role.strip():
        raise ConfigError(f"limits need a role name, got {role!r}; pass role='researcher'",
                          source=source)
    out: dict[str, Any] = {}
    for name, value in (("hourly", hourly), ("daily", daily), ("monthly", monthly)):
        if value is None:
            continue
        try:
            out[name] = _usd(value)
        except ValueError as exc:
            raise ConfigError(f"{name}_usd: {exc}", source=source, path=role) from None
    if max_output_tokens is not None:
        if (isinstance(max_output_tokens, bool) or not isinstance(max_output_tokens, int)
                or not 1 <= max_output_tokens <= MAX_OUTPUT_TOKENS):
            raise ConfigError(f"max_output_tokens must be a whole number from 1 to "
                              f"{MAX_OUTPUT_TOKENS:,}, got {max_output_tokens!r}",
                              source=source, path=role)
        out["max_output_tokens"] = max_output_tokens
    return out


def _at(loc: tuple[str, ...], message: str) -> ValueError:
    """A model-level error that still reports its key path (see ``_validate``)."""
    exc = ValueError(message)
    exc.crew_budget_loc = loc  # type: ignore[attr-defined]
    return exc


RoleName = Annotated[str, Field(max_length=200)]  # blank names: _check_roles says why


class BudgetConfig(_Model):
    """The whole budget configuration (one YAML file)."""

    version: Literal[1] = 1
    timezone: str = "UTC"
    ledger: str | None = None
    namespace: str = Field(default="default", pattern=r"^[A-Za-z0-9_.\-]+$", max_length=128)
    fail_open: bool = False
    # What a ledger that lost its state does (crew_budget.LedgerReset): block
    # every call until `crew-budget recover --accept-loss`, or record the
    # loss and go on from $0.
    on_ledger_reset: Literal["block", "continue"] = "block"
    # Where calls let through by fail_open are journaled until the ledger
    # returns (default: <state dir>/crew-budget/journal-<namespace>-<url hash>.jsonl).
    journal: str | None = None
    lease_seconds: int = Field(default=600, ge=1, le=MAX_LEASE_SECONDS)
    retention_days: int = Field(default=90, ge=1, le=MAX_RETENTION_DAYS)
    # How long raw spend records (one per call) are kept, apart from the
    # hourly rollups reports read (kept 400 days). None: retention_days on
    # memory/SQLite, 7 days on Redis (a record is ~600 bytes of RAM); 0: none.
    records_retention_days: int | None = Field(default=None, ge=0, le=MAX_RETENTION_DAYS)
    default_max_output_tokens: OutputTokens = 4096
    global_limits: Limits | None = Field(default=None, alias="global")
    crew: CrewLimits | None = None
    roles: dict[RoleName, RoleBudget] = Field(default_factory=dict)
    default_role: RoleLimits | None = None
    unknown_roles: Literal["refuse", "allow"] = "refuse"
    # What a call that does not fit does, for roles that do not say
    # (roles.<r>.on_exceed); `mode: shadow` makes every role shadow.
    on_exceed: OnExceed = "stop"
    mode: Literal["enforce", "shadow"] = Field(
        default="enforce", description="shadow: never block any call; calls that would have "
        "been blocked are charged and recorded as shadow_blocked (roll budgets out safely)")
    # The role charged for LLM calls a CrewAI crew makes for itself rather
    # than for one agent (manager converter, planning, guardrails, memory,
    # crew.test()). None means "crew". With no budget of its own under roles:
    # such calls are charged to the crew and global budgets only.
    crew_role: str | None = Field(default=None, min_length=1)
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    models: dict[ModelName, ModelLimits] = Field(
        default_factory=dict, description="limits on one model across all roles (scope "
        "model:<m>); a key matches the model exactly or without its provider prefix")
    alerts: AlertsConfig | None = None
    estimate_margin: EstimateMargin = Field(default_factory=EstimateMargin)
    exact_count_timeout: Decimal = Field(
        default=Decimal(2), gt=Decimal(0), le=Decimal(30),
        description="seconds to wait for a token-counting endpoint (exact_count) before "
        "reserving from the estimate instead")

    @model_validator(mode="after")
    def _check_roles(self) -> BudgetConfig:
        seen: dict[str, str] = {}
        for key, budget in self.roles.items():
            if not key.strip():
                raise _at(("roles", key), "a role name cannot be empty or blank; name the "
                          "agent role, e.g. researcher")
            names = [(key, "role")] + [(a, "alias") for a in budget.aliases]
            for name, kind in names:
                if not name.strip():
                    raise _at(("roles", key, "aliases"), "an alias cannot be empty or blank; "
                              "remove it or write the agent's role name")
                norm = normalize_role(name)
                if norm == DEFAULT_ROLE:
                    raise _at(("roles", key), f"{name!r} is reserved for the default_role: "
                              "budget; rename this role, or move its limits under "
                              "default_role:")
                other = seen.get(norm)
                if other is not None and other != key:
                    raise _at(("roles", key), f"{kind} {name!r} matches role {other!r} "
                              "too (roles match ignoring case and extra whitespace); "
                              "give each role distinct names")
                seen[norm] = key
        if self.default_role is not None and self.unknown_roles == "allow":
            raise _at(("unknown_roles",), "unknown_roles: allow and default_role: both say "
                      "what happens to roles not listed; keep default_role: (they share its "
                      "budget) or unknown_roles: allow (crew/global budgets only), not both")
        if self.alerts is not None:
            self._check_alert_scopes(self.alerts)
        self._check_models()
        return self

    def _check_models(self) -> None:
        # A model name with a space can never match a call's model: the
        # budget would silently never apply.
        places: list[tuple[tuple[str, ...], Mapping[str, Limits]]] = [
            (("models",), self.models)]
        places += [(("roles", k, "models"), b.models) for k, b in self.roles.items()]
        for loc, models in places:
            for key in models:
                if not key.strip() or key != "".join(key.split()):
                    raise _at((*loc, key), f"model name {key!r} is blank or contains "
                              "whitespace, so it would match no call; write the model as "
                              "your code names it, e.g. gpt-4o or openai/gpt-4o")

    def _check_alert_scopes(self, alerts: AlertsConfig) -> None:
        # A threshold above 100 % never fires (spend stops at the limit); a
        # threshold for a scope that does not exist never fires either.
        for pct in alerts.thresholds:
            if pct > 100:
                raise _at(("alerts", "thresholds"), f"threshold {pct} is above 100 %: spend "
                          "stops at the limit, so it would never fire; use e.g. [50, 80, 100]")
        scopes = {f"role:{k}" for k in self.roles} | {"global"}
        if self.default_role is not None:
            scopes.add(f"role:{DEFAULT_ROLE}")
        if self.crew is not None:
            scopes.add(f"crew:{self.crew.name}")
        scopes |= {f"model:{m}" for m in self.models}  # the guard's model scope names
        scopes |= {f"model:{m}@role:{r}" for r, b in self.roles.items() for m in b.models}
        for scope, pcts in alerts.scope_thresholds.items():
            if scope not in scopes:
                raise _at(("alerts", "scope_thresholds", scope), f"scope {scope!r} is not a "
                          f"budget in this file (budgets: {', '.join(sorted(scopes))}); fix "
                          "the name")
            for pct in pcts:
                if pct > 100:
                    raise _at(("alerts", "scope_thresholds", scope), f"threshold {pct} is "
                              "above 100 %: spend stops at the limit, so it would never "
                              "fire; use e.g. [50, 80, 100]")

    @field_validator("namespace", mode="before")
    @classmethod
    def _check_namespace(cls, value: object) -> object:
        if isinstance(value, str) and not re.fullmatch(r"[A-Za-z0-9_.\-]+", value):
            raise ValueError(f"namespace {value!r} may use only letters, digits, '_', '.' and "
                             "'-' (it is part of every ledger key); e.g. research-prod")
        return value

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

    # -- roles ---------------------------------------------------------------

    def match_role(self, name: str) -> str | None:
        """The configured role key ``name`` means, or ``None``.

        Exact key first, then keys and ``aliases`` compared ignoring case and
        extra whitespace. ``default_role`` and ``unknown_roles`` play no part.
        """
        if name in self.roles:
            return name
        norm = normalize_role(name)
        for key, budget in self.roles.items():
            if normalize_role(key) == norm or any(normalize_role(a) == norm
                                                  for a in budget.aliases):
                return key
        return None

    def resolve_role(self, name: object) -> str:
        """The role a call by ``name`` is charged to, or raise ``UnknownRoleError``.

        Returns the configured key (``" RESEARCHER "`` -> ``"researcher"``),
        the ``crew_role`` name itself when it has no budget of its own but a
        ``crew:`` or ``global:`` budget exists (calls made for the crew are
        charged to those), ``DEFAULT_ROLE`` when ``default_role`` covers it, or, with
        ``unknown_roles: allow``, the name itself (whitespace tidied), which
        then touches no role budget. A missing or blank name is always refused.
        """
        if not isinstance(name, str) or not name.strip():
            raise UnknownRoleError(name, configured=tuple(self.roles))
        key = self.match_role(name)
        if key is not None:
            return key
        crew_role = self.crew_role or DEFAULT_CREW_ROLE
        if (normalize_role(name) == normalize_role(crew_role)
                and (self.crew is not None or self.global_limits is not None)):
            # Calls made for the crew itself: the crew's own budget covers
            # them when crew_role has none of its own (issue 14).
            return crew_role
        if self.default_role is not None:
            return DEFAULT_ROLE
        if self.unknown_roles == "allow":
            return " ".join(name.split())
        raise UnknownRoleError(name, configured=tuple(self.roles),
                               suggestion=self.closest_role(name))

    def closest_role(self, name: str) -> str | None:
        """The configured role most like ``name`` (for "did you mean"), if any is close."""
        forms: dict[str, str] = {}
        for key, budget in self.roles.items():
            forms.setdefault(normalize_role(key), key)
            for alias in budget.aliases:
                forms.setdefault(normalize_role(alias), key)
        norm = normalize_role(name)
        close = difflib.get_close_matches(norm, list(forms), n=1, cutoff=0.6)
        if close:
            return forms[close[0]]
        words = set(norm.replace("_", " ").replace("-", " ").split())
        for form, key in forms.items():
            if form in words or set(form.split()) <= words:
                return key
        return None

    def role_budget(self, role: str) -> RoleLimits | None:
        """The budget a role's calls are charged to: its own, or ``default_role``."""
        budget = self.roles.get(role)
        if budget is not None:
            return budget
        if role != DEFAULT_ROLE:
            key = self.match_role(role)
            if key is not None:
                return self.roles[key]
        return self.default_role

    def policy_for(self, role: str) -> str | Downgrade:
        """The on-exceed policy of a call by ``role`` (resolved): ``mode: shadow``
        first, then the role's (or ``default_role``'s) ``on_exceed``, then the
        top-level ``on_exceed``."""
        if self.mode == "shadow":
            return "shadow"
        # ``role`` is resolved (a key, DEFAULT_ROLE, or a name with no role
        # budget): two dict lookups, no name matching, on every preflight.
        budget: RoleLimits | None = self.roles.get(role)
        if budget is None and role == DEFAULT_ROLE:
            budget = self.default_role
        if budget is not None and budget.on_exceed is not None:
            return budget.on_exceed
        return self.on_exceed

    def max_output_tokens(self, role: str) -> int:
        budget = self.role_budget(role)
        if budget is not None and budget.max_output_tokens is not None:
            return budget.max_output_tokens
        return self.default_max_output_tokens

    def has_limits(self) -> bool:
        """Whether any budget is configured at all (else every call is allowed)."""
        return bool(self.roles or self.default_role or self.crew or self.global_limits
                    or self.models)

    def model_scopes(self, role: str | None, model: str | None) -> list[tuple[str, Limits]]:
        """The model budgets a call by ``role`` (resolved) to ``model`` touches.

        ``model:<key>`` from ``models:`` and ``model:<key>@role:<role>`` from
        the role's ``models:``; a key matches as ``model_matches`` says. With
        ``model`` None, every one of them (for ``status``); with ``role``
        None, every role's.
        """
        out: list[tuple[str, Limits]] = []
        for key, limits in self.models.items():
            if model is None or model_matches(key, model):
                out.append((f"model:{key}", limits))
        budgets: list[tuple[str, RoleBudget | None]] = (
            list(self.roles.items()) if role is None else [(role, self.roles.get(role))])
        for name, budget in budgets:
            if budget is None:
                continue
            for key, limits in budget.models.items():
                if model is None or model_matches(key, model):
                    out.append((f"model:{key}@role:{name}", limits))
        return out

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
        limits can only be tightened this way, never loosened. ``role`` is
        matched like a call's role (``"Researcher"`` tightens ``researcher``);
        a role the YAML does not list is added. Limits are checked against
        the same bounds as the YAML (``ConfigError`` names the argument).
        """
        amounts = check_code_limits(role, hourly=hourly, daily=daily, monthly=monthly,
                                    max_output_tokens=max_output_tokens)
        key = self.match_role(role)
        is_default = key is None and normalize_role(role) == DEFAULT_ROLE
        if key is None and not is_default:
            key = " ".join(role.split())
        current: RoleLimits | None = (
            self.default_role if is_default else self.roles.get(key or "") or self.default_role
        )
        merged: dict[str, Any] = current.model_dump() if current is not None else {}
        if is_default or key not in self.roles:
            merged.pop("aliases", None)
        for name, amount in amounts.items():
            old = merged.get(name)
            merged[name] = amount if old is None else min(old, amount)
        try:
            if is_default:
                return self.model_copy(update={"default_role": RoleLimits(**merged)})
            roles = dict(self.roles)
            assert key is not None
            roles[key] = RoleBudget(**merged)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(_explain(err), source="limits set in code", path=role) from None
        return self.model_copy(update={"roles": roles})


def model_matches(key: str, model: str) -> bool:
    """Whether the ``models:`` key ``key`` names the call's ``model``.

    Exactly, or after removing the call's provider prefix (the text up to
    the first ``/``): ``gpt-4o`` matches ``gpt-4o`` and ``openai/gpt-4o``;
    ``openai/gpt-4o`` matches only ``openai/gpt-4o``. Case matters, as it
    does for prices.
    """
    return key == model or ("/" in model and model.split("/", 1)[1] == key)


def check_ledger_url(url: str) -> None:
    """Raise ``ValueError`` for a URL no ledger can open; the message shows it redacted."""
    from crew_budget.redact import redact_url

    shown = redact_url(url)  # a password in the URL never reaches a message
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises for a port that is not a number)
    except ValueError as exc:
        raise ValueError(f"ledger URL {shown!r} does not parse ({exc}); write "
                         "redis://host:6379/0 or sqlite:///path/to/ledger.db") from None
    if parts.scheme not in LEDGER_SCHEMES:
        raise ValueError(
            f"ledger URL {shown!r} has unsupported scheme {parts.scheme!r}; use one of "
            "memory://, sqlite:///path/to/ledger.db, redis://host:6379/0, rediss://..."
        )
    if parts.scheme == "sqlite" and not parts.path.strip("/"):
        raise ValueError(f"ledger URL {shown!r} names no file; write sqlite:///path/to/ledger.db")
    if parts.scheme.startswith("redis") and not parts.hostname:
        raise ValueError(f"ledger URL {shown!r} names no host; write redis://host:6379/0")


def default_ledger_url() -> str:
    """The embedded SQLite ledger under the user's state directory."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return f"sqlite:///{Path(state) / 'crew-budget' / 'ledger.db'}"


#: The environment variable naming the budget YAML (second in the lookup order).
CONFIG_ENV = "CREW_BUDGET_CONFIG"
#: The file looked for in the working directory (last in the lookup order).
CONFIG_FILE = "budgets.yaml"


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The budget YAML to use: ``explicit``, else ``$CREW_BUDGET_CONFIG``, else
    ``./budgets.yaml`` if it exists, else ``None``.

    One order for the library, the CLI and the LiteLLM proxy, so that
    ``crew-budget status`` shows the limits the proxy enforces: the variable
    is what a deployment sets on purpose, a ``budgets.yaml`` in whatever
    directory a shell happens to be in is a guess. A path that is named
    (argument or variable) is returned even if it does not exist, so loading
    it fails naming it rather than silently falling back to another file.
    """
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    local = Path(CONFIG_FILE)
    return local if local.is_file() else None


def load_config(source: str | os.PathLike[str] | Mapping[str, Any] | BudgetConfig) -> BudgetConfig:
    """Load and validate a budget configuration from a YAML file or a mapping.

    A file must be UTF-8 YAML of at most ``MAX_CONFIG_BYTES`` whose top level
    is a mapping with no duplicate keys; an empty file is an error (it would
    otherwise mean "no limits"). A mapping is validated the same way.
    """
    if isinstance(source, BudgetConfig):
        return source
    if isinstance(source, Mapping):
        return _validate(dict(source), "<dict>")
    path = Path(source)
    name = str(path)
    data = _parse_yaml(_read_text(path, name), name)
    if data is None:
        raise ConfigError(
            "the file is empty (or only comments), which would mean no budgets at all; "
            "write at least one of roles:, default_role:, crew: or global: "
            "(see examples/budgets.yaml)",
            source=name,
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"the top level must be a mapping (roles:, crew:, ...), not {type(data).__name__}",
            source=name,
        )
    return _validate(data, name)


def _read_text(path: Path, name: str) -> str:
    """The file's text, or a ``ConfigError`` that says what the path really is."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            "file not found; pass the path of your budget YAML (see examples/budgets.yaml)",
            source=name,
        ) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a file; pass the budget YAML file inside it "
                          "(e.g. budgets.yaml)", source=name) from None
    except PermissionError:
        raise ConfigError("cannot be read (permission denied); make it readable by this "
                          "user", source=name) from None
    except OSError as exc:
        raise ConfigError(f"cannot be read ({exc.strerror or exc}); pass a regular YAML file",
                          source=name) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"is larger than {MAX_CONFIG_BYTES:,} bytes; a budget YAML is a few "
                          "kilobytes, so this is probably the wrong file", source=name)
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise ConfigError(f"is not a text file (a NUL byte at offset {nul}); pass the budget "
                          "YAML", source=name)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"line {line}: is not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                          f"offset {exc.start}); save the file as UTF-8", source=name) from None


def _parse_yaml(text: str, name: str) -> Any:
    """Parse YAML strictly: duplicate keys and alias bombs are errors, with their line."""
    import yaml  # only file loading needs it; keeps `Guard(dict)` imports lean

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, name)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(
            f"{where}not valid YAML ({getattr(exc, 'problem', None) or exc}); fix the syntax "
            "there",
            source=name,
        ) from None
    except RecursionError:
        raise ConfigError("is nested too deeply to be a budget file; check for runaway "
                          "brackets", source=name) from None
    finally:
        loader.dispose()


def _check_nodes(root: Any, name: str) -> None:
    """Refuse duplicate keys (YAML keeps the last one silently) and oversized trees.

    ``daily: 1`` then ``daily: 100`` would give $100; two ``roles:`` blocks
    would drop every role of the first. Sizes count aliases expanded, since
    validation walks the expanded tree (a "billion laughs" file is small).
    """
    import yaml

    sizes: dict[int, int] = {}
    # Iterative post-order walk; each node is visited once (aliases share nodes).
    stack: list[tuple[Any, tuple[str, ...], bool]] = [(root, (), False)]
    while stack:
        node, path, done = stack.pop()
        if id(node) in sizes and not done:
            continue
        if isinstance(node, yaml.MappingNode):
            children = [v for _k, v in node.value] + [k for k, _v in node.value]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            sizes[id(node)] = 1
            continue
        if done:
            sizes[id(node)] = 1 + sum(sizes.get(id(c), 1) for c in children)
            if sizes[id(node)] > MAX_CONFIG_NODES:
                line = node.start_mark.line + 1
                raise ConfigError(
                    f"line {line}: expands to more than {MAX_CONFIG_NODES:,} values (YAML "
                    "anchors and aliases included); a budget file needs far fewer",
                    source=name, path=".".join(path))
            continue
        if isinstance(node, yaml.MappingNode):
            _check_duplicates(node, path, name)
        stack.append((node, path, True))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                label = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
                stack.append((value, (*path, label), False))
                stack.append((key, path, False))
        else:
            for i, child in enumerate(node.value):
                stack.append((child, (*path, str(i)), False))


def _check_duplicates(node: Any, path: tuple[str, ...], name: str) -> None:
    import yaml

    first: dict[tuple[str, str], int] = {}
    for key, _value in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        ident = (key.tag, key.value)
        line = key.start_mark.line + 1
        if ident in first:
            where = ".".join((*path, key.value))
            raise ConfigError(
                f"line {line}: duplicate key {key.value!r} (first set on line {first[ident]}); "
                "YAML would silently keep only the last one, so merge them into one entry",
                source=name, path=where)
        first[ident] = line


def _validate(data: dict[str, Any], source: str) -> BudgetConfig:
    try:
        return BudgetConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        loc += tuple(getattr(cause, "crew_budget_loc", ()))
        path = ".".join(str(p) for p in loc) or "<top>"
        raise ConfigError(_explain({**err, "loc": loc}), source=source, path=path) from None


def _plain_message(err: Mapping[str, Any]) -> str | None:
    """Messages that must not end in a bare ``(got ...)`` echo of the value.

    An empty section, a section of the wrong type, and a message that
    already quotes the value. Values that could carry a credential (``@``, a
    URL with a query) are left to the generic path, which may redact them.
    """
    kind = err.get("type", "")
    loc = tuple(err.get("loc", ()))
    value = err.get("input")
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "missing":
        return None
    if value is None and kind in ("model_type", "dict_type", "model_attributes_type"):
        return "is empty; give it settings such as {daily: 5}, or {} for no limits of its own"
    if kind == "dict_type":
        example = ("researcher: {daily: 5}" if loc == ("roles",) else "gpt-4o: {daily: 10}"
                   if loc[-1:] == ("models",) else "key: value")
        return f"{msg}; write it as a mapping ({example}), not {type(value).__name__}"
    if isinstance(value, (Mapping, list)):
        return msg  # a whole section: the message names the keys involved
    if isinstance(value, str) and ("@" in value or ("://" in value and "?" in value)):
        return None  # may hold a password or token
    if repr(value) in msg or (isinstance(value, (int, float, Decimal)) and str(value) in msg):
        return msg  # the message already quotes the value
    return None


def _explain(err: Mapping[str, Any]) -> str:
    kind = err.get("type", "")
    loc = err.get("loc", ())
    if kind == "extra_forbidden":
        key = loc[-1] if loc else "?"
        parent = loc[-2] if len(loc) > 1 else ""
        known = {
            "": "version, timezone, ledger, namespace, fail_open, on_ledger_reset, journal, "
            "lease_seconds, retention_days, records_retention_days, default_max_output_tokens, "
            "global, crew, roles, default_role, unknown_roles, crew_role, on_exceed, mode, "
            "prices, models, alerts, estimate_margin, exact_count_timeout",
        }
        # Name the unit keys when the mistake is about tokens or calls (a
        # "tokens:", "daily_calls:", "requests:"), leaving other hints as they were.
        units = ("; token and call limits: input_tokens, output_tokens, calls (e.g. "
                 "calls: {daily: 500})"
                 if key != "max_output_tokens" and re.search(r"token|call|request", str(key))
                 else "")
        if parent in COUNT_UNITS:
            close = difflib.get_close_matches(str(key), list(_WINDOW_FIELDS.values()), n=1)
            hint = ((f"did you mean {close[0]!r}? " if close else "")
                    + f"{parent} takes hourly, daily, monthly and per_run (whole counts), "
                    f"e.g. {parent}: {{daily: 500}}")
        elif len(loc) > 2 and loc[-3] == "models":
            hint = f"a model budget takes hourly, daily, monthly, per_run and exact_count{units}"
        elif parent == "roles" or (len(loc) > 2 and loc[-3] == "roles"):
            hint = ("a role takes hourly, daily, monthly, per_run, max_output_tokens, aliases, "
                    f"models, on_exceed and exact_count{units}")
        elif parent == "default_role":
            hint = ("default_role takes hourly, daily, monthly, per_run, max_output_tokens, "
                    f"on_exceed and exact_count{units}")
        elif parent == "estimate_margin":
            hint = "estimate_margin takes enabled, quantile, max, min_samples and history"
        elif parent in ("crew", "global"):
            hint = f"use hourly, daily, monthly or per_run (crew also takes name){units}"
        elif loc and loc[0] == "alerts":
            hint = alerts_key_hint(loc)
        elif len(loc) > 2 and loc[-3] == "prices":
            hint = (
                "a price takes input_per_million, output_per_million, cached_input_per_million, "
                "cache_write_per_million, reasoning_per_million, provider, tokenizer, "
                "exact_count"
            )
        else:
            hint = f"known keys: {known['']}"
        return f"unknown key {key!r}; {hint}"
    plain = _plain_message(err)
    if plain is not None:
        return plain
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    if kind == "missing":
        return "required key is missing; add it"
    from crew_budget.redact import redact_text  # the echoed value may be a URL with a password

    text, got = redact_text(msg), redact_text(repr(err.get("input")))
    return text if got in text else f"{text} (got {got})"  # no value quoted twice
