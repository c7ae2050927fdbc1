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
- Gemini: ``promptTokenCount`` (incl. ``cachedContentTokenCount``) plus
  ``toolUsePromptTokenCount``, ``candidatesTokenCount`` plus
  ``thoughtsTokenCount``.
- Bedrock Converse: ``inputTokens`` *excludes* ``cacheReadInputTokens`` and
  ``cacheWriteInputTokens`` (Anthropic-style); ``cacheDetails`` splits the
  writes by TTL.

Everything is normalised to ``Usage``, whose fields never overlap, then
priced exactly: ``cost_of`` in ``Decimal`` dollars, ``cost_nano_of`` in
integer nano-USD (from whole atto-USD rates when the price has them). A
usage object with no token counts is a ``UsageError``, never a silent $0
(invariant 6).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, ClassVar

from crew_budget.errors import UsageError
from crew_budget.money import MAX_TOKENS, atto_to_nano_round, to_nano_round
from crew_budget.pricing import Price, normalize_service_tier

__all__ = ["Usage", "check_usage", "cost_nano_of", "cost_of", "parse_usage"]


@dataclass(frozen=True, init=False)
class Usage:
    """Disjoint token counts of one call.

    ``input_tokens`` is uncached input only; ``output_tokens`` includes
    ``reasoning_tokens`` (as both providers bill them at the output rate
    unless the model has a separate reasoning price).

    The fields after ``reasoning_tokens`` refine those counts for the parts
    billed at their own rates: ``cache_write_1h_tokens`` is the part of
    ``cache_write_tokens`` written with a 1-hour TTL (Anthropic's
    ``cache_creation.ephemeral_1h_input_tokens``); ``audio_input_tokens`` and
    ``image_input_tokens`` are parts of ``input_tokens``, ``audio_output_tokens``
    and ``image_output_tokens`` parts of ``output_tokens`` (beside
    ``reasoning_tokens``); ``web_search_requests`` counts server-side searches
    (billed per search); ``service_tier`` is ``"priority"``, ``"flex"``,
    ``"batch"`` or None (standard), as the response reported it.
    """

    # One is built on every settle. The five counts every usage has are slots
    # (as fast as the plain frozen dataclass this was); the rarely non-zero
    # rest are class defaults, stored on the instance only when one is set, so
    # a plain usage costs no more to build or read than before they existed.
    __slots__ = (
        "__dict__",
        "cache_write_tokens",
        "cached_input_tokens",
        "input_tokens",
        "output_tokens",
        "reasoning_tokens",
    )

    input_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cache_write_1h_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    image_input_tokens: int = 0
    image_output_tokens: int = 0
    web_search_requests: int = 0
    service_tier: str | None = None
    # Whether any count billed at its own rate (1 h writes, audio, images,
    # searches) is non-zero: without one, the five-rate sum is the cost.
    has_extras: ClassVar[bool] = False

    def __init__(
        self,
        input_tokens: int = 0,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
        output_tokens: int = 0,
        reasoning_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
        audio_input_tokens: int = 0,
        audio_output_tokens: int = 0,
        image_input_tokens: int = 0,
        image_output_tokens: int = 0,
        web_search_requests: int = 0,
        service_tier: str | None = None,
    ) -> None:
        put = object.__setattr__
        put(self, "input_tokens", input_tokens)
        put(self, "cached_input_tokens", cached_input_tokens)
        put(self, "cache_write_tokens", cache_write_tokens)
        put(self, "output_tokens", output_tokens)
        put(self, "reasoning_tokens", reasoning_tokens)
        if (cache_write_1h_tokens or audio_input_tokens or audio_output_tokens
                or image_input_tokens or image_output_tokens or web_search_requests
                or service_tier is not None):
            put(self, "cache_write_1h_tokens", cache_write_1h_tokens)
            put(self, "audio_input_tokens", audio_input_tokens)
            put(self, "audio_output_tokens", audio_output_tokens)
            put(self, "image_input_tokens", image_input_tokens)
            put(self, "image_output_tokens", image_output_tokens)
            put(self, "web_search_requests", web_search_requests)
            put(self, "service_tier", service_tier)
            put(self, "has_extras", bool(
                cache_write_1h_tokens or audio_input_tokens or audio_output_tokens
                or image_input_tokens or image_output_tokens or web_search_requests
            ))

    def __reduce__(self) -> tuple[Any, ...]:
        # Frozen: unpickling must go through __init__, not setattr.
        return (type(self), (
            self.input_tokens, self.cached_input_tokens, self.cache_write_tokens,
            self.output_tokens, self.reasoning_tokens, self.cache_write_1h_tokens,
            self.audio_input_tokens, self.audio_output_tokens, self.image_input_tokens,
            self.image_output_tokens, self.web_search_requests, self.service_tier,
        ))

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
            self.cache_write_1h_tokens + other.cache_write_1h_tokens,
            self.audio_input_tokens + other.audio_input_tokens,
            self.audio_output_tokens + other.audio_output_tokens,
            self.image_input_tokens + other.image_input_tokens,
            self.image_output_tokens + other.image_output_tokens,
            self.web_search_requests + other.web_search_requests,
            self.service_tier if self.service_tier == other.service_tier else None,
        )


# How each rule below is billed (what the tests check, with their sources):
# - context tiers: a prompt (uncached + cache reads + cache writes) over the
#   tier's threshold bills *every* token at the tier's rates (Gemini 2.5 Pro
#   "prompts > 200k tokens", ai.google.dev/gemini-api/docs/pricing);
# - service tiers: the response's priority/flex/batch tier picks its own
#   rates (platform.openai.com/docs/pricing, Anthropic's batch discount);
# - cache writes: the 5-minute TTL at ``cache_write``, the 1-hour one at
#   ``cache_write_1h`` (docs.anthropic.com prompt caching: 1.25x / 2x input);
# - audio and image tokens at their own input/output rates;
# - web searches per search, and a per-request fee once per call.


def cost_of(usage: Usage, price: Price) -> Decimal:
    """Exact dollar cost of ``usage`` at ``price`` (its tier chosen by the usage)."""
    if price.variable:
        price = price.for_usage(usage.prompt_tokens, usage.service_tier)
    cached = price.cached_input if price.cached_input is not None else price.input
    write = price.cache_write if price.cache_write is not None else price.input
    reasoning = price.reasoning if price.reasoning is not None else price.output
    write_1h, in_audio, out_audio, in_image, out_image, search, fee = price.extra_rates()
    plain_input = usage.input_tokens - usage.audio_input_tokens - usage.image_input_tokens
    plain_output = (
        usage.output_tokens
        - usage.reasoning_tokens
        - usage.audio_output_tokens
        - usage.image_output_tokens
    )
    return (
        plain_input * price.input
        + usage.audio_input_tokens * in_audio
        + usage.image_input_tokens * in_image
        + usage.cached_input_tokens * cached
        + (usage.cache_write_tokens - usage.cache_write_1h_tokens) * write
        + usage.cache_write_1h_tokens * write_1h
        + plain_output * price.output
        + usage.reasoning_tokens * reasoning
        + usage.audio_output_tokens * out_audio
        + usage.image_output_tokens * out_image
        + usage.web_search_requests * search
        + fee
    )


def cost_nano_of(usage: Usage, price: Price) -> int:
    """``cost_of`` in nano-USD, banker's rounding: integer arithmetic when the
    price has whole atto-USD rates (see ``Price.atto``), else ``Decimal``.

    The tier is picked from the cached ``Price`` (a tuple scan), so settling
    a tiered model costs no more than a flat one; a flat price and a usage
    with no specially billed parts take the shortest path.
    """
    if price.variable and (price.tiers or usage.service_tier is not None):
        price = price.for_usage(usage.prompt_tokens, usage.service_tier)
    flat = price.atto_flat
    if flat is not None and not usage.has_extras:
        inp, out, cached, write, reasoning, fee = flat
        r = usage.reasoning_tokens
        return atto_to_nano_round(
            usage.input_tokens * inp
            + usage.cached_input_tokens * cached
            + usage.cache_write_tokens * write
            + (usage.output_tokens - r) * out
            + r * reasoning
            + fee
        )
    atto = price.atto
    extra = price.atto_extra
    if atto is None or extra is None:
        return to_nano_round(cost_of(usage, price))
    inp, out, cached, write, reasoning = atto
    w1h, ai, ao, ii, io, search, fee = extra
    r = usage.reasoning_tokens
    return atto_to_nano_round(
        usage.input_tokens * inp
        + usage.cached_input_tokens * cached
        + usage.cache_write_tokens * write
        + (usage.output_tokens - r) * out
        + r * reasoning
        + fee
        + usage.cache_write_1h_tokens * (w1h - write)
        + usage.audio_input_tokens * (ai - inp)
        + usage.image_input_tokens * (ii - inp)
        + usage.audio_output_tokens * (ao - out)
        + usage.image_output_tokens * (io - out)
        + usage.web_search_requests * search
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


def _int(data: Mapping[str, Any] | None, key: str, alt: str | None = None) -> int | None:
    """``data[key]`` (else ``data[alt]``) as a token count, or None if absent.

    A count is an ``int`` (or a whole, finite float, as some JSON decoders
    produce) in ``[0, MAX_TOKENS]``. Anything else (a bool, a string, NaN,
    an infinity, a fraction, a negative or absurdly large number, a nested
    object) is a ``UsageError``: never guessed at, never priced. One key
    and an optional second one, not ``*keys``: settle reads seven counts
    through this, and a loop over a packed tuple costs each of them more
    than the lookup.
    """
    if data is None:
        return None
    value = data.get(key)
    if value is None:
        if alt is None:
            return None
        key, value = alt, data.get(alt)
        if value is None:
            return None
    if type(value) is int and 0 <= value <= MAX_TOKENS:
        return value
    return _bad_count(key, value)


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
    data: Mapping[str, Any] | None
    if type(raw) is dict:  # the common case (a JSON body, litellm's dict): no type probing
        data = raw
    elif isinstance(raw, Usage):
        return check_usage(raw)
    else:
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
            return _with_service_tier(_parse(inner, depth + 1), data)
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
    return _refine(usage, data)


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
    # Gemini (ai.google.dev/api/generate-content#UsageMetadata): promptTokenCount
    # includes the cached content; toolUsePromptTokenCount (what tools such as
    # URL context or code execution put in the prompt) is counted apart from it
    # (totalTokenCount = prompt + toolUsePrompt + candidates + thoughts) and is
    # billed as input, as litellm does; thinking is billed as output.
    if "promptTokenCount" in d or "candidatesTokenCount" in d:
        g_prompt = _int(d, "promptTokenCount") or 0
        g_cached = _int(d, "cachedContentTokenCount") or 0
        tool_use = _int(d, "toolUsePromptTokenCount") or 0
        thoughts = _int(d, "thoughtsTokenCount") or 0
        g_out = (_int(d, "candidatesTokenCount") or 0) + thoughts
        g_uncached = g_prompt - g_cached if g_cached <= g_prompt else g_prompt  # as above
        return Usage(g_uncached + tool_use, g_cached, 0, g_out, thoughts)
    # Bedrock Converse (docs.aws.amazon.com/bedrock/latest/APIReference/
    # API_runtime_TokenUsage.html, and the prompt-caching guide): inputTokens
    # excludes the cache reads and writes, which are reported beside it.
    if "inputTokens" in d or "outputTokens" in d:
        c_out = _int(d, "outputTokens")
        if c_out is None:
            raise UsageError(
                "usage has inputTokens but no outputTokens; counting its output as free "
                "would under-count the call, so it is charged at its reservation"
            )
        return Usage(_int(d, "inputTokens") or 0, _int(d, "cacheReadInputTokens") or 0,
                     _int(d, "cacheWriteInputTokens") or 0, c_out, 0)
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


# -- the parts billed at their own rates (see ``Usage``) ---------------------------


def _with_service_tier(usage: Usage, response: Mapping[str, Any]) -> Usage:
    """OpenAI reports ``service_tier`` on the response, beside ``usage``."""
    if usage.service_tier is None and response.get("service_tier") is not None:
        tier = normalize_service_tier(response.get("service_tier"))
        if tier is not None:
            return replace(usage, service_tier=tier)
    return usage


def _ttl_tokens(details: Any, ttl: str) -> int:
    """Bedrock Converse's ``cacheDetails``, ``[{"ttl": "1h", "inputTokens": n}, ...]``
    (API_runtime_CacheDetail), summed for one TTL."""
    if not isinstance(details, list):
        return 0
    total = 0
    for item in details:
        entry = _as_mapping(item)
        if entry is not None and entry.get("ttl") == ttl:
            total += _int(entry, "inputTokens") or 0
    return total


def _modality(details: Any, modality: str) -> int:
    """Gemini's ``[{"modality": "AUDIO", "tokenCount": n}, ...]`` for one modality."""
    if not isinstance(details, list):
        return 0
    total = 0
    for item in details:
        entry = _as_mapping(item)
        if entry is not None and str(entry.get("modality", "")).upper() == modality:
            total += _int(entry, "tokenCount", "token_count") or 0
    return total


# Where the parts billed at their own rates are reported: OpenAI chat
# (prompt/completion_tokens_details), OpenAI Responses (input/output_tokens_
# details), LangChain (input/output_token_details), Anthropic (cache_creation,
# server_tool_use, service_tier), Gemini (prompt/candidatesTokensDetails),
# Bedrock Converse (cacheDetails) and litellm (prompt_tokens_details.
# cache_creation_token_details).
def _has_extras(d: Mapping[str, Any]) -> bool:
    """Whether ``d`` reports any part billed at its own rate (a non-zero one)."""
    get = d.get
    if (get("cache_creation") or get("server_tool_use") or get("service_tier") is not None
            or "promptTokensDetails" in d or "candidatesTokensDetails" in d
            or get("cacheDetails")):
        return True
    det = get("prompt_tokens_details") or get("input_tokens_details") or get(
        "input_token_details")
    if det:
        det = det if type(det) is dict else _as_mapping(det) or {}
        g = det.get
        if (g("audio_tokens") or g("audio") or g("image_tokens") or g("image")
                or g("ephemeral_1h_input_tokens") or g("cache_creation_token_details")):
            return True
    det = get("completion_tokens_details") or get("output_tokens_details") or get(
        "output_token_details")
    if det:
        det = det if type(det) is dict else _as_mapping(det) or {}
        g = det.get
        if g("audio_tokens") or g("audio") or g("image_tokens") or g("image"):
            return True
    return False


def _refine(usage: Usage, d: Mapping[str, Any]) -> Usage:
    """Add 1 h cache writes, audio/image tokens, web searches and the service
    tier to a parsed usage, each clamped inside the count it is part of.

    Most usages carry none of them (OpenAI's zero ``audio_tokens`` included):
    a few dict lookups find that out before any parsing or copying.
    """
    if not _has_extras(d):
        return usage
    idet = _as_mapping(d.get("prompt_tokens_details") or d.get("input_tokens_details")
                       or d.get("input_token_details"))
    odet = _as_mapping(d.get("completion_tokens_details") or d.get("output_tokens_details")
                       or d.get("output_token_details"))
    creation = d.get("cache_creation")
    tools = d.get("server_tool_use")
    creation = _as_mapping(creation)
    one_hour = _int(creation, "ephemeral_1h_input_tokens") or _int(
        idet, "ephemeral_1h_input_tokens"
    ) or _int(
        # litellm's usage (Bedrock Converse, Anthropic):
        # prompt_tokens_details.cache_creation_token_details.
        _as_mapping(idet.get("cache_creation_token_details")) if idet else None,
        "ephemeral_1h_input_tokens",
    ) or _ttl_tokens(d.get("cacheDetails"), "1h")
    audio_in = (_int(idet, "audio_tokens", "audio") or 0) + _modality(
        d.get("promptTokensDetails"), "AUDIO"
    )
    image_in = (_int(idet, "image_tokens", "image") or 0) + _modality(
        d.get("promptTokensDetails"), "IMAGE"
    )
    audio_out = (_int(odet, "audio_tokens", "audio") or 0) + _modality(
        d.get("candidatesTokensDetails"), "AUDIO"
    )
    image_out = (_int(odet, "image_tokens", "image") or 0) + _modality(
        d.get("candidatesTokensDetails"), "IMAGE"
    )
    searches = _int(_as_mapping(tools), "web_search_requests") or 0
    tier = usage.service_tier or normalize_service_tier(d.get("service_tier"))
    if not (one_hour or audio_in or image_in or audio_out or image_out or searches or tier):
        return usage
    audio_in = min(audio_in, usage.input_tokens)
    image_in = min(image_in, usage.input_tokens - audio_in)
    spare_out = usage.output_tokens - usage.reasoning_tokens
    audio_out = min(audio_out, spare_out)
    image_out = min(image_out, spare_out - audio_out)
    return Usage(
        usage.input_tokens,
        usage.cached_input_tokens,
        usage.cache_write_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
        min(one_hour, usage.cache_write_tokens),
        audio_in,
        audio_out,
        image_in,
        image_out,
        searches,
        tier,
    )
