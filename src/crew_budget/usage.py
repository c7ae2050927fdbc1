"""Reading providers' ``usage`` and turning it into dollars.

Providers count the same things differently, and getting this wrong is how a
dashboard drifts from the invoice:

- OpenAI chat: ``prompt_tokens`` *includes* ``prompt_tokens_details.cached_tokens``;
  ``completion_tokens`` *includes* ``completion_tokens_details.reasoning_tokens``.
- OpenAI Responses: the same with ``input_tokens``/``output_tokens`` and
  ``*_tokens_details``.
- Anthropic: ``input_tokens`` *excludes* ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens``, which are billed at their own rates.
- LangChain ``usage_metadata``: ``input_tokens`` *includes* the cache details
  in ``input_token_details`` (``cache_read``, ``cache_creation``).
- Gemini: ``promptTokenCount`` (incl. ``cachedContentTokenCount``),
  ``candidatesTokenCount`` plus ``thoughtsTokenCount``.

Everything is normalised to ``Usage``, whose fields never overlap, then
priced exactly: ``cost_of`` in ``Decimal`` dollars, ``cost_nano_of`` in
integer nano-USD (from whole atto-USD rates when the price has them). A
usage object with no token counts is a ``UsageError``, never a silent $0
(invariant 6).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from crew_budget.errors import UsageError
from crew_budget.money import MAX_TOKENS, atto_to_nano_round, to_nano_round
from crew_budget.pricing import Price

__all__ = ["Usage", "check_usage", "cost_nano_of", "cost_of", "parse_usage"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Disjoint token counts of one call.

    ``input_tokens`` is uncached input only; ``output_tokens`` includes
    ``reasoning_tokens`` (as both providers bill them at the output rate
    unless the model has a separate reasoning price).
    """

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        """Everything the provider read: uncached + cache reads + cache writes."""
        return self.input_tokens + self.cached_input_tokens + self.cache_write_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.output_tokens + other.output_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


def cost_of(usage: Usage, price: Price) -> Decimal:
    """Exact dollar cost of ``usage`` at ``price``."""
    cached = price.cached_input if price.cached_input is not None else price.input
    write = price.cache_write if price.cache_write is not None else price.input
    reasoning = price.reasoning if price.reasoning is not None else price.output
    plain_output = usage.output_tokens - usage.reasoning_tokens
    return (
        usage.input_tokens * price.input
        + usage.cached_input_tokens * cached
        + usage.cache_write_tokens * write
        + plain_output * price.output
        + usage.reasoning_tokens * reasoning
    )


def cost_nano_of(usage: Usage, price: Price) -> int:
    """``cost_of`` in nano-USD, banker's rounding: integer arithmetic when the
    price has whole atto-USD rates (see ``Price.atto``), else ``Decimal``."""
    atto = price.atto
    if atto is None:
        return to_nano_round(cost_of(usage, price))
    inp, out, cached, write, reasoning = atto
    r = usage.reasoning_tokens
    return atto_to_nano_round(
        usage.input_tokens * inp
        + usage.cached_input_tokens * cached
        + usage.cache_write_tokens * write
        + (usage.output_tokens - r) * out
        + r * reasoning
    )


def _as_mapping(obj: Any) -> Mapping[str, Any] | None:
    if obj is None or type(obj) is dict:  # the common cases, without ABC checks
        return obj
    if isinstance(obj, Mapping):
        return obj
    for attr in ("model_dump", "dict", "to_dict"):
        fn = getattr(obj, attr, None)
        if callable(fn):
            try:
                data = fn()
            except TypeError:
                continue
            if isinstance(data, Mapping):
                return data
    if hasattr(obj, "__dict__"):
        return {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    return None


def _int(data: Mapping[str, Any] | None, *keys: str) -> int | None:
    """The first of ``keys`` present in ``data``, as a token count, or None.

    A count is an ``int`` (or a whole, finite float, as some JSON decoders
    produce) in ``[0, MAX_TOKENS]``. Anything else (a bool, a string, NaN,
    an infinity, a fraction, a negative or absurdly large number, a nested
    object) is a ``UsageError``: never guessed at, never priced.
    """
    if data is None:
        return None
    for key in keys:
        value = data.get(key)
        if value is None:
            continue
        if type(value) is int and 0 <= value <= MAX_TOKENS:
            return value
        return _bad_count(key, value)
    return None


def _bad_count(key: str, value: Any) -> int:
    """Accept a whole float in range, else raise the ``UsageError`` that says why."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"usage field {key!r} is {_show(value)}, not a token count")
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"usage field {key!r} is {value!r}, not a finite token count")
    if value < 0 or value != int(value):
        raise UsageError(f"usage field {key!r} is {value!r}, not a non-negative whole number")
    if value > MAX_TOKENS:
        raise UsageError(
            f"usage field {key!r} is {_show(value)}, more than the {MAX_TOKENS:,} tokens one "
            "call can report: a corrupt usage, not a bill"
        )
    return int(value)


def _show(value: Any) -> str:
    """``repr`` for an error message, cut short: a usage may be megabytes of garbage."""
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + "..." + f" ({len(text)} chars)"


def check_usage(usage: Usage) -> Usage:
    """``usage`` itself if every count is an int in ``[0, MAX_TOKENS]`` and
    reasoning is part of output; else ``UsageError``.

    ``parse_usage`` builds only such values; this checks the ``Usage``
    objects adapters build by hand (or add up) before they are priced.
    """
    a, b, c, d, e = (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens,
                     usage.output_tokens, usage.reasoning_tokens)
    if (type(a) is int and type(b) is int and type(c) is int and type(d) is int
            and type(e) is int and 0 <= a <= MAX_TOKENS and 0 <= b <= MAX_TOKENS
            and 0 <= c <= MAX_TOKENS and 0 <= e <= d <= MAX_TOKENS):
        return usage  # the settle path: one test per count, no loop
    for name in ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
                 "reasoning_tokens"):
        value = getattr(usage, name)
        if type(value) is not int or not 0 <= value <= MAX_TOKENS:
            _bad_count(name, value)
            raise UsageError(f"usage field {name!r} is {value!r}, not an int")
    if usage.reasoning_tokens > usage.output_tokens:
        raise UsageError(
            f"usage reports {usage.reasoning_tokens} reasoning tokens but only "
            f"{usage.output_tokens} output tokens"
        )
    return usage


def parse_usage(raw: Any) -> Usage:
    """Normalise an OpenAI-, Anthropic-, LangChain- or Gemini-shaped usage.

    Accepts a dict, an SDK object, or a whole response carrying ``usage``
    (or ``usage_metadata``). Whatever ``raw`` is, the only exception this
    raises is ``UsageError`` (the guard charges such a call at its
    reservation): a usage object whose ``model_dump`` raises, or that nests
    itself, is as unreadable as a missing one.
    """
    try:
        return _parse(raw, 0)
    except UsageError:
        raise
    except (TypeError, ValueError, ArithmeticError, AttributeError, LookupError,
            RecursionError) as exc:
        raise UsageError(
            f"cannot read token usage from {type(raw).__name__} ({type(exc).__name__}: "
            f"{_show(str(exc))})"
        ) from exc


_MAX_DEPTH = 4  # a whole response wrapping usage wrapping usage, and no deeper


def _parse(raw: Any, depth: int) -> Usage:
    if isinstance(raw, Usage):
        return check_usage(raw)
    data = _as_mapping(raw)
    if data is None:
        raise UsageError(
            f"cannot read token usage from {type(raw).__name__}; the provider response "
            "has no usage. Fix: for OpenAI streams set stream_options={'include_usage': True}"
        )
    for wrapper in ("usage", "usage_metadata", "usageMetadata", "token_usage"):
        inner = data.get(wrapper)
        if inner is not None and not isinstance(inner, (int, float)):
            if depth >= _MAX_DEPTH:
                raise UsageError(f"usage nested more than {_MAX_DEPTH} levels deep")
            return _parse(inner, depth + 1)
    usage = _parse_flat(data)
    if usage is None:
        keys = ", ".join(sorted(map(str, data))) or "none"
        if len(keys) > 200:
            keys = keys[:200] + ", ..."
        raise UsageError(
            f"no token counts in usage (keys: {keys}); expected OpenAI "
            "prompt_tokens/completion_tokens or Anthropic input_tokens/output_tokens. The call "
            "is charged at its reservation instead of being counted as free."
        )
    if usage.reasoning_tokens > usage.output_tokens:
        raise UsageError(
            f"usage reports {usage.reasoning_tokens} reasoning tokens but only "
            f"{usage.output_tokens} output tokens"
        )
    return usage


def _parse_flat(d: Mapping[str, Any]) -> Usage | None:
    # OpenAI chat completions (and litellm's ModelResponse.usage).
    prompt = _int(d, "prompt_tokens")
    if prompt is not None:
        completion = _int(d, "completion_tokens")
        if completion is None:
            raise UsageError(
                "usage has prompt_tokens but no completion_tokens; counting its output as "
                "free would under-count the call, so it is charged at its reservation"
            )
        pdet = _as_mapping(d.get("prompt_tokens_details"))
        cdet = _as_mapping(d.get("completion_tokens_details"))
        cached = _int(pdet, "cached_tokens") or 0
        # litellm copies Anthropic cache fields onto OpenAI-shaped usage.
        # OpenAI reports priced cache writes as prompt_tokens_details.cache_write_tokens.
        write = _int(d, "cache_creation_input_tokens") or _int(pdet, "cache_write_tokens") or 0
        if cached == 0:
            cached = _int(d, "cache_read_input_tokens") or 0
        reasoning = _int(cdet, "reasoning_tokens") or 0
        uncached = prompt - cached - write
        if uncached < 0:
            # Some proxies report Anthropic-style (exclusive) counts in OpenAI
            # fields; trust the parts, never go negative.
            uncached = prompt
        return Usage(uncached, cached, write, completion, reasoning)
    # Gemini.
    if "promptTokenCount" in d or "candidatesTokenCount" in d:
        g_prompt = _int(d, "promptTokenCount") or 0
        g_cached = _int(d, "cachedContentTokenCount") or 0
        thoughts = _int(d, "thoughtsTokenCount") or 0
        g_out = (_int(d, "candidatesTokenCount") or 0) + thoughts
        g_uncached = g_prompt - g_cached if g_cached <= g_prompt else g_prompt  # as above
        return Usage(g_uncached, g_cached, 0, g_out, thoughts)
    raw_in = _int(d, "input_tokens")
    raw_out = _int(d, "output_tokens")
    if raw_in is None and raw_out is None:
        return None
    if raw_out is None:
        raise UsageError(
            "usage has input_tokens but no output_tokens; counting its output as free "
            "would under-count the call, so it is charged at its reservation"
        )
    inp = raw_in or 0
    out = raw_out or 0
    # LangChain usage_metadata: input_tokens includes the cache details.
    if "input_token_details" in d or "output_token_details" in d:
        idet = _as_mapping(d.get("input_token_details"))
        odet = _as_mapping(d.get("output_token_details"))
        read = _int(idet, "cache_read") or 0
        write = _int(idet, "cache_creation") or 0
        reasoning = _int(odet, "reasoning") or 0
        return Usage(max(inp - read - write, 0), read, write, out, reasoning)
    # OpenAI Responses API: inclusive counts with *_tokens_details.
    if "input_tokens_details" in d or "output_tokens_details" in d:
        idet = _as_mapping(d.get("input_tokens_details"))
        odet = _as_mapping(d.get("output_tokens_details"))
        cached = _int(idet, "cached_tokens") or 0
        write = _int(idet, "cache_write_tokens") or 0
        reasoning = _int(odet, "reasoning_tokens") or 0
        return Usage(max(inp - cached - write, 0), cached, write, out, reasoning)
    # Anthropic Messages: exclusive counts.
    read = _int(d, "cache_read_input_tokens") or 0
    write = _int(d, "cache_creation_input_tokens") or 0
    return Usage(inp, read, write, out, 0)
