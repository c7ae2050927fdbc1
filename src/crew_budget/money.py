"""Money as integers: nano-USD inside, ``Decimal`` dollars at the edge.

Balances are added and compared millions of times across processes; floats
would drift (0.1 + 0.2) and two processes could disagree on whether a budget
is full. One nano-USD (1e-9 USD) is far below any provider's per-token price
granularity that matters for a budget, and an int64 of nano-USD holds $9.2bn.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext

from crew_budget.errors import AmountError

NANO_PER_USD = 10**9
_NANO = Decimal(NANO_PER_USD)
ATTO_PER_NANO = 10**9

MAX_NANO = 2**53
"""Every amount a ledger is handed (a reservation, a settled cost) is below this.

2^53 nano-USD is about $9,007,199: far above any one LLM call, and the
largest integer a Lua double (Redis scripts compare money as doubles) and a
JSON reader hold exactly. One bound on every backend, so an amount that one
ledger accepts is never refused, or silently rounded, by another."""

MAX_TOKENS = 10**9
"""The most tokens one usage field may report for one call.

The largest context windows today are about 10M tokens, a hundred times
less. A count above this is a corrupt or hostile usage, not a bill: pricing
it would charge millions (and overflow the ledger's int64 counters), so it
is a ``UsageError``, charged at the reservation instead."""

__all__ = [
    "ATTO_PER_NANO",
    "MAX_NANO",
    "MAX_TOKENS",
    "NANO_PER_USD",
    "atto_per_token",
    "atto_to_nano_ceil",
    "atto_to_nano_round",
    "check_nano",
    "from_nano",
    "parse_usd",
    "to_nano",
    "to_nano_ceil",
    "to_nano_round",
]


def parse_usd(value: object) -> Decimal:
    """Parse a dollar amount from config or an API argument, exactly.

    ``5``, ``5.0``, ``"5.00"`` and ``Decimal("5")`` all mean five dollars.
    Floats go through ``repr`` so ``0.1`` is ``Decimal("0.1")``, not
    ``0.1000000000000000055...``. Booleans, NaN and infinities are rejected.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a dollar amount")
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite dollar amount")
        amount = Decimal(repr(value))
    elif isinstance(value, str):
        text = value.strip().removeprefix("$").replace("_", "")
        try:
            amount = Decimal(text)
        except InvalidOperation:
            raise ValueError(f'{value!r} is not a dollar amount (write e.g. 5 or "5.00")') from None
    else:
        raise ValueError(f"{value!r} ({type(value).__name__}) is not a dollar amount")
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not a finite dollar amount")
    return amount


def to_nano(usd: Decimal | int | str | float) -> int:
    """Exact dollars -> nano-USD; rejects amounts finer than one nano-USD."""
    amount = parse_usd(usd) * _NANO
    if amount != amount.to_integral_value():
        raise ValueError(f"${usd} is finer than one nano-USD (1e-9)")
    return int(amount)


def to_nano_ceil(usd: Decimal) -> int:
    """Dollars -> nano-USD, rounded up: used for reservations (never under-reserve)."""
    return int((usd * _NANO).to_integral_value(rounding=ROUND_CEILING))


def to_nano_round(usd: Decimal) -> int:
    """Dollars -> nano-USD, banker's rounding: used for settled costs."""
    return int((usd * _NANO).to_integral_value(rounding=ROUND_HALF_EVEN))


def from_nano(nano: int) -> Decimal:
    """nano-USD -> ``Decimal`` dollars, exact (no trailing-zero noise)."""
    if nano == 0:
        return Decimal(0)
    return (
        (Decimal(nano) / _NANO).normalize()
        if nano % NANO_PER_USD
        else Decimal(nano // NANO_PER_USD)
    )


# Per-token prices as integers of atto-USD (1e-18): litellm's prices (e.g.
# 1.5e-07) and per-million overrides with up to 12 decimals are whole numbers
# there, so estimate and cost are exact integer sums on the hot path, rounded
# to nano-USD once, exactly as the Decimal functions above round them.
_ATTO = Decimal(10**18)


def atto_per_token(price: Decimal) -> int | None:
    """``price`` (USD per token) as whole atto-USD, or None if it is finer than that."""
    with localcontext() as ctx:
        ctx.prec = 200  # exact for any price a config can hold
        scaled = price * _ATTO
    if not scaled.is_finite() or scaled != scaled.to_integral_value():
        return None
    return int(scaled)


def atto_to_nano_ceil(atto: int) -> int:
    """atto-USD -> nano-USD rounded up (as ``to_nano_ceil``)."""
    return -(-atto // ATTO_PER_NANO)


def atto_to_nano_round(atto: int) -> int:
    """atto-USD -> nano-USD, banker's rounding (as ``to_nano_round``)."""
    q, r = divmod(atto, ATTO_PER_NANO)
    if 2 * r > ATTO_PER_NANO or (2 * r == ATTO_PER_NANO and q & 1):
        q += 1
    return q


def check_nano(what: str, value: object) -> int:
    """``value`` as an amount a ledger may store, or ``AmountError``.

    Checked at every ledger's entry points (``reserve``, ``settle``) before
    anything is written: a plain ``int`` (not a bool, float or string) with
    ``0 <= value < MAX_NANO``. A float would carry rounding into the books;
    a negative amount would refund; one of 2^53 or more would compare
    inexactly in Redis and could overflow a counter half way through an
    update.
    """
    if type(value) is not int:
        raise AmountError(
            f"{what} of {value!r} ({type(value).__name__}) is not an integer of nano-USD; "
            "nothing was written. Fix: pass whole nano-USD as int (crew_budget.money.to_nano "
            "converts dollars)"
        )
    if not 0 <= value < MAX_NANO:
        raise AmountError(
            f"{what} of {value} nano-USD is outside the range a ledger accepts (0 to 2^53-1 "
            "nano-USD, about $9,007,199); nothing was written. Fix: a negative or larger "
            "amount is a bug or a corrupt usage; use a smaller limit or amount"
        )
    return value
