"""Pre-flight prompt-token estimate: what the provider will bill as input.

The hard limit is only as good as this number: too low and a call can cross
a budget, too high and calls are blocked needlessly. So the estimator counts
what providers actually bill, not just the message text. The rules live in
one module per provider family, each rule commented with its public source
and, where a constant was measured, what it was measured on:

``openai.py`` (exact tiktoken encodings, see ``tokens.py``)
    Messages: the OpenAI cookbook's ``num_tokens_from_messages`` (3 tokens a
    message + role + content, +1 for a ``name``, +3 to prime the reply).
    Tool definitions (``tools``, legacy ``functions``): the TypeScript
    namespace the model sees (hmarr/openai-chat-tokens, a description is one
    comment; titles and defaults as openai/harmony renders them) + 9. Tool
    calls and results in the history: as harmony renders them (``assistant
    to=functions.NAME``, the result authored by ``functions.NAME``), so call
    ids and the ``tool`` role are not billed; parallel calls cost 3 more
    each. The gpt-5 family adds a hidden tool preamble and harmony's channel
    tokens (on calls, not on results). ``response_format`` schemas:
    harmony's ``# Response Formats`` section, the schema written like
    function parameters, plus a measured format prompt.
``anthropic.py`` (no public Claude 3+ tokenizer)
    Text: ``cl100k_base`` times the factor of the Claude generation (1.13;
    x1.35 more from Opus 4.7's new tokenizer); dense user text (JSON, number
    tables: under 4 characters a token) 1.18. Framing: 4 a message, 3 to
    prime the reply. Tools: the documented tool-use system prompt size per
    model and ``tool_choice`` + each definition's JSON as that prompt holds
    it. ``tool_use``/``tool_result`` blocks: the ``function_calls`` /
    ``function_results`` XML Claude reads. Earlier turns' thinking blocks
    are not billed. Native structured outputs: the schema + a format prompt.
    PDFs: the largest image Claude reads plus the page's text (read with
    pypdf, imported only for requests holding a PDF); images: 28 px
    patches (``ceil(w/28) * ceil(h/28)``) within the model's ceilings.
``compat.py`` (OpenAI-compatible hosts: Llama, Qwen, DeepSeek, Mistral, ...)
    A tiktoken count scaled per family, plus the family's chat template:
    default system preambles, tool instructions, framing.
``images.py``
    The providers' image-token formulas from the image's own header bytes.
``memo.py``
    The per-message cache keys (below).

Which rules apply comes from the price's ``provider`` (``openai``,
``anthropic``, others), then the model name (``claude-*`` on Bedrock or
Vertex is Claude; ``gpt-*``/``o*`` is OpenAI), then a ``tokenizer`` hint on a
configured price (``o200k_base``, ``cl100k_base``, ``anthropic``, ``approx``
or ``approx:<factor>``). A configured ``provider: other`` model none of these
identify is counted by the request's shape: Anthropic-shaped requests
(``system``, ``input_schema`` tools, ``tool_use``/``image`` blocks) get
Claude's rules, others the generic approximation.

Per-message cache
    An agent loop resends its whole history each call. Each message's count is
    kept in a bounded, thread-safe LRU keyed by the message's contents, so an
    estimate costs tokenization of the *new* messages only. Keys are tuples of
    the message's strings (Python caches each ``str``'s hash); strings longer
    than 256 characters are keyed by (length, hash, first and last 32
    characters) so the cache holds no large copies. In front of it, recently
    counted message dicts are remembered by identity (with a copy, used only
    while the dict still equals it), and so is each recent conversation as a
    whole: when a call's messages start with the very dicts of an earlier
    call, unchanged, their total is reused after one C-level comparison of
    the list, so a warm estimate costs little more than the new messages.

Calibration
    ``Guard.settle`` reports the estimate and the provider's actual prompt
    tokens. Per model a correction factor moves 60 % of the way toward an
    under-estimate at once (safety) and 5 % toward an over-estimate (so one
    short answer does not loosen the estimate), bounded to [0.7, 3.0]; for
    models counted with their exact tokenizer it never drops below 1.0, so
    only upward drift (e.g. hidden prompt text) is learned. This is a point
    correction of the estimate, in this process only; the reservation's
    safety buffer is ``crew_budget.margin`` (learned per model family from
    the *raw* count, ``count_prompt(..., calibrated=False)``, and kept in the
    ledger): the guard reserves the larger of the two, never both.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from itertools import islice
from operator import eq, is_
from typing import Any

from crew_budget import tokens
from crew_budget.estimate import images
from crew_budget.estimate.anthropic import (
    _CLAUDE_TOOL_PROMPT,
    _CLAUDE_TOOL_PROMPT_UNKNOWN,
    _PDF_PAGE_TOKENS,
    _SERVER_TOOL_TOKENS,
    _THINKING_PROMPT,
    _UNKNOWN_DOCUMENT_TOKENS,
    CLAUDE_ENCODING,
    STRUCTURED_OUTPUT_PROMPT,
    THINKING_BLOCKS,
    TOOL_RESULT_WRAPPER,
    TOOLS_WRAPPER,
    _claude_version,
    _looks_anthropic,
    _thinking_enabled,
    anthropic_tool_text,
    claude_text_factor,
    claude_text_tokens,
    document_text,
    forced_tool_name,
    native_format,
    pdf_layout,
    structured_output_text,
    tool_use_text,
    unbilled_thinking,
)
from crew_budget.estimate.compat import (
    _TIKTOKEN_NAMES,
    Family,
    family_of,
    tools_tokens,
)
from crew_budget.estimate.compat import DEFAULT as COMPAT_DEFAULT
from crew_budget.estimate.memo import (
    _CONVO_SIZE,
    _MEMO_SIZE,
    _NO_EXTRA,
    _freeze,
    _memoizable,
    _Uncacheable,
)
from crew_budget.estimate.memo import (
    _MEMO_CHARS as _MEMO_CHARS,  # re-exported for tests/test_estimate_memo.py
)
from crew_budget.estimate.openai import (
    ASSISTANT_FRAMING,
    FINAL_CHANNEL,
    FORMAT_MESSAGE_FRAMING,
    _args,
    _as_function,
    _is_openai_name,
    _openai_encoding,
    choice_in_prompt,
    constrained_answer,
    render_functions,
    reply_priming,
    response_format_overhead,
    response_format_text,
    tool_calls_tokens,
    tool_preamble,
    trimmed_instructions,
    uses_channels,
)
from crew_budget.pricing import Price

__all__ = ["COMPLETION_KEYS", "Estimate", "Estimator", "billed_completions", "render_functions"]

# How many completions one request generates, and so bills output for:
# - OpenAI chat ``n``: "How many chat completion choices to generate for each
#   input message. Note that you will be charged based on the number of
#   generated tokens across all of the choices" (API reference, Create chat
#   completion). The prompt is read, and billed, once: ``usage.prompt_tokens``
#   is the prompt's count and ``completion_tokens`` the sum over the choices.
# - OpenAI (legacy) completions ``best_of``: "Generates best_of completions
#   server-side and returns the best", with ``n`` <= ``best_of`` of them
#   returned; billed for all ``best_of`` (API reference, Create completion).
#   litellm passes both through.
# - Gemini ``candidate_count`` (``candidateCount`` in generationConfig), the
#   same idea, billed per candidate.
# ``max_tokens`` caps each completion, so the output reserved is the cap
# times the largest of these; the prompt is reserved once.
COMPLETION_KEYS: tuple[str, ...] = ("n", "best_of", "candidate_count", "candidateCount")


def billed_completions(extra: Mapping[str, Any] | None) -> int:
    """The number of completions a request with these parameters is billed for (>= 1).

    Reads ``COMPLETION_KEYS`` from ``extra``; a value that is not a positive
    whole number (the provider will refuse it) counts as 1.
    """
    if not extra:
        return 1
    most = 1
    for key in COMPLETION_KEYS:
        value = extra.get(key)
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and value > most:
            most = value
    return most


log = logging.getLogger("crew_budget")

@dataclass(frozen=True, slots=True)
class _Scheme:
    """How one model is counted. ``key`` prefixes its cache entries."""

    key: tuple[Any, ...]
    kind: str  # "openai" | "anthropic" | "approx"
    tokenizer: str
    factor: float
    exact: bool
    images: images.ImagePolicy
    per_message: int
    reply: int
    tool_prompt: tuple[int, int] = (0, 0)
    generic: bool = False  # no provider, name or hint decided the format
    channels: bool = False  # renders harmony channels around tool calls (gpt-5)
    family: Family | None = None  # a compatible host's model family (compat.py)
    # Counted in ``reply`` but not billed when the request has a system
    # message (a template's default system block: compat.Family.system_block).
    system_drop: int = 0
    format_overhead: int = 0  # fixed tokens of a json_schema response format (openai.py)
    constrained: int = 0  # extra tokens of each earlier answer under such a format


def _bare(model: str) -> str:
    return model.lower().rsplit("/", 1)[-1]



def _make_scheme(model: str, price: Price) -> _Scheme:
    name = _bare(model)
    hint = (price.tokenizer or "").strip().lower() or None
    claude = _claude_version(name) if "claude" in name else None
    if price.provider == "anthropic" or "claude" in name or hint == "anthropic":
        hires = claude is None or (claude[1], claude[2]) >= (4, 7)
        if claude is None:
            tool_prompt = _CLAUDE_TOOL_PROMPT_UNKNOWN
        else:
            tier, major, minor = claude
            tool_prompt = _CLAUDE_TOOL_PROMPT.get(
                (tier, major, minor),
                _CLAUDE_TOOL_PROMPT.get(("", major, minor), _CLAUDE_TOOL_PROMPT_UNKNOWN),
            )
        # Claude has no local tokenizer: tiktoken's count times the factor of
        # its generation (anthropic.claude_text_factor); a configured
        # tiktoken ``tokenizer`` hint picks the encoding.
        tokenizer = hint if hint in _TIKTOKEN_NAMES else CLAUDE_ENCODING
        factor = claude_text_factor(claude)
        policy = images.anthropic_policy(hires)
        return _Scheme(("anthropic", tokenizer, factor, policy.key, tool_prompt), "anthropic",
                       tokenizer, factor, False, policy, 4, 3, tool_prompt)
    approx_factor: float | None = None
    if hint is not None and hint.startswith("approx"):
        _, _, value = hint.partition(":")
        try:
            approx_factor = float(value) if value else None
        except ValueError:
            approx_factor = None
        approx_factor = approx_factor or COMPAT_DEFAULT.factor
    if approx_factor is None and (
        price.provider == "openai" or _is_openai_name(name) or hint in _TIKTOKEN_NAMES
    ):
        encoding = hint if hint in _TIKTOKEN_NAMES else _openai_encoding(name)
        policy = images.openai_policy(name)
        preamble = tool_preamble(name)
        channels = uses_channels(name)
        overhead = response_format_overhead(name)  # in the key: it is in cached counts
        return _Scheme(("openai", encoding, policy.key, preamble, overhead), "openai", encoding,
                       1.0, True, policy, 3, reply_priming(name), (preamble, preamble),
                       channels=channels, format_overhead=overhead,
                       constrained=constrained_answer(name))
    family = family_of(name)
    generic = hint is None and price.provider == "other" and family is None
    chosen = family or COMPAT_DEFAULT
    encoding, factor = chosen.encoding, chosen.factor
    if approx_factor is not None:
        factor = approx_factor
    policy = images.compat_policy(name)
    # The template's fixed text (a default system message, a date header) is
    # billed once per request: counted into the reply priming.
    reply = chosen.reply
    preamble = 0
    if chosen.preamble:
        try:
            preamble = math.ceil(tokens.count_function(encoding)(chosen.preamble) * factor)
        except tokens.TokenizerUnavailable:
            preamble = len(chosen.preamble.encode("utf-8")) // 2 + 1
    reply += preamble
    drop = chosen.system_block + (preamble if chosen.default_system else 0)
    return _Scheme(("approx", encoding, factor, policy.key, chosen.fragment), "approx", encoding,
                   factor, False, policy, chosen.per_message, reply, generic=generic,
                   family=family, system_drop=drop)


def _schema_format(extra: Mapping[str, Any]) -> bool:
    """Does the request carry a structured-output schema (which adds prompt tokens)?"""
    fmt = extra.get("response_format") or native_format(extra)
    return isinstance(fmt, Mapping) and fmt.get("type") not in (None, "text", "json_object")


# -- the estimator ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a call would reserve: prompt tokens, reserved output, dollars.

    ``max_tokens`` is set when the request named no output limit, so the
    adapter must send it; ``amount`` is rounded up to a whole nano-dollar.
    """

    model: str
    prompt_tokens: int
    output_tokens_reserved: int
    max_tokens: int | None
    amount: Decimal
    price: Price


class Estimator:
    """Counts the prompt tokens a provider will bill for a request.

    Thread-safe; one instance is shared by every call of a ``Guard``.
    """

    def __init__(self, *, cache_size: int = 16384) -> None:
        self.cache_size = cache_size
        self._cache: OrderedDict[Any, tuple[int, int]] = OrderedDict()
        self._cache_lock = threading.Lock()
        # The cache keys of recently counted message dicts, by id: an agent
        # loop passes the same dicts again, and freezing them is most of the
        # cost of a warm count. An entry holds the dict (so its id is not
        # reused), a copy, its cache key and its count; it is used only while
        # the dict still equals the copy. Bounded: at most _MEMO_SIZE small,
        # scalar-valued messages.
        self._recent: dict[int, tuple[dict[Any, Any], dict[Any, Any], Any, Any, Any]] = {}
        # Recent conversations, by (scheme, id of the first message): the
        # message dicts of a call (held, so ids are not reused), copies of
        # them, and running totals of their (text, fixed) counts, without
        # the reply priming. A later call whose messages begin with some of
        # these very dicts, all still equal to their copies, reuses the
        # total up to where they stop matching.
        self._convos: dict[
            tuple[int, int], tuple[list[Any], list[dict[Any, Any]], list[tuple[int, int]]]
        ] = {}
        self._schemes: dict[tuple[str, str, str | None], _Scheme] = {}
        self._last: tuple[Price | None, str, _Scheme | None] = (None, "", None)
        self._calib: dict[str, float] = {}
        self._exact: dict[str, bool] = {}
        self._calib_lock = threading.Lock()
        self._fallback_warned: set[str] = set()
        self.hits = 0
        self.misses = 0

    # -- public ---------------------------------------------------------------

    def count_prompt(
        self,
        model: str,
        price: Price,
        messages: Sequence[Any],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        system: Any = None,
        extra: Mapping[str, Any] | None = None,
        calibrated: bool = True,
    ) -> int:
        """Prompt tokens the provider will bill, including calibration
        (``calibrated=False``: the raw count, which ``crew_budget.margin``
        learns from; ``calibrated(model, raw)`` applies it afterwards).

        ``messages`` may be OpenAI- or Anthropic-shaped dicts (or objects with
        ``role``/``type`` and ``content``, such as LangChain messages);
        ``system`` is Anthropic's separate system prompt; ``extra`` may hold
        ``tool_choice``, ``functions``, ``function_call``, ``response_format``,
        Anthropic's ``output_format`` / ``output_config`` and ``thinking``.
        """
        last = self._last  # one tuple: read and replaced atomically
        if last[0] is price and last[1] == model and last[2] is not None:
            scheme = last[2]
        else:
            scheme = self._scheme(model, price)
            self._last = (price, model, scheme)
        if scheme.generic and _looks_anthropic(messages, tools, system):
            # Neither the provider nor the name says which API this model
            # speaks, but the request is Anthropic-shaped: Claude's rules
            # (tool-use system prompt included), for an unknown Claude.
            scheme = self._scheme(model, replace(price, provider="anthropic"))
        text, fixed = self._count(scheme, messages, tools, system,
                                  _NO_EXTRA if extra is None else extra)
        if scheme.system_drop and (system or _has_system_message(messages)):
            fixed -= scheme.system_drop
        raw = math.ceil(text * scheme.factor - 1e-9) + fixed
        return self.calibrated(model, raw) if calibrated else raw

    def calibrated(self, model: str, raw: int) -> int:
        """``raw`` (a ``calibrated=False`` count) with ``model``'s correction applied."""
        factor = self._calib.get(model, 1.0)
        return raw if factor == 1.0 else math.ceil(raw * factor - 1e-9)

    def calibrate(self, model: str, estimated: int, actual: int) -> None:
        """Learn from a settled call how far off the estimate was (see module doc)."""
        if estimated <= 0 or actual <= 0 or max(estimated, actual) < 32:
            return
        if actual <= estimated and self._exact.get(model, False) and model not in self._calib:
            return  # an exact count is never lowered: nothing to learn
        with self._calib_lock:
            current = self._calib.get(model, 1.0)
            target = current * actual / estimated
            rate = 0.6 if target > current else 0.05
            low = 1.0 if self._exact.get(model, False) else 0.7
            updated = min(3.0, max(low, current + rate * (target - current)))
            self._calib[model] = updated

    def calibration(self, model: str) -> float:
        """The current correction factor of ``model`` (1.0 until calibrated)."""
        return self._calib.get(model, 1.0)

    def cache_info(self) -> dict[str, int]:
        return {"size": len(self._cache), "max": self.cache_size, "hits": self.hits,
                "misses": self.misses}

    # -- internals ------------------------------------------------------------

    def _scheme(self, model: str, price: Price) -> _Scheme:
        key = (model, price.provider, price.tokenizer)
        scheme = self._schemes.get(key)
        if scheme is None:
            scheme = _make_scheme(model, price)
            self._schemes[key] = scheme
            self._exact[model] = scheme.exact
        return scheme

    def _counter(self, scheme: _Scheme) -> Callable[[str], int]:
        try:
            return tokens.count_function(scheme.tokenizer)
        except tokens.TokenizerUnavailable as exc:
            if scheme.tokenizer not in self._fallback_warned:
                self._fallback_warned.add(scheme.tokenizer)
                log.warning("crew-budget: %s; estimating with 1 token per 2 UTF-8 bytes", exc)
            return _bytes_over_two

    def _count(
        self,
        scheme: _Scheme,
        messages: Sequence[Any],
        tools: Sequence[Any] | None,
        system: Any,
        extra: Mapping[str, Any],
    ) -> tuple[int, int]:
        if not system and not tools and (extra is _NO_EXTRA or (
                not extra.get("functions") and not _schema_format(extra))):
            # Messages alone, the agent loop's requests: most messages are the
            # same, unchanged dicts as in a recent call, so add up their
            # remembered counts and count only the rest. (Tools and schemas
            # depend on whether a system message exists, so those requests
            # take the general path.)
            recent = self._recent
            skey = scheme.key
            known_text = known_fixed = n_known = 0
            copies: list[dict[Any, Any]] = []
            sums: list[tuple[int, int]] = [(0, 0)]
            # By ids: the scheme (and so its key) lives as long as the
            # estimator, and the entry holds the first message.
            convo_key = (id(skey), id(messages[0])) if messages else None
            convo = self._convos.get(convo_key) if convo_key is not None else None
            if convo is not None:
                head, copies, sums = convo
                # How many leading messages are the very dicts of that call
                # (map() stops at the shorter list), and still unchanged.
                same = list(map(is_, messages, head))
                n_known = same.index(False) if False in same else len(same)
                if n_known and not all(map(eq, copies, islice(messages, n_known))):
                    n_known = 0
                copies, sums = copies[:n_known], sums[:n_known + 1]
                known_text, known_fixed = sums[n_known]
            start = n_known
            rest: list[Any] = []
            for m in islice(messages, start, None) if start else messages:
                if type(m) is dict:
                    seen = recent.get(id(m))
                    if (seen is not None and seen[0] is m and seen[2] is skey
                            and seen[1] == m):
                        known_text += seen[4][0]
                        known_fixed += seen[4][1]
                        n_known += 1
                        continue
                rest.append(m)
            text, fixed = self._count_messages(scheme, rest, extra)
            if n_known:
                with self._cache_lock:
                    self.hits += n_known
                if convo_key is not None and len(messages) > start:
                    self._remember_convo(convo_key, messages, copies, sums, start, skey)
            return text + known_text, fixed + known_fixed
        items: list[tuple[str, Any]] = []
        if system:
            items.append(("system", system))
        has_system = bool(system)
        for message in messages:
            msg = _as_message(message)
            items.append(("message", msg))
            if msg.get("role") in ("system", "developer"):
                has_system = True
        functions = extra.get("functions")
        tool_list = list(tools or ()) + list(functions or ())
        if tool_list:
            items.append(("tools", tool_list))
        native = native_format(extra)
        fmt = extra.get("response_format") or native
        if native is not None and fmt is native and scheme.kind == "anthropic":
            items.append(("native_format", native))
            fmt = None  # Claude's structured outputs: no tool-use system prompt
        elif isinstance(fmt, Mapping) and fmt.get("type") not in (None, "text", "json_object"):
            items.append(("format", fmt))
        else:
            fmt = None  # plain text / JSON mode: no schema in the prompt

        keys: list[Any] = []
        found: list[tuple[int, int] | None] = []
        memoized: list[int] = []  # items to remember by identity once counted
        recent = self._recent
        skey = scheme.key
        for kind, value in items:
            memo = kind == "message" and type(value) is dict
            if memo:
                seen = recent.get(id(value))
                if seen is not None and seen[0] is value and seen[2] is skey and seen[1] == value:
                    # The same, unchanged dict as a recent call: its count is
                    # known without building its key or touching the LRU.
                    keys.append(seen[3])
                    found.append(seen[4])
                    continue
            found.append(None)
            try:
                key = (skey, kind, _freeze(value))
            except _Uncacheable:
                keys.append(None)
                continue
            keys.append(key)
            if memo and _memoizable(value):
                memoized.append(len(keys) - 1)
        cache = self._cache
        with self._cache_lock:
            for i, key in enumerate(keys):
                if key is not None and found[i] is None:
                    value = cache.get(key)
                    if value is not None:
                        cache.move_to_end(key)
                        found[i] = value
        text = fixed = misses = 0
        new: list[tuple[Any, tuple[int, int]]] = []
        count: Callable[[str], int] | None = None
        for i, (kind, value) in enumerate(items):
            result = found[i]
            if result is None:
                misses += 1
                if count is None:
                    count = self._counter(scheme)
                result = self._count_item(scheme, count, kind, value)
                if keys[i] is not None:
                    new.append((keys[i], result))
            text += result[0]
            fixed += result[1]
            found[i] = result
        for i in memoized:
            value = items[i][1]
            if len(recent) >= _MEMO_SIZE:
                recent.clear()
            recent[id(value)] = (value, dict(value), skey, keys[i], found[i])
        with self._cache_lock:
            self.hits += len(items) - misses
            self.misses += misses
            for key, result in new:
                cache[key] = result
            while len(cache) > self.cache_size:
                cache.popitem(last=False)
        fixed += scheme.reply
        if scheme.kind == "anthropic" and _thinking_enabled(extra.get("thinking")):
            fixed += _THINKING_PROMPT
        if fmt is not None and scheme.kind == "openai":
            # The response format's section joins a system message, else is one.
            fixed += 0 if has_system else FORMAT_MESSAGE_FRAMING
            fixed += scheme.constrained * sum(
                1 for kind, value in items
                if kind == "message" and value.get("role") == "assistant" and value.get("content"))
        if tool_list or fmt is not None:
            fixed += self._tool_adjustments(scheme, extra, bool(tool_list), has_system, fmt,
                                            count)
        return text, fixed

    def _count_messages(self, scheme: _Scheme, messages: Sequence[Any],
                        extra: Mapping[str, Any]) -> tuple[int, int]:
        """Count a request of messages alone (no system, tools, functions or
        schema): each message from the LRU or the tokenizer, remembered by
        identity, plus the reply priming. The general path below does the
        same for requests that have those, which change the framing."""
        text = fixed = hits = 0
        count: Callable[[str], int] | None = None
        recent, skey, cache, lock = self._recent, scheme.key, self._cache, self._cache_lock
        for message in messages:
            msg = _as_message(message)
            try:
                key: Any = (skey, "message", _freeze(msg))
            except _Uncacheable:
                key = None
            result = None
            if key is not None:
                with lock:
                    result = cache.get(key)
                    if result is not None:
                        cache.move_to_end(key)
            if result is None:
                if count is None:
                    count = self._counter(scheme)
                result = self._message(scheme, count, msg)
                if key is not None:
                    with lock:
                        cache[key] = result
                        while len(cache) > self.cache_size:
                            cache.popitem(last=False)
            else:
                hits += 1
            if key is not None and msg is message and type(msg) is dict and _memoizable(msg):
                if len(recent) >= _MEMO_SIZE:
                    recent.clear()
                recent[id(msg)] = (msg, dict(msg), skey, key, result)
            text += result[0]
            fixed += result[1]
        with lock:
            self.hits += hits
            self.misses += len(messages) - hits
        fixed += scheme.reply
        if scheme.kind == "anthropic" and _thinking_enabled(extra.get("thinking")):
            fixed += _THINKING_PROMPT
        return text, fixed

    def _remember_convo(self, key: tuple[int, int], messages: Sequence[Any],
                        copies: list[dict[Any, Any]], sums: list[tuple[int, int]],
                        start: int, skey: Any) -> None:
        """Remember ``messages`` as a conversation, if every message is memoized.

        ``copies`` and ``sums`` cover its first ``start`` messages (copies,
        and running totals of their counts); the others were just counted or
        found in the identity memo, which now holds their copies and counts.
        A message the memo does not hold (not a small, scalar-valued dict)
        ends the attempt.
        """
        recent = self._recent
        text, fixed = sums[start]
        for message in islice(messages, start, None):
            seen = recent.get(id(message))
            if seen is None or seen[0] is not message or seen[2] is not skey or seen[1] != message:
                return
            copies.append(seen[1])
            text += seen[4][0]
            fixed += seen[4][1]
            sums.append((text, fixed))
        convos = self._convos
        if len(convos) >= _CONVO_SIZE:
            convos.clear()
        convos[key] = (list(messages), copies, sums)

    def _count_item(self, scheme: _Scheme, count: Callable[[str], int], kind: str,
                    value: Any) -> tuple[int, int]:
        if kind == "message":
            return self._message(scheme, count, value)
        if kind == "system":
            if scheme.kind == "anthropic":
                text, fixed = self._content(scheme, count, value)
                return text, fixed + 1
            return self._message(scheme, count, {"role": "system", "content": value})
        if kind == "tools":
            return self._tools(scheme, count, value)
        if kind == "native_format":
            return count(structured_output_text(value)), STRUCTURED_OUTPUT_PROMPT
        return self._format(scheme, count, value)

    # messages ----------------------------------------------------------------

    def _message(self, scheme: _Scheme, count: Callable[[str], int],
                 msg: Mapping[str, Any]) -> tuple[int, int]:
        if scheme.kind == "anthropic" and _openai_shaped(msg):
            return self._claude_from_openai(scheme, count, msg)
        text, fixed = 0, scheme.per_message
        for key, value in msg.items():
            if value is None:
                continue
            if key == "content":
                content = value
                if scheme.channels and msg.get("role") in ("system", "developer"):
                    content = trimmed_instructions(value)
                t, f = self._content(scheme, count, content)
                text += t
                fixed += f
            elif key == "role" and scheme.channels and value == "assistant":
                text += count(str(value))
                if msg.get("content"):
                    fixed += FINAL_CHANNEL
            elif key == "role":
                # Claude's per-message framing already includes the turn marker,
                # as do templates that write no role names (compat.Family).
                named = scheme.family is None or scheme.family.role_names
                if named and scheme.kind != "anthropic" and not (
                        scheme.kind == "openai" and value == "tool"):
                    text += count(str(value))
            elif key == "name":
                if scheme.kind == "openai" and msg.get("role") == "tool":
                    continue  # the result's author is the function, counted with the call
                text += count(str(value))
                fixed += 1
            elif key == "tool_calls" and scheme.kind == "openai":
                t, f = tool_calls_tokens(count, value, channels=scheme.channels)
                text += t
                fixed += f
                if not msg.get("content"):
                    fixed -= ASSISTANT_FRAMING
            elif key == "tool_calls":
                family = scheme.family
                if family is not None and family.calls_text and value:
                    text += count(family.calls_text)
                for call in value or ():
                    if family is not None and family.call_text:
                        text += count(family.call_text)
                    if not isinstance(call, Mapping):
                        text += count(str(call))
                        continue
                    fn = call.get("function", call)
                    fn = fn if isinstance(fn, Mapping) else {}
                    if scheme.family is None or scheme.family.call_ids:
                        text += count(str(call.get("id") or ""))
                    text += count(str(fn.get("name", ""))) + count(_args(fn))
                    fixed += 3
            elif key == "function_call" and isinstance(value, Mapping):
                text += count(str(value.get("name", ""))) + count(_args(value))
                fixed += 3
            elif key == "tool_call_id":
                if scheme.kind != "openai" and (scheme.family is None or scheme.family.call_ids):
                    text += count(str(value))
                if scheme.family is not None and scheme.family.result_text:
                    text += count(scheme.family.result_text)
            elif isinstance(value, str) and key not in _IGNORED_KEYS:
                text += count(value)
        return text, fixed

    def _claude_from_openai(self, scheme: _Scheme, count: Callable[[str], int],
                            msg: Mapping[str, Any]) -> tuple[int, int]:
        """An OpenAI-shaped message sent to Claude through a compatible endpoint.

        litellm, Databricks, Bedrock's and Anthropic's own OpenAI-compatible
        endpoints translate chat messages into the Messages API before Claude
        reads them (Anthropic, "OpenAI SDK compatibility": system and developer
        messages are hoisted into the ``system`` prompt; tool calls become
        ``tool_use`` blocks and ``tool`` messages ``tool_result`` blocks), so
        they are counted as those: a system message as the system prompt (+1,
        not a message's framing), calls and results with Claude's own rules.
        """
        role = msg.get("role")
        text, fixed = self._content(scheme, count, msg.get("content") or "")
        if role in ("system", "developer"):
            return text, fixed + 1
        if role == "tool":
            return text + count(TOOL_RESULT_WRAPPER), fixed + scheme.per_message
        for call in msg.get("tool_calls") or ():
            fn = call.get("function", call) if isinstance(call, Mapping) else {}
            fn = fn if isinstance(fn, Mapping) else {}
            try:
                args = json.loads(_args(fn) or "{}")
            except ValueError:
                args = {}
            text += count(tool_use_text({"name": fn.get("name", ""), "input": args}))
        return text, fixed + scheme.per_message

    def _content(self, scheme: _Scheme, count: Callable[[str], int],
                 content: Any) -> tuple[int, int]:
        if isinstance(content, str):
            if scheme.kind == "anthropic":
                return claude_text_tokens(count(content), content), 0
            return count(content), 0
        if isinstance(content, Mapping):
            content = [content]
        if not isinstance(content, (list, tuple)):
            return count(str(content)), 0
        text = fixed = 0
        skip_thinking = scheme.kind == "anthropic" and unbilled_thinking(content)
        for part in content:
            if isinstance(part, str):
                text += count(part)
                continue
            if not isinstance(part, Mapping):
                text += count(str(part))
                continue
            if skip_thinking and part.get("type") in THINKING_BLOCKS:
                continue
            t, f = self._part(scheme, count, part)
            text += t
            fixed += f
        return text, fixed

    def _part(self, scheme: _Scheme, count: Callable[[str], int],
              part: Mapping[str, Any]) -> tuple[int, int]:
        ptype = part.get("type")
        if ptype in ("text", "input_text", "output_text") or (ptype is None and "text" in part):
            value = str(part.get("text", ""))
            if scheme.kind == "anthropic":
                return claude_text_tokens(count(value), value), 0
            return count(value), 0
        if ptype in ("image_url", "input_image"):
            ref = part.get("image_url")
            detail = str(part.get("detail") or "auto")
            if isinstance(ref, Mapping):
                detail = str(ref.get("detail") or detail)
                ref = ref.get("url")
            return 0, self._image_tokens(scheme, ref if isinstance(ref, str) else None, detail)
        if ptype == "image":
            return 0, self._image_tokens(scheme, _image_block_source(part), "auto")
        if ptype in ("tool_use", "server_tool_use") and scheme.kind == "anthropic":
            return count(tool_use_text(part)), 0
        if ptype == "tool_result" and scheme.kind == "anthropic":
            text, fixed = self._content(scheme, count, part.get("content") or "")
            return text + count(TOOL_RESULT_WRAPPER), fixed
        if ptype == "tool_use":
            body = json.dumps(part.get("input", {}), separators=(",", ":"), ensure_ascii=False,
                              default=str)
            return count(str(part.get("name", ""))) + count(body), 12
        if ptype == "tool_result":
            text, fixed = self._content(scheme, count, part.get("content") or "")
            return text, fixed + 12
        if ptype in ("document", "file", "input_file"):
            return self._document(scheme, count, part)
        if ptype == "thinking":
            return count(str(part.get("thinking", ""))), 0
        if ptype == "redacted_thinking":
            return 0, math.ceil(len(str(part.get("data", ""))) / 4)
        if ptype == "input_audio":
            data = (part.get("input_audio") or {}).get("data", "")
            # ~10 audio tokens per second of 16 kHz PCM16 (32 kB/s): a rough
            # size bound; audio is billed at its own rate, not priced here.
            return 0, math.ceil(len(str(data)) * 3 / 4 / 3200)
        return count(json.dumps(part, ensure_ascii=False, default=str)), 0

    def _image_tokens(self, scheme: _Scheme, ref: str | None, detail: str) -> int:
        """Tokens of one image; an http URL or unreadable data has no size: the maximum."""
        size = None
        if ref is not None:
            if ref.startswith("data:"):
                size = images.data_url_size(ref)
            elif not ref.startswith(("http://", "https://", "file-", "gs://", "s3://")):
                size = images.base64_size(ref)
        return scheme.images.tokens(size, detail)

    def _document(self, scheme: _Scheme, count: Callable[[str], int],
                  part: Mapping[str, Any]) -> tuple[int, int]:
        source = part.get("source") or part.get("file") or part
        if isinstance(source, Mapping):
            if source.get("type") == "text" and isinstance(source.get("data"), str):
                if scheme.kind == "anthropic":
                    doc = document_text(part, source["data"])
                    return claude_text_tokens(count(doc), doc), 0
                return count(source["data"]), 0
            if source.get("type") == "content":
                return self._content(scheme, count, source.get("content") or "")
            data = source.get("data") or source.get("file_data") or ""
            if isinstance(data, str) and data:
                layout = pdf_layout(data)
                if layout is not None and layout.text is not None:
                    return count(layout.text), layout.pages * _pdf_page_image(scheme)
                if layout is not None:  # pages counted, text unreadable: the page bound
                    return 0, layout.pages * _PDF_PAGE_TOKENS
        return 0, _UNKNOWN_DOCUMENT_TOKENS

    # tools -------------------------------------------------------------------

    def _tools(self, scheme: _Scheme, count: Callable[[str], int],
               tools: Sequence[Any]) -> tuple[int, int]:
        if scheme.kind == "openai":
            functions = [_as_function(t) for t in tools]
            custom = [f for f in functions if f is not None]
            fixed = _SERVER_TOOL_TOKENS * (len(functions) - len(custom))
            if not custom:
                return 0, fixed
            return count(render_functions(custom)), fixed + 9
        text = fixed = 0
        if scheme.kind == "approx":
            found = [_as_function(t) for t in tools]
            defined = [f for f in found if f is not None]
            text, fixed = tools_tokens(scheme.family, count, defined) if defined else (0, 0)
            return text, fixed + _SERVER_TOOL_TOKENS * (len(found) - len(defined))
        for tool in tools:
            function = _as_function(tool)
            if function is None:
                fixed += _SERVER_TOOL_TOKENS
                continue
            if scheme.kind == "anthropic":
                text += count(anthropic_tool_text(function))
                continue
            body = {"name": function.get("name", ""),
                    "description": function.get("description", ""),
                    "input_schema": function.get("parameters") or {}}
            text += count(json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str))
        if scheme.kind == "anthropic" and text:
            text += count(TOOLS_WRAPPER)
        return text, fixed

    def _format(self, scheme: _Scheme, count: Callable[[str], int],
                fmt: Mapping[str, Any]) -> tuple[int, int]:
        inner = fmt.get("json_schema")
        spec: Mapping[str, Any] = inner if isinstance(inner, Mapping) else fmt
        schema = spec.get("schema", spec)
        body = json.dumps(schema, separators=(",", ":"), ensure_ascii=False, default=str)
        if scheme.family is not None and not scheme.family.schema_in_prompt:
            return 0, 0  # enforced while decoding, not written into the prompt (compat.py)
        if scheme.kind == "openai":
            return count(response_format_text(fmt)), scheme.format_overhead
        return count(body), 20

    def _tool_adjustments(self, scheme: _Scheme, extra: Mapping[str, Any], has_tools: bool,
                          has_system: bool, fmt: Any, count: Callable[[str], int] | None) -> int:
        choice = extra.get("tool_choice", extra.get("function_call"))
        if scheme.kind == "openai":
            if not has_tools:
                return 0
            # tool_choice "required" bills nothing over "auto" (exact on recorded
            # gpt-4o, gpt-4-1106 calls); "none" one token; a named function its name + 7.
            adjust = (-4 if has_system else 0) + scheme.tool_prompt[0]
            if not choice_in_prompt(scheme.reply):
                return adjust  # harmony models: tool_choice is not in the prompt
            if choice == "none":
                adjust += 1
            elif isinstance(choice, Mapping):
                name = choice.get("name") or (choice.get("function") or {}).get("name") or ""
                counter = count or self._counter(scheme)
                adjust += 7 + counter(str(name))
            return adjust
        if scheme.kind == "anthropic":
            named = forced_tool_name(choice)
            if isinstance(choice, Mapping):
                choice = choice.get("type")
            if fmt is not None:
                # litellm sends a JSON-schema response format as a forced tool;
                # native structured output has its own prompt: take the larger.
                return max(scheme.tool_prompt)
            forced = choice in ("any", "tool", "required")
            adjust = scheme.tool_prompt[1] if forced else scheme.tool_prompt[0]
            if named is not None:
                counter = count or self._counter(scheme)
                adjust += math.ceil(counter(named) * scheme.factor - 1e-9)
            return adjust
        return 0


_IGNORED_KEYS = frozenset({"id", "type", "cache_control", "audio", "refusal", "annotations",
                           "additional_kwargs", "response_metadata", "usage_metadata",
                           "invalid_tool_calls", "example", "artifact", "status"})

_LC_ROLES = {"human": "user", "ai": "assistant", "AIMessageChunk": "assistant",
             "system": "system", "tool": "tool", "function": "function", "chat": "user",
             "developer": "developer"}


def _as_message(message: Any) -> Mapping[str, Any]:
    """Messages as mappings; LangChain-style objects are read by attribute."""
    if type(message) is dict or isinstance(message, Mapping):
        return message
    if isinstance(message, str):
        return {"role": "user", "content": message}
    role = getattr(message, "role", None)
    if not isinstance(role, str):
        kind = getattr(message, "type", "user")
        role = _LC_ROLES.get(str(kind), str(kind))
    out: dict[str, Any] = {"role": role, "content": getattr(message, "content", "") or ""}
    name = getattr(message, "name", None)
    if isinstance(name, str) and name:
        out["name"] = name
    calls = getattr(message, "tool_calls", None)
    if calls:
        out["tool_calls"] = [
            {"id": c.get("id"), "type": "function",
             "function": {"name": c.get("name", ""),
                          "arguments": json.dumps(c.get("args", {}), ensure_ascii=False,
                                                  separators=(",", ":"), default=str)}}
            if isinstance(c, Mapping) and "args" in c else c
            for c in calls
        ]
    call_id = getattr(message, "tool_call_id", None)
    if isinstance(call_id, str) and call_id:
        out["tool_call_id"] = call_id
    return out



def _has_system_message(messages: Sequence[Any]) -> bool:
    """Does a system message take a template's system block?

    The Llama 3.x and Qwen2.5 templates read only ``messages[0]`` for it
    (``if messages[0]['role'] == 'system'``), so only the first is looked at:
    constant time however long the history.
    """
    return bool(messages) and _as_message(messages[0]).get("role") == "system"


def _openai_shaped(msg: Mapping[str, Any]) -> bool:
    """A chat-completions message the Messages API has no place for as is."""
    return (msg.get("role") in ("system", "developer", "tool")
            or bool(msg.get("tool_calls")))


def _pdf_page_image(scheme: _Scheme) -> int:
    """The image half of one PDF page (its text half is the text it shows,
    read with pypdf: anthropic.py ``pdf_layout``).

    Anthropic and OpenAI both put "the extracted text and an image of each
    page" in the context, and neither documents the size a page is rasterized
    at (Anthropic, "Coordinates and bounding boxes": "pages are rasterized to
    images server-side at dimensions you don't control"). Claude: the largest
    image the model reads (``max_tokens``, 1,568 + 3): recorded Letter and A4
    pages, Claude 3.5 Sonnet to Haiku 4.5, bill that and their text within
    2 %, whatever the page's shape. OpenAI and compatible hosts: the most one
    image bills at high detail, at most ``_PDF_PAGE_TOKENS`` (the top of
    Anthropic's documented 1,500-3,000 a page; gpt-4o-mini's image multiplier
    would make it 48k). That is a bound, not an estimate: on gpt-4o OpenAI
    bills a page image less than any documented high-detail image (images.py,
    "OpenAI PDF pages").
    """
    if scheme.kind == "anthropic":
        return scheme.images.max_tokens()
    return min(scheme.images.max_tokens("high"), _PDF_PAGE_TOKENS)


def _image_block_source(part: Mapping[str, Any]) -> str | None:
    source = part.get("source")
    if isinstance(source, Mapping):
        if source.get("type") == "base64" and isinstance(source.get("data"), str):
            return str(source["data"])
        return None
    # LangChain v1 standard image block: {"type": "image", "base64": ...} / "url"
    for key in ("base64", "data"):
        if isinstance(part.get(key), str):
            return str(part[key])
    url = part.get("url")
    return url if isinstance(url, str) and url.startswith("data:") else None



def _bytes_over_two(text: str) -> int:
    return len(text.encode("utf-8")) // 2 + 1


