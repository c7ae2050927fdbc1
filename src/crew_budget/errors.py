"""The exceptions crew-budget raises.

One base class so callers can catch everything of ours in one place, and a
narrow class per problem so they can catch exactly one thing::

    CrewBudgetError
    ├── ConfigError            bad YAML, unknown key, negative budget, bad URL
    ├── PricingError
    │   └── UnknownModelError  no price known for a model (never priced at $0)
    ├── UsageError             a provider response whose usage cannot be read
    ├── LedgerError
    │   ├── LedgerUnavailable  the ledger cannot be reached (fail closed)
    │   └── ReservationError   unknown or foreign reservation id
    └── BudgetExceeded         a call would cross a budget: it was not sent

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


class UsageError(CrewBudgetError, ValueError):
    """A provider response carried no readable token usage."""


class LedgerError(CrewBudgetError):
    """The ledger failed to carry out an operation."""


class LedgerUnavailable(LedgerError, ConnectionError):
    """The ledger cannot be reached. Calls are blocked unless ``fail_open``."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(
            f"budget ledger {url} is unreachable ({reason}); the LLM call was blocked "
            f"because budgets fail closed. Fix: start or reach the ledger (check the URL "
            f"in `ledger:` or CREW_BUDGET_LEDGER), or set `fail_open: true` to allow "
            f"unguarded calls while it is down."
        )


    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.url, self.reason))


class ReservationError(LedgerError, LookupError):
    """A reservation id the ledger does not know (or that is not ours)."""


class BudgetExceeded(CrewBudgetError):
    """The call would cross a budget, so it was not sent.

    Attributes: ``role``, ``scope`` (e.g. ``"role:researcher"`` or
    ``"crew:research"``), ``window`` (``hour``/``day``/``month``),
    ``period`` (the window instance, e.g. ``"2026-11-25"``), ``limit``,
    ``spent``, ``reserved`` and ``estimate`` in ``Decimal`` USD, and
    ``model``.
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
        if message is None:
            remaining = limit - spent - reserved
            message = (
                f"budget exceeded for role {role!r}: {scope} {window} budget "
                f"${_fmt(limit)} ({period}) has ${_fmt(spent)} spent and ${_fmt(reserved)} "
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
        }


def _rebuild_budget_exceeded(
    cls: type[BudgetExceeded], fields: dict[str, object], message: str
) -> BudgetExceeded:
    return cls(**fields, message=message)  # type: ignore[arg-type]


def _fmt(amount: Decimal) -> str:
    """Exact dollars for people: at least cents, every significant digit kept."""
    text = f"{amount.normalize():f}"
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"
