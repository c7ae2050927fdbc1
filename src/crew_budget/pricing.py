"""Model prices: the user's overrides, then genai-prices, then litellm's map.

Where a price comes from, in order:

1. ``prices:`` in the budget YAML (``source="override"``): the user knows best.
2. **genai-prices** (pydantic/genai-prices, ``source="genai-prices"``): model
   matching per provider (dated and undated names, ``-latest`` aliases,
   Bedrock/Vertex ids), context-length tiers, service tiers, cache writes by
   TTL, audio/image tokens and per-request fees, as ``Decimal``. Only the data
   snapshot bundled in the installed wheel is read: nothing here starts its
   ``UpdatePrices`` thread or touches the network, so a price never changes
   under a running budget.
3. litellm's bundled ``model_prices_and_context_window_backup.json``
   (``source="litellm"``) for what genai-prices lacks, read as a JSON file found
   by scanning ``sys.path`` (importing litellm costs seconds and tries the
   network). Floats are parsed straight to ``Decimal``.

Names are tried as written, then normalised the ways users write them:
URL-decoded (``%3A``), without a ``provider/`` prefix, without a Bedrock
region or inference-profile prefix (``us.anthropic.claude-...``), without the
``anthropic.`` vendor and ``-v1:0`` version of Bedrock ids, with Vertex's
``@date`` as ``-date``, and last without a ``-latest`` or date suffix. The
provider (``provider=``: an id such as ``"anthropic"``, a litellm provider
such as ``"bedrock"``, or a base URL) picks the provider's own price list
(OpenRouter's differ from OpenAI's). Each ``Price`` says which source priced
it (``source``) and under what name (``model``).

Both libraries are loaded on the first lookup, never at import: genai-prices
alone costs ~150 ms to import. Each (provider, model) is resolved once and
cached; tier selection at settle is then integer arithmetic on the cached
``Price`` (see ``Price.for_usage`` and ``crew_budget.usage.cost_nano_of``).

A model with no price is an ``UnknownModelError`` with suggestions
(invariant 6): pricing an unknown model at $0 is how surprise bills happen.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from crew_budget.errors import PricingError, UnknownModelError
from crew_budget.money import atto_per_token

__all__ = [
    "PRICE_SOURCES",
    "SERVICE_TIERS",
    "Price",
    "PriceBook",
    "candidates",
    "litellm_data_dir",
    "litellm_price_map_path",
    "names_cache_path",
    "normalize_provider",
    "normalize_service_tier",
    "price_from_genai",
]

PRICE_SOURCES = ("override", "genai-prices", "litellm")
"""Where a ``Price`` came from, in the order they are consulted."""

SERVICE_TIERS = ("priority", "flex", "batch")
"""Service tiers billed at their own rates (anything else is the standard rate)."""

_MILLION = Decimal(1_000_000)
_THOUSAND = Decimal(1_000)
_MAP_FILE = "model_prices_and_context_window_backup.json"

# The rates a Price carries besides input/output, in Price field order.
_EXTRA_RATES = (
    "cache_write_1h",
    "input_audio",
    "output_audio",
    "input_image",
    "output_image",
    "web_search",
    "per_request",
)


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token for one model. ``None`` means "billed at the input/output rate".

    ``source`` is where the price came from (``PRICE_SOURCES``) and ``model``
    the name it was found under there. Beyond tokens: ``cache_write_1h`` (a
    1-hour cache write; ``cache_write`` is the 5-minute one), audio and image
    token rates, ``web_search`` (USD per search) and ``per_request`` (USD per
    call). ``tiers`` are context-length tiers, ``((above, price), ...)``
    ascending: a call whose prompt has more than ``above`` tokens is billed
    entirely at that tier's ``price`` (the "cliff" every provider uses).
    ``service_tiers`` are ``((name, price), ...)`` for ``priority``/``flex``/
    ``batch`` (each with its own context tiers). ``for_usage`` picks one.
    """

    model: str
    provider: str
    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None
    tokenizer: str | None = None
    max_output_tokens: int | None = None
    source: str = "override"
    cache_write_1h: Decimal | None = None
    input_audio: Decimal | None = None
    output_audio: Decimal | None = None
    input_image: Decimal | None = None
    output_image: Decimal | None = None
    web_search: Decimal | None = None
    per_request: Decimal | None = None
    tiers: tuple[tuple[int, Price], ...] = ()
    service_tiers: tuple[tuple[str, Price], ...] = ()
    # When the data's prices change next (a new price's start date, the end
    # of an off-peak window), as a Unix time; None: not before the next
    # release of the data. ``PriceBook`` looks the model up again after it.
    expires_at: float | None = field(default=None, compare=False)
    # The five token rates (input, output, cached input, cache write,
    # reasoning; the last three defaulted as billed) in whole atto-USD per
    # token, or None when one is finer than that: then Decimal is used.
    atto: tuple[int, int, int, int, int] | None = field(
        init=False, default=None, repr=False, compare=False
    )
    # The other rates (``_EXTRA_RATES`` order, defaulted as billed) in whole
    # atto-USD, or None when any is finer; ``Usage.has_extras`` says whether a
    # usage's audio/image/1 h/search counts can change the cost at all.
    atto_extra: tuple[int, int, int, int, int, int, int] | None = field(
        init=False, default=None, repr=False, compare=False
    )
    variable: bool = field(init=False, default=False, repr=False, compare=False)
    # The settle fast path in one load: the five ``atto`` rates plus the
    # per-request fee, when all rates are whole atto-USD (these are the
    # standard rates: ``for_usage`` picks a tier's price first).
    atto_flat: tuple[int, int, int, int, int, int] | None = field(
        init=False, default=None, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        rates = (
            self.input,
            self.output,
            self.input if self.cached_input is None else self.cached_input,
            self.input if self.cache_write is None else self.cache_write,
            self.output if self.reasoning is None else self.reasoning,
        )
        atto = [atto_per_token(r) for r in rates]
        if all(a is not None for a in atto):
            object.__setattr__(self, "atto", tuple(atto))
        extra = [atto_per_token(r) for r in self.extra_rates()]
        if all(a is not None for a in extra):
            object.__setattr__(self, "atto_extra", tuple(extra))
        variable = bool(self.tiers or self.service_tiers)
        object.__setattr__(self, "variable", variable)
        if self.atto is not None and self.atto_extra is not None:
            object.__setattr__(self, "atto_flat", (*self.atto, self.atto_extra[6]))

    def extra_rates(self) -> tuple[Decimal, ...]:
        """The ``_EXTRA_RATES`` with defaults filled in as the provider bills them."""
        write = self.input if self.cache_write is None else self.cache_write
        return (
            write if self.cache_write_1h is None else self.cache_write_1h,
            self.input if self.input_audio is None else self.input_audio,
            self.output if self.output_audio is None else self.output_audio,
            self.input if self.input_image is None else self.input_image,
            self.output if self.output_image is None else self.output_image,
            Decimal(0) if self.web_search is None else self.web_search,
            Decimal(0) if self.per_request is None else self.per_request,
        )

    def for_usage(self, prompt_tokens: int, service_tier: str | None = None) -> Price:
        """The flat price a call is billed at: its service tier, then its context tier.

        ``prompt_tokens`` is everything the provider read (uncached + cache
        reads + cache writes): providers pick the tier by the whole prompt.
        An unknown service tier is billed at the standard rate.
        """
        price = self
        if service_tier is not None and self.service_tiers:
            for name, tier_price in self.service_tiers:
                if name == service_tier:
                    price = tier_price
                    break
        if price.tiers:
            for above, tier_price in reversed(price.tiers):
                if prompt_tokens > above:
                    return tier_price
        return price


def normalize_service_tier(value: object) -> str | None:
    """``"priority"``, ``"flex"`` or ``"batch"`` from what a request or response says.

    OpenAI says ``default``/``auto``/``scale``/``flex``/``priority``,
    Anthropic ``standard``/``priority``/``batch``: the standard ones are None.
    """
    if not isinstance(value, str):
        return None
    tier = value.strip().lower()
    if tier in ("batch", "batches"):
        return "batch"
    return tier if tier in SERVICE_TIERS else None


# -- providers -----------------------------------------------------------------

# What users and frameworks call a provider -> genai-prices' provider id.
# None: a local or self-hosted server; no list prices, so the name decides.
_PROVIDER_ALIASES: dict[str, str | None] = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "chatgpt": "openai",
    "anthropic": "anthropic",
    "azure": "azure",
    "azure_ai": "azure",
    "azure_openai": "azure",
    "azureopenai": "azure",
    "azurechatopenai": "azure",
    "bedrock": "aws",
    "bedrock_converse": "aws",
    "aws": "aws",
    "amazon": "aws",
    "gemini": "google",
    "google": "google",
    "google_genai": "google",
    "google-genai": "google",
    "google_vertexai": "google",
    "vertex": "google",
    "vertex_ai": "google",
    "vertex_ai_beta": "google",
    "vertexai": "google",
    "openrouter": "openrouter",
    "groq": "groq",
    "cerebras": "cerebras",
    "mistral": "mistral",
    "mistralai": "mistral",
    "codestral": "mistral",
    "deepseek": "deepseek",
    "xai": "x-ai",
    "x-ai": "x-ai",
    "x": "x-ai",
    "grok": "x-ai",
    "together": "together",
    "together_ai": "together",
    "togetherai": "together",
    "fireworks": "fireworks",
    "fireworks_ai": "fireworks",
    "cohere": "cohere",
    "cohere_chat": "cohere",
    "perplexity": "perplexity",
    "databricks": "databricks",
    "cloudflare": "cloudflare",
    "huggingface": "huggingface",
    "moonshot": "moonshotai",
    "moonshotai": "moonshotai",
    "novita": "novita",
    "ollama": None,
    "ollama_chat": None,
    "hosted_vllm": None,
    "vllm": None,
    "lm_studio": None,
    "local": None,
    "litellm_proxy": None,
    "custom_openai": None,
    "portkey": None,
}

# Base-URL host fragments -> provider, for hosts genai-prices' own patterns miss.
_HOSTS = (
    ("api.openai.com", "openai"),
    ("openai.azure.com", "azure"),
    ("azure-api.net", "azure"),
    ("cognitiveservices.azure.com", "azure"),
    ("services.ai.azure.com", "azure"),
    ("api.anthropic.com", "anthropic"),
    ("bedrock", "aws"),
    ("generativelanguage.googleapis.com", "google"),
    ("aiplatform.googleapis.com", "google"),
    ("openrouter.ai", "openrouter"),
    ("api.groq.com", "groq"),
    ("api.cerebras.ai", "cerebras"),
    ("api.mistral.ai", "mistral"),
    ("api.deepseek.com", "deepseek"),
    ("api.x.ai", "x-ai"),
    ("together.xyz", "together"),
    ("together.ai", "together"),
    ("fireworks.ai", "fireworks"),
    ("api.cohere.", "cohere"),
    ("api.perplexity.ai", "perplexity"),
    ("databricks", "databricks"),
    ("api.cloudflare.com", "cloudflare"),
    ("router.huggingface.co", "huggingface"),
    ("api.moonshot.", "moonshotai"),
    ("api.novita.ai", "novita"),
)

# First-party model makers, asked in turn for a name no provider was given for.
_VENDORS = ("openai", "anthropic", "mistral", "x-ai", "deepseek", "cohere", "moonshotai")

# genai-prices provider id -> the prefix a suggestion is written with.
_SUGGEST_PREFIX = {"aws": "bedrock", "google": "gemini", "x-ai": "xai",
                   "together": "together_ai", "fireworks": "fireworks_ai"}

# Providers whose models price by name alone (genai-prices matches their names).
_NAME_ALONE = ("openai", "anthropic", "google")

# genai-prices provider -> the API family the estimator counts tokens for.
_FAMILY = {"openai": "openai", "azure": "openai", "anthropic": "anthropic"}


def normalize_provider(provider: str | None) -> str | None:
    """A provider hint (id, litellm provider, LangChain ``_llm_type`` or base URL)
    as genai-prices' provider id, or None when it names no priced provider
    (a local server, a gateway, or something unknown: then the name decides)."""
    if not provider:
        return None
    hint = provider.strip()
    if "://" in hint or hint.startswith(("localhost", "127.")):
        host = (urlsplit(hint if "://" in hint else "http://" + hint).hostname or "").lower()
        for fragment, provider_id in _HOSTS:
            if fragment in host:
                return provider_id
        return None
    key = hint.lower().replace(" ", "_")
    if key in _PROVIDER_ALIASES:
        return _PROVIDER_ALIASES[key]
    if "chat" not in key:
        return key  # e.g. "huggingface_together": genai-prices' own ids pass through
    for alias, known in _PROVIDER_ALIASES.items():
        # LangChain _llm_type values such as "openai-chat", "anthropic-chat",
        # "chat-google-generative-ai", "amazon_bedrock_converse_chat".
        if len(alias) > 3 and alias in key:
            return known
    if "google" in key or "gemini" in key:
        return "google"
    return key


# -- names -----------------------------------------------------------------------

_LITELLM_PREFIXES = tuple(sorted((a + "/" for a in _PROVIDER_ALIASES), key=len, reverse=True))
_BEDROCK_ROUTE = re.compile(r"^(?:converse|invoke|converse_like)/")
_BEDROCK_REGION = re.compile(r"^(?:us|eu|apac|ap|global|us-gov|jp|au|ca|sa|me|af|mx)\.", re.I)
_BEDROCK_VENDOR = re.compile(
    r"^(?:anthropic|meta|amazon|mistral|cohere|ai21|deepseek|qwen|openai|writer)\.", re.I
)
_BEDROCK_VERSION = re.compile(r"-v\d+(?::\d+)?$")
_VERTEX_AT = re.compile(r"@(\d{8})$")
_DATE_SUFFIX = re.compile(r"-(?:20\d{6}|20\d\d-\d\d-\d\d)$")


def _split_provider(model: str) -> tuple[str | None, str]:
    """``"bedrock/us.anthropic.x"`` -> (``"bedrock"``, ``"us.anthropic.x"``)."""
    lower = model.lower()
    for prefix in _LITELLM_PREFIXES:
        if lower.startswith(prefix):
            return prefix[:-1], model[len(prefix) :]
    return None, model


def _name_variants(name: str) -> Iterator[str]:
    """The ways one provider-less name may be written, most specific first."""
    yield name
    base = _BEDROCK_ROUTE.sub("", name)
    if "arn:aws" in base or ":inference-profile/" in base:
        base = base.rsplit("/", 1)[-1]
    yield base
    no_region = _BEDROCK_REGION.sub("", base)
    yield no_region
    if _BEDROCK_VENDOR.match(no_region):
        bare = _BEDROCK_VENDOR.sub("", no_region)
        yield bare
        yield _BEDROCK_VERSION.sub("", bare)
    yield _VERTEX_AT.sub(r"-\1", no_region)


def _fallback_variants(name: str) -> Iterator[str]:
    """Last resorts: the undated family name for ``-latest`` and dated aliases."""
    if name.endswith("-latest"):
        yield name[: -len("-latest")]
    undated = _DATE_SUFFIX.sub("", name)
    if undated != name:
        yield undated


def candidates(model: str, provider: str | None = None) -> list[tuple[str | None, str]]:
    """(provider id, name) pairs to try for ``model``, in order, without duplicates.

    The provider comes from ``provider=`` first, else from the name's own
    ``provider/`` prefix. The name is tried as written (OpenRouter's ids are
    ``vendor/model``), then without its prefix, then the ``_name_variants``.
    """
    raw = unquote(model.strip())
    prefix, rest = _split_provider(raw)
    provider_id = normalize_provider(provider) if provider else normalize_provider(prefix)
    names: list[str] = [raw]
    for name in (rest, raw):
        for variant in _name_variants(name):
            names.append(variant)
    # "openai/gpt-4o" on OpenRouter: the vendor is part of the name there, but
    # elsewhere it is a prefix to drop.
    if "/" in rest:
        names.append(rest.rsplit("/", 1)[-1])
    for name in list(names):
        names.extend(_fallback_variants(name))
    out: list[tuple[str | None, str]] = []
    seen: set[tuple[str | None, str]] = set()
    for name in names:
        if not name:
            continue
        for pid in (provider_id, None) if provider_id else (None,):
            key = (pid, name)
            if key not in seen:
                seen.add(key)
                out.append(key)
    return out


# -- the book --------------------------------------------------------------------


class PriceBook:
    """Looks up ``Price`` for a model name: overrides, then genai-prices, then litellm."""

    def __init__(
        self,
        overrides: Mapping[str, Any] | None = None,
        *,
        price_map: Mapping[str, Mapping[str, Any]] | None = None,
        genai_prices: bool = True,
    ) -> None:
        self._overrides: dict[str, Price] = {}
        for name, spec in (overrides or {}).items():
            self._overrides[name] = _price_from_override(name, spec)
        self._overrides_lower = {k.lower(): v for k, v in self._overrides.items()}
        self._map: Mapping[str, Mapping[str, Any]] | None = price_map
        # Reads the installed price data (no map given): a name cache may stand for it.
        self._bundled = price_map is None
        self._names: _NameCache | None = None
        self._map_lower: dict[str, str] | None = None
        self._use_genai = genai_prices
        self._genai: Any = None
        self._lock = threading.Lock()
        self._cache: dict[Any, Price] = {}

    # Loading the 3 MB map takes ~60 ms: do it once, on the first lookup,
    # never at import.
    def _price_map(self) -> Mapping[str, Mapping[str, Any]]:
        if self._map is None:
            with self._lock:
                if self._map is None:
                    self._map = _load_litellm_map()
        return self._map

    def _price_map_or_empty(self) -> Mapping[str, Mapping[str, Any]]:
        try:
            return self._price_map()
        except PricingError:
            return {}

    def get(self, model: str, provider: str | None = None) -> Price:
        """The price of ``model`` (``"gpt-4o-mini"``, ``"openai/gpt-4o-mini"``, ...).

        ``provider`` (optional) is what the caller knows about where the call
        goes: a provider id (``"anthropic"``, ``"openrouter"``), a litellm
        provider (``"bedrock"``, ``"vertex_ai"``) or a base URL. Cached per
        (provider, model): genai-prices is consulted once for each, and again
        only when the data says the price changes (``Price.expires_at``: a
        dated price change, DeepSeek's off-peak hours).
        """
        key: Any = model if provider is None else (provider, model)
        cached = self._cache.get(key)
        if cached is not None and (cached.expires_at is None or time.time() < cached.expires_at):
            return cached
        price = self._lookup(model, provider)
        self._cache[key] = price
        return price

    def _override(self, tried: list[tuple[str | None, str]]) -> Price | None:
        for _pid, name in tried:
            found = self._overrides.get(name) or self._overrides_lower.get(name.lower())
            if found is not None:
                return found
        return None

    def _lookup(self, model: str, provider: str | None) -> Price:
        tried = candidates(model, provider)
        found = self._override(tried)
        if found is not None:
            return found
        for pid, name in tried:
            price = self._from_genai(pid, name)
            if price is not None:
                return price
        if all(pid is None for pid, _ in tried):
            # genai-prices guesses a provider from the name with patterns that
            # miss some first-party names (``chatgpt-4o-latest``): ask the
            # model makers themselves, whose names are their own.
            for vendor in _VENDORS:
                for _pid, name in tried:
                    price = self._from_genai(vendor, name)
                    if price is not None:
                        return price
        table = self._price_map_or_empty()
        for _pid, name in tried:
            entry = self._map_entry(table, name, _pid)
            if entry is not None:
                return _price_from_map(entry[0], entry[1])
        raise UnknownModelError(model, suggestions=self._suggest(model, table))

    def _map_entry(
        self, table: Mapping[str, Mapping[str, Any]], name: str, provider_id: str | None
    ) -> tuple[str, Mapping[str, Any]] | None:
        keys = [name]
        if provider_id is not None:
            keys.extend(f"{p}/{name}" for p in _LITELLM_PREFIXES_FOR.get(provider_id, ()))
        for key in keys:
            entry = table.get(key)
            found = key
            if entry is None:
                if self._map_lower is None:
                    self._map_lower = {k.lower(): k for k in table}
                real = self._map_lower.get(key.lower())
                if real is not None:
                    entry, found = table.get(real), real
            if entry is not None and _is_priced(entry):
                return found, entry
        return None

    def _suggest(self, model: str, table: Mapping[str, Mapping[str, Any]]) -> tuple[str, ...]:
        """Up to three close names, each written so that it prices as shown
        (``groq/llama-3.1-8b-instant`` when only Groq's list has it)."""
        shown: dict[str, str] = {k: k for k in self._overrides}
        for k in table:
            if _is_priced(table[k]):
                shown.setdefault(k, k)
        for name, display in self._genai_names():
            shown.setdefault(name, display)
        bare = unquote(model).rsplit("/", maxsplit=1)[-1]
        out: dict[str, None] = {}
        for hit in difflib.get_close_matches(bare, list(shown), n=6, cutoff=0.6):
            out.setdefault(shown[hit], None)
        return tuple(out)[:3]

    def priced_as(self, model: str, *, cache: Path | None = None) -> tuple[str, str, str]:
        """``(source, name, provider)`` of ``get(model)``: which source prices
        ``model``, under which of its names, and that price's ``provider``.

        Reports list this per model (``crew_budget.report.price_sources``).
        Answering it loads genai-prices' snapshot (~0.15 s, ~26 MB) or
        litellm's map, which a report has no other use for. With ``cache``
        (a JSON file), names resolved from the installed data are kept there,
        keyed by the crew-budget version and the installed data files (path,
        size, mtime): a name seen before needs neither loaded, and a new
        release of either package (or of crew-budget) starts the file afresh.
        The ``prices:`` overrides are looked up first as always (never
        cached); a book given its own ``price_map`` resolves directly; an
        unknown model raises as ``get`` does (with its suggestions) and is
        not cached. Nothing is ever fetched.
        """
        found = self._override(candidates(model, None))
        if found is not None:
            return found.source, found.model, found.provider
        if cache is None or not self._bundled:
            price = self.get(model)
            return price.source, price.model, price.provider
        if self._names is None or self._names.path != cache:
            self._names = _NameCache(cache, _data_key(self._use_genai))
        hit = self._names.get(model)
        if hit is not None:
            return hit
        price = self.get(model)
        self._names.put(model, price)
        return price.source, price.model, price.provider

    # -- genai-prices ---------------------------------------------------------

    def _snapshot(self) -> Any:
        if not self._use_genai:
            return None
        if self._genai is None:
            with self._lock:
                if self._genai is None:
                    try:
                        # The bundled snapshot only: no UpdatePrices (its
                        # thread fetches over HTTP), so prices never change
                        # under a running budget and nothing touches the net.
                        from genai_prices import data_snapshot
                    except ImportError:
                        self._genai = False
                    else:
                        self._genai = data_snapshot.get_snapshot()
        return self._genai or None

    def _genai_names(self) -> list[tuple[str, str]]:
        """(model id, how to write it) for every token-priced genai-prices model."""
        snap = self._snapshot()
        if snap is None:
            return []
        now = datetime.now(tz=timezone.utc)
        out: list[tuple[str, str]] = []
        for provider in snap.providers:
            prefix = _SUGGEST_PREFIX.get(provider.id, provider.id)
            for m in provider.models:
                if getattr(m.get_prices(now), "input_mtok", None) is None:
                    continue
                if provider.id in _NAME_ALONE:
                    out.append((m.id, m.id))
                elif prefix in _PROVIDER_ALIASES:
                    out.append((m.id, f"{prefix}/{m.id}"))
                else:
                    out.append((m.id, f"{m.id} (provider={provider.id!r})"))
        return out

    def _from_genai(self, provider_id: str | None, name: str) -> Price | None:
        snap = self._snapshot()
        if snap is None:
            return None
        try:
            provider, info = snap.find_provider_model(name, None, provider_id, None)
        except (LookupError, ValueError):
            return None
        owner = next((p for p in snap.providers if any(m is info for m in p.models)), provider)
        max_out = self._max_output_from_map((name, info.id), provider_id)
        return price_from_genai(info, owner, served_by_owner=owner is provider,
                                max_output_tokens=max_out, when=self._now())

    def _now(self) -> datetime:
        """The time prices are looked up at (a seam for tests of dated prices)."""
        return datetime.now(tz=timezone.utc)

    def _max_output_from_map(self, names: tuple[str, ...], provider_id: str | None) -> int | None:
        """litellm's ``max_output_tokens`` for the model, where its map knows it:
        the estimator reserves at most that many output tokens."""
        table = self._price_map_or_empty()
        for name in names:
            entry = self._map_entry(table, name, provider_id)
            if entry is not None:
                value = entry[1].get("max_output_tokens")
                if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
                    return int(value)
        return None


# genai-prices provider id -> litellm's key prefixes for it.
_LITELLM_PREFIXES_FOR: dict[str, tuple[str, ...]] = {
    "aws": ("bedrock", "bedrock/converse"),
    "google": ("gemini", "vertex_ai"),
    "azure": ("azure", "azure_ai"),
    "openrouter": ("openrouter",),
    "groq": ("groq",),
    "cerebras": ("cerebras",),
    "mistral": ("mistral",),
    "deepseek": ("deepseek",),
    "x-ai": ("xai",),
    "together": ("together_ai",),
    "fireworks": ("fireworks_ai", "fireworks_ai/accounts/fireworks/models"),
    "perplexity": ("perplexity",),
    "databricks": ("databricks",),
    "cohere": ("cohere_chat", "cohere"),
    "anthropic": ("anthropic",),
    "openai": ("openai",),
    "novita": ("novita",),
    "moonshotai": ("moonshot",),
}

def price_from_genai(
    info: Any,
    owner: Any,
    *,
    served_by_owner: bool = True,
    max_output_tokens: int | None = None,
    when: datetime | None = None,
) -> Price | None:
    """A ``Price`` from a genai-prices ``ModelInfo`` (and the ``Provider`` whose
    list holds it), at the prices in force ``when`` (default: now), or None
    for a model not priced per input and output token.

    Service tiers come from the model's price variants (``service_tier``
    ``priority``/``flex``, ``processing`` ``batch``); genai-prices applies them
    only when the model is served by the provider that lists it, and so do we.
    """
    now = when or datetime.now(tz=timezone.utc)
    standard = info.get_prices(now)
    if getattr(standard, "input_mtok", None) is None or getattr(
        standard, "output_mtok", None
    ) is None:
        return None  # not a token-priced chat model (embeddings, audio by the hour)
    base_rates, base_tiers = _genai_rates(standard)
    variants: dict[str, tuple[dict[str, Decimal], dict[int, dict[str, Decimal]]]] = {}
    if served_by_owner and info.price_variants:
        for tier, context in (
            ("priority", {"service_tier": "priority"}),
            ("flex", {"service_tier": "flex"}),
            ("batch", {"processing": "batch"}),
        ):
            resolved = info.get_prices(now, context)
            if resolved != standard:
                variants[tier] = _genai_rates(resolved)
    price = _assemble(
        info.id, _FAMILY.get(owner.id, owner.id), "genai-prices", base_rates, base_tiers,
        variants, max_output_tokens,
    )
    change = _next_price_change(info, now)
    return price if change is None else replace(price, expires_at=change.timestamp())


def _next_price_change(info: Any, now: datetime) -> datetime | None:
    """The first moment after ``now`` at which one of the model's dated or
    time-of-day constraints (``StartDateConstraint``: from a UTC date on;
    ``TimeOfDateConstraint``: a daily UTC window) switches, or None."""
    constraints = [getattr(c, "constraint", None) for c in info.prices] if isinstance(
        info.prices, list) else []
    constraints.extend(getattr(v, "constraint", None) for v in info.price_variants or ())
    utc = now.astimezone(timezone.utc)
    moments: list[datetime] = []
    for constraint in constraints:
        start_date = getattr(constraint, "start_date", None)
        if start_date is not None:
            moment = datetime(start_date.year, start_date.month, start_date.day,
                              tzinfo=timezone.utc)
            if moment > utc:
                moments.append(moment)
        for attr in ("start_time", "end_time"):
            at = getattr(constraint, attr, None)
            if at is None:
                continue
            if at.tzinfo is not None:  # as genai-prices compares them: in UTC
                at = datetime.combine(utc.date(), at).astimezone(timezone.utc).timetz()
            today = datetime.combine(utc.date(), at.replace(tzinfo=timezone.utc))
            moments.append(today if today > utc else today + timedelta(days=1))
    return min(moments) if moments else None


# genai-prices price key -> Price field, and its unit.
_GENAI_KEYS: tuple[tuple[str, str, Decimal], ...] = (
    ("input_mtok", "input", _MILLION),
    ("output_mtok", "output", _MILLION),
    ("cache_read_mtok", "cached_input", _MILLION),
    ("cache_write_mtok", "cache_write", _MILLION),
    ("cache_write_5m_mtok", "cache_write", _MILLION),
    ("cache_write_1h_mtok", "cache_write_1h", _MILLION),
    ("output_reasoning_mtok", "reasoning", _MILLION),
    ("input_audio_mtok", "input_audio", _MILLION),
    ("output_audio_mtok", "output_audio", _MILLION),
    ("input_image_mtok", "input_image", _MILLION),
    ("output_image_mtok", "output_image", _MILLION),
    ("web_searches_kcount", "web_search", _THOUSAND),
    ("requests_kcount", "per_request", _THOUSAND),
)


def _genai_rates(
    model_price: Any,
) -> tuple[dict[str, Decimal], dict[int, dict[str, Decimal]]]:
    """A genai-prices ``ModelPrice`` as per-unit rates: base, and per tier threshold.

    A tiered price (``TieredPrices``: ``base`` plus ``tiers`` of ``start``/
    ``price``) applies its tier's rate to every token once the prompt has
    more than ``start`` tokens; each threshold's rates are the base ones with
    every key's applicable tier price on top.
    """
    base: dict[str, Decimal] = {}
    tiered: dict[str, list[tuple[int, Decimal]]] = {}
    for key, name, per in _GENAI_KEYS:
        value = getattr(model_price, key, None)
        if value is None or name in base:
            continue
        if isinstance(value, Decimal):
            base[name] = value / per
        else:  # TieredPrices
            base[name] = Decimal(value.base) / per
            tiered[name] = sorted((int(t.start), Decimal(t.price) / per) for t in value.tiers)
    thresholds = sorted({start for steps in tiered.values() for start, _ in steps})
    tiers: dict[int, dict[str, Decimal]] = {}
    for threshold in thresholds:
        rates: dict[str, Decimal] = {}
        for name, steps in tiered.items():
            applicable = [rate for start, rate in steps if start <= threshold]
            if applicable:
                rates[name] = applicable[-1]
        tiers[threshold] = rates
    return base, tiers


def _assemble(
    model: str,
    provider: str,
    source: str,
    base: Mapping[str, Decimal],
    tiers: Mapping[int, Mapping[str, Decimal]],
    variants: Mapping[str, tuple[Mapping[str, Decimal], Mapping[int, Mapping[str, Decimal]]]],
    max_output_tokens: int | None,
    tokenizer: str | None = None,
) -> Price:
    """One ``Price`` (with its context and service tiers) from rate mappings."""

    def flat(rates: Mapping[str, Decimal], tier_list: tuple[tuple[int, Price], ...]) -> Price:
        others: dict[str, Any] = {k: v for k, v in rates.items() if k not in ("input", "output")}
        return Price(
            model=model,
            provider=provider,
            input=rates["input"],
            output=rates["output"],
            tokenizer=tokenizer,
            max_output_tokens=max_output_tokens,
            source=source,
            tiers=tier_list,
            **others,
        )

    def with_tiers(
        rates: Mapping[str, Decimal], steps: Mapping[int, Mapping[str, Decimal]]
    ) -> Price:
        tier_list = tuple(
            (above, flat({**rates, **steps[above]}, ())) for above in sorted(steps)
        )
        return flat(rates, tier_list)

    standard = with_tiers(base, tiers)
    service = tuple(
        (name, with_tiers({**base, **v_base}, _merge_tiers(tiers, v_base, v_tiers)))
        for name, (v_base, v_tiers) in variants.items()
    )
    return replace(standard, service_tiers=service) if service else standard


def _merge_tiers(
    tiers: Mapping[int, Mapping[str, Decimal]],
    variant_base: Mapping[str, Decimal],
    variant_tiers: Mapping[int, Mapping[str, Decimal]],
) -> dict[int, dict[str, Decimal]]:
    """A service tier's context tiers: its own tier rates where the data has
    them, else the standard tier's, with the service tier's base rates beating
    standard tier rates it replaces (litellm lists only some combinations)."""
    out: dict[int, dict[str, Decimal]] = {}
    for above in sorted(set(tiers) | set(variant_tiers)):
        rates = {k: v for k, v in tiers.get(above, {}).items() if k not in variant_base}
        rates.update(variant_tiers.get(above, {}))
        out[above] = rates
    return out


# -- litellm's map ----------------------------------------------------------------


# -- the name cache (PriceBook.priced_as) ------------------------------------------


def cache_dir() -> Path | None:
    """Where crew-budget keeps small caches: ``$CREW_BUDGET_CACHE_DIR`` (empty:
    none), else ``$XDG_CACHE_HOME/crew-budget``, else ``~/.cache/crew-budget``."""
    chosen = os.environ.get("CREW_BUDGET_CACHE_DIR")
    if chosen is not None:
        return Path(chosen).expanduser() if chosen.strip() else None
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        home = os.path.expanduser("~")
        if home.startswith("~"):  # no home directory to speak of: no cache
            return None
        base = os.path.join(home, ".cache")
    return Path(base) / "crew-budget"


def names_cache_path() -> Path | None:
    """The file ``PriceBook.priced_as`` keeps resolved names in (None: no cache)."""
    folder = cache_dir()
    return None if folder is None else folder / "price-names.json"


def _data_key(use_genai: bool) -> str:
    """What a resolved name depends on besides the name: crew-budget's
    matching rules and the installed price data, by file identity."""
    from importlib.util import find_spec

    from crew_budget import __version__

    def ident(path: Path) -> str:
        st = path.stat()
        return f"{path}:{st.st_size}:{st.st_mtime_ns}"

    parts = [__version__, ident(Path(__file__))]
    spec = find_spec("genai_prices") if use_genai else None
    if spec is not None and spec.submodule_search_locations:
        parts.append(ident(Path(next(iter(spec.submodule_search_locations))) / "data.py"))
    else:
        parts.append("no genai-prices")
    try:
        parts.append(ident(litellm_price_map_path()))
    except PricingError:
        parts.append("no litellm")
    return "|".join(parts)


class _NameCache:
    """model -> (source, name, provider, expires_at) in a JSON file, for one data key.

    Read once; written whole (a temporary file renamed over it) after each
    new name. Any problem reading (no file, another key, bad JSON, a read-only
    or missing directory) just means resolving from the data as before.
    """

    _LIMIT = 5000  # names: a file past this starts afresh

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key
        self.names: dict[str, list[Any]] = {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if not isinstance(data, dict) or data.get("key") != key:
            return
        names = data.get("names")
        if isinstance(names, dict) and len(names) < self._LIMIT:
            self.names = names

    def get(self, model: str) -> tuple[str, str, str] | None:
        entry = self.names.get(model)
        if not (isinstance(entry, list) and len(entry) == 4
                and all(isinstance(x, str) for x in entry[:3])
                and (entry[3] is None or isinstance(entry[3], (int, float)))):
            return None
        if entry[3] is not None and time.time() >= entry[3]:
            return None  # the data says this price changes then: look again
        return entry[0], entry[1], entry[2]

    def put(self, model: str, price: Price) -> None:
        self.names[model] = [price.source, price.model, price.provider, price.expires_at]
        text = json.dumps({"key": self.key, "names": self.names}, sort_keys=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()


def litellm_data_dir() -> Path:
    """The installed litellm package directory, found WITHOUT importing it.

    Scans ``sys.path`` for the package's files rather than using the import
    machinery, so neither litellm's import cost nor an import hook runs.
    """
    for entry in sys.path:
        candidate = Path(entry or ".") / "litellm"
        if (candidate / _MAP_FILE).is_file():
            return candidate
    raise PricingError(
        "litellm is not installed, so its bundled price map is unavailable. Fix: "
        "`pip install litellm` (it is read as data, never imported), or give every "
        "model a price under `prices:` in your budget YAML."
    )


def litellm_price_map_path() -> Path:
    """Path of litellm's bundled ``model_prices_and_context_window_backup.json``."""
    return litellm_data_dir() / _MAP_FILE


def _is_priced(entry: Mapping[str, Any]) -> bool:
    return "input_cost_per_token" in entry and "output_cost_per_token" in entry


def _load_litellm_map() -> dict[str, dict[str, Any]]:
    path = litellm_price_map_path()
    with path.open("rb") as fh:
        data: dict[str, dict[str, Any]] = json.load(fh, parse_float=Decimal)
    data.pop("sample_spec", None)
    return data


def _dec(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        return None
    return value if isinstance(value, Decimal) else Decimal(str(value))


# litellm key stem -> Price field.
_LITELLM_KEYS = (
    ("input_cost_per_token", "input"),
    ("output_cost_per_token", "output"),
    ("cache_read_input_token_cost", "cached_input"),
    ("cache_creation_input_token_cost", "cache_write"),
    ("output_cost_per_reasoning_token", "reasoning"),
    ("input_cost_per_audio_token", "input_audio"),
    ("output_cost_per_audio_token", "output_audio"),
    ("input_cost_per_image_token", "input_image"),
    ("output_cost_per_image_token", "output_image"),
)
_LITELLM_TIER = re.compile(r"^(?P<stem>[a-z_]+?)_above_(?P<n>\d+)k_tokens(?P<svc>_[a-z]+)?$")
_LITELLM_SERVICE = {"_priority": "priority", "_flex": "flex", "_batches": "batch"}


def _litellm_rates(
    entry: Mapping[str, Any], suffix: str
) -> tuple[dict[str, Decimal], dict[int, dict[str, Decimal]]]:
    """Base and context-tier rates of one litellm entry for one service suffix
    (``""``, ``"_priority"``, ``"_flex"``, ``"_batches"``)."""
    stems = dict(_LITELLM_KEYS)
    base: dict[str, Decimal] = {}
    for stem, name in _LITELLM_KEYS:
        value = _dec(entry.get(stem + suffix))
        if value is not None:
            base[name] = value
    if not suffix:
        one_hour = _dec(entry.get("cache_creation_input_token_cost_above_1hr"))
        if one_hour is not None:
            base["cache_write_1h"] = one_hour
    tiers: dict[int, dict[str, Decimal]] = {}
    for key, raw in entry.items():
        match = _LITELLM_TIER.match(key)
        if match is None or (match["svc"] or "") != suffix or match["stem"] not in stems:
            continue
        value = _dec(raw)
        if value is not None:
            tiers.setdefault(int(match["n"]) * 1000, {})[stems[match["stem"]]] = value
    return base, tiers


def _price_from_map(name: str, entry: Mapping[str, Any]) -> Price:
    provider = str(entry.get("litellm_provider", "other"))
    max_out = entry.get("max_output_tokens")
    base, tiers = _litellm_rates(entry, "")
    base.setdefault("input", Decimal(0))
    base.setdefault("output", Decimal(0))
    variants: dict[str, tuple[Mapping[str, Decimal], Mapping[int, Mapping[str, Decimal]]]] = {}
    for suffix, tier in _LITELLM_SERVICE.items():
        v_base, v_tiers = _litellm_rates(entry, suffix)
        if v_base or v_tiers:
            variants[tier] = (v_base, v_tiers)
    return _assemble(
        name,
        "openai" if provider in ("openai", "azure", "text-completion-openai") else provider,
        "litellm",
        base,
        tiers,
        variants,
        int(max_out) if isinstance(max_out, (int, Decimal)) and not isinstance(max_out, bool)
        else None,
    )


# -- overrides --------------------------------------------------------------------

_OVERRIDE_KEYS = (
    ("cached_input_per_million", "cached_input"),
    ("cache_write_per_million", "cache_write"),
    ("cache_write_1h_per_million", "cache_write_1h"),
    ("reasoning_per_million", "reasoning"),
)


def _price_from_override(name: str, spec: Any) -> Price:
    get = spec.get if isinstance(spec, Mapping) else lambda k, d=None: getattr(spec, k, d)

    def per_token(key: str) -> Decimal | None:
        value = get(key)
        return None if value is None else Decimal(str(value)) / _MILLION

    inp, out = per_token("input_per_million"), per_token("output_per_million")
    if inp is None or out is None:
        raise PricingError(
            f"price override for {name!r} needs input_per_million and output_per_million"
        )
    extra: dict[str, Any] = {}
    for key, field_name in _OVERRIDE_KEYS:
        value = per_token(key)
        if value is not None:
            extra[field_name] = value
    return Price(
        model=name,
        provider=str(get("provider", "other") or "other"),
        input=inp,
        output=out,
        tokenizer=get("tokenizer"),
        source="override",
        **extra,
    )

