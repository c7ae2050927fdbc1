"""The exceptions crew-budget raises.

One base class so callers can catch everything of ours in one place, and a
narrow class per problem so they can catch exactly one thing::

    CrewBudgetError
    ├── ConfigError            bad YAML, unknown key, negative budget, bad URL
    ├── PricingError
    │   └── UnknownModelError  no price known for a model (never priced at $0)
    ├── UsageError             a provider response whose usage cannot be read
    ├── AmountError            an amount or token count outside its documented bounds
    ├── UnknownRoleError       a call names no role, or one that matches no budget
    ├── LedgerError
    │   ├── LedgerUnavailable  the ledger cannot be reached (fail closed)
    │   │   ├── LedgerNotFound no ledger at that path (read-only open)
    │   │   └── LedgerReset    the ledger answers but lost its state (flush,
    │   │                      restart without persistence, empty replica)
    │   └── ReservationError   unknown or foreign reservation id
    └── BudgetExceeded         a call would cross a budget: it was not sent
        └── RolePaused         an operator paused the role (crew-budget pause)

Every error carries its facts as attributes, and its message names the
problem *and* the fix, because the person reading it is usually looking at
a stack trace from inside an agent framework, far from our code.
"""

from __future__ import annotations

from decimal import Decimal


class CrewBudgetError(Exception):
    """Base class of every error crew-budget raises."""


class ConfigError(CrewBudgetError, ValueError):
    """The budget configuration is invalid.

    ``source`` is the file (or ``"<dict>"``), ``path`` the dotted key path.
    """

    def __init__(self, message: str, *, source: str = "<config>", path: str = "") -> None:
        self.source = source
        self.path = path
        self.detail = message
        where = f"{source}: {path}: " if path else f"{source}: "
        super().__init__(where + message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_config_error, (type(self), self.detail, self.source, self.path))


def _rebuild_config_error(
    cls: type[ConfigError], message: str, source: str, path: str
) -> ConfigError:
    return cls(message, source=source, path=path)


class PricingError(CrewBudgetError):
    """A price could not be determined."""


class UnknownModelError(PricingError, LookupError):
    """No price is known for ``model``; pricing it at $0 would hide spend."""

    def __init__(self, model: str, *, suggestions: tuple[str, ...] = ()) -> None:
        self.model = model
        self.suggestions = suggestions
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(
            f"no price known for model {model!r}.{hint} Fix: use a model name that "
            f"genai-prices or litellm's price map knows (say which provider serves it: "
            f"a prefix such as 'anthropic/' or 'bedrock/', or provider=...), or add it "
            f"under `prices:` in your budget YAML (input_per_million / output_per_million "
            f"in USD)."
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_unknown_model, (type(self), self.model, self.suggestions))


def _rebuild_unknown_model(
    cls: type[UnknownModelError], model: str, suggestions: tuple[str, ...]
) -> UnknownModelError:
    return cls(model, suggestions=suggestions)


class UnknownRoleError(CrewBudgetError, LookupError):
    """A call named no role, or a role that matches no configured budget.

    Such a call would otherwise run with no role budget at all, so it is
    refused before anything is reserved or sent (invariant 9). ``role`` is
    the name as given, ``configured`` the configured role names, and
    ``suggestion`` the closest configured role (or ``None``).
    """

    def __init__(
        self,
        role: object,
        *,
        configured: tuple[str, ...] = (),
        suggestion: str | None = None,
    ) -> None:
        self.role = role
        self.configured = configured
        self.suggestion = suggestion
        if not isinstance(role, str) or not role.strip():
            message = (
                f"this LLM call names no agent role (got {role!r}), so no role budget can "
                f"be charged and it was not sent. Fix: pass the role whose budget it spends, "
                f"e.g. role='researcher', a name listed under roles: in your budget YAML."
            )
        else:
            known = ", ".join(configured) if configured else "none"
            closest = f"; closest match: {suggestion!r}" if suggestion else ""
            alias = (f" (or, if it is the same agent, as an alias: "
                     f"`{suggestion}: {{aliases: [{role!r}]}}`)" if suggestion else "")
            message = (
                f"unknown role {role!r}: it matches no budget under roles: (configured roles: "
                f"{known}{closest}), so the call was not sent rather than run without a role "
                f"budget. Roles match exactly, or ignoring case and extra whitespace. Fix: use "
                f"a configured role name, add {role!r} under roles:{alias}, set default_role: "
                f"to budget every role not listed, or set unknown_roles: allow to charge "
                f"unlisted roles to the crew and global budgets only."
            )
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_unknown_role, (type(self), self.role, self.configured, self.suggestion))


def _rebuild_unknown_role(
    cls: type[UnknownRoleError], role: object, configured: tuple[str, ...],
    suggestion: str | None,
) -> UnknownRoleError:
    return cls(role, configured=configured, suggestion=suggestion)


class UsageError(CrewBudgetError, ValueError):
    """A provider response carried no readable token usage."""


class AmountError(CrewBudgetError, ValueError):
    """An amount (nano-USD) or a token count outside its documented bounds.

    Amounts handed to a ledger must be ints in ``[0, MAX_NANO)``, request
    ``max_tokens`` an int in ``[1, MAX_TOKENS]`` (see ``crew_budget.money``).
    Refused before the first write on every backend (and again inside each
    Redis script), so a bad value can never leave the books half updated.
    """


class LedgerError(CrewBudgetError):
    """The ledger failed to carry out an operation."""


class LedgerUnavailable(LedgerError, ConnectionError):
    """The ledger cannot be reached. Calls are blocked unless ``fail_open``.

    ``url`` and ``reason`` are redacted (no password or token): this message
    is printed by users' code and lands in their logs.
    """

    def __init__(self, url: str, reason: str) -> None:
        from crew_budget.redact import redact_text, redact_url

        self.url = url = redact_url(url)
        self.reason = reason = redact_text(reason)
        super().__init__(
            f"budget ledger {url} is unreachable ({reason}); the LLM call was blocked "
            f"because budgets fail closed. Fix: start or reach the ledger (check the URL "
            f"in `ledger:` or CREW_BUDGET_LEDGER), or set `fail_open: true` to allow "
            f"unguarded calls while it is down."
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.url, self.reason))


class LedgerNotFound(LedgerUnavailable):
    """A ledger opened without ``create`` (the read-only CLI commands) does not exist.

    Reading a typo'd path must not create an empty ledger there and report
    $0.00 spent: it is an error naming the path. ``path`` is the file looked for.
    """

    def __init__(self, url: str, path: str) -> None:
        from crew_budget.redact import redact_url

        self.path = path
        self.url = url = redact_url(url)
        self.reason = f"no ledger at {path}"
        # LedgerUnavailable's "is unreachable ... fail open" text would mislead here.
        LedgerError.__init__(
            self,
            f"no ledger at {path}: check the ledger URL ({url}) in --ledger, "
            "CREW_BUDGET_LEDGER or `ledger:`, or run a guarded call first to create it",
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.url, self.path))


class ReservationError(LedgerError, LookupError):
    """A reservation id the ledger does not know (or that is not ours)."""


class LedgerReset(LedgerUnavailable):
    """The ledger lost the state it held (spend, reservations, records).

    A Redis restarted without persistence, a ``FLUSHALL``/``FLUSHDB``, keys
    evicted under memory pressure, a failover to an empty replica, or a
    replaced SQLite file: budgets would silently restart from $0, so calls
    are refused (``on_ledger_reset: block``, the default) until an operator
    accepts the loss with ``crew-budget recover --accept-loss``.

    A ``LedgerUnavailable`` so code that already handles an unusable ledger
    handles this too; ``fail_open`` does not apply to it (the ledger is
    reachable, its books are not trustworthy). ``detail`` says what was
    detected.
    """

    def __init__(self, url: str, detail: str) -> None:
        self.url = url
        self.reason = detail
        self.detail = detail
        LedgerError.__init__(
            self,
            f"budget ledger {url} lost its state ({detail}): the spend, reservations and "
            f"records it held are gone, so budgets would restart from $0. The LLM call was "
            f"blocked and nothing was charged. Fix: find out why (a Redis restart without "
            f"persistence, FLUSHALL/FLUSHDB, eviction, a failover to an empty replica; "
            f"`crew-budget doctor` checks the settings), then re-arm the ledger with "
            f"`crew-budget recover --accept-loss --reason '...'`, or set "
            f"`on_ledger_reset: continue` to accept such losses automatically."
        )


class BudgetExceeded(CrewBudgetError):
    """The call would cross a budget, so it was not sent.

    Attributes: ``role``, ``scope`` (e.g. ``"role:researcher"`` or
    ``"crew:research"``), ``window`` (``hour``/``day``/``month``, or ``run``
    for a per-run budget), ``period`` (the window instance, e.g.
    ``"2026-11-25"``, or the run's id), ``limit``,
    ``spent``, ``reserved`` and ``estimate`` in ``Decimal`` USD, and
    ``model``. ``unit`` is ``usd``, or the token/call limit that refused
    the call (``input_tokens``, ``output_tokens``, ``calls``): then
    ``limit``, ``spent``, ``reserved`` and ``estimate`` (what this call
    needed) are whole counts of it.
    """

    def __init__(
        self,
        *,
        role: str,
        scope: str,
        window: str,
        period: str,
        limit: Decimal,
        spent: Decimal,
        reserved: Decimal,
        estimate: Decimal,
        model: str = "",
        message: str | None = None,
        unit: str = "usd",
    ) -> None:
        self.role = role
        self.scope = scope
        self.window = window
        self.period = period
        self.limit = limit
        self.spent = spent
        self.reserved = reserved
        self.estimate = estimate
        self.model = model
        self.unit = unit
        if message is None and unit != "usd":
            # "role:researcher daily input_tokens: 1,998,000 of 2,000,000 used"
            every = {"hour": "hourly", "day": "daily", "month": "monthly",
                     "run": "per-run"}.get(window, window)
            where = f" (run {period})" if window == "run" else f" ({period})"
            held = f", {reserved:,} of it reserved by calls in flight" if reserved else ""
            message = (
                f"budget exceeded for role {role!r}: {scope} {every} {unit}: "
                f"{spent + reserved:,} of {limit:,} used{where}{held}; this "
                f"{model or 'LLM'} call needs {estimate:,}, so it was not sent."
            )
        if message is None:
            remaining = limit - spent - reserved
            if window == "run":  # crew_budget.run: the period is the run's id
                what = "run" if scope == "run" else f"{scope} per-run"
                budget = f"{what} budget ${_fmt(limit)} (run {period})"
            else:
                budget = f"{scope} {window} budget ${_fmt(limit)} ({period})"
            message = (
                f"budget exceeded for role {role!r}: {budget} "
                f"has ${_fmt(spent)} spent and ${_fmt(reserved)} "
                f"reserved (${_fmt(max(remaining, Decimal(0)))} left); this {model or 'LLM'} "
                f"call is estimated at ${_fmt(estimate)}, so it was not sent."
            )
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only __init__: make pickling (multiprocessing, Celery) work.
        return (_rebuild_budget_exceeded, (type(self), self._fields(), str(self)))

    def _fields(self) -> dict[str, object]:
        return {
            "role": self.role,
            "scope": self.scope,
            "window": self.window,
            "period": self.period,
            "limit": self.limit,
            "spent": self.spent,
            "reserved": self.reserved,
            "estimate": self.estimate,
            "model": self.model,
            "unit": self.unit,
        }


class RolePaused(BudgetExceeded):
    """An operator paused the role (``crew-budget pause``): every call is refused.

    A ``BudgetExceeded`` so every adapter stops the agent as it does at a
    spent budget. Besides the budget's facts (the paused window's limit is
    $0), ``paused_by`` (user@host), ``reason``, ``paused_at`` and ``until``
    (Unix seconds, None for until resumed) say who paused it and for how long.
    """

    def __init__(self, *, paused_by: str = "", reason: str = "", paused_at: float = 0.0,
                 until: float | None = None, message: str | None = None,
                 **fields: object) -> None:
        self.paused_by = paused_by
        self.reason = reason
        self.paused_at = paused_at
        self.until = until
        if message is None:
            why = f" ({reason})" if reason else ""
            end = (f" until {_utc(until)}" if until is not None else " until resumed")
            message = (
                f"role {fields.get('role')!r} is paused by {paused_by or 'an operator'} since "
                f"{_utc(paused_at)}{why}{end}, so this {fields.get('model') or 'LLM'} call "
                f"was not sent. Fix: `crew-budget resume --role {fields.get('role')}` when "
                "its calls may run again"
            )
        super().__init__(message=message, **fields)  # type: ignore[arg-type]

    def _fields(self) -> dict[str, object]:
        return {**super()._fields(), "paused_by": self.paused_by, "reason": self.reason,
                "paused_at": self.paused_at, "until": self.until}


def _utc(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _rebuild_budget_exceeded(
    cls: type[BudgetExceeded], fields: dict[str, object], message: str
) -> BudgetExceeded:
    return cls(**fields, message=message)  # type: ignore[arg-type]


def _fmt(amount: Decimal) -> str:
    """Exact dollars for people: at least cents, every significant digit kept."""
    text = f"{amount.normalize():f}"
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"
