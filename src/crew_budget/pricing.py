"""Model prices: litellm's bundled price map plus the user's overrides.

The map is read as a JSON file from the installed litellm package (found by
scanning ``sys.path``, which does not import litellm: importing it costs
seconds and tries the network). Floats in the file are parsed straight
to ``Decimal`` so ``1.5e-07`` stays exactly 0.00000015 USD per token.

A model with no price is an ``UnknownModelError`` (invariant 6): pricing an
unknown model at $0 is how surprise bills happen.
"""

from __future__ import annotations

import difflib
import json
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from crew_budget.errors import PricingError, UnknownModelError
from crew_budget.money import atto_per_token

__all__ = ["Price", "PriceBook", "litellm_data_dir", "litellm_price_map_path"]

_MILLION = Decimal(1_000_000)
_MAP_FILE = "model_prices_and_context_window_backup.json"
_PROVIDER_PREFIXES = ("openai/", "anthropic/", "azure/", "gemini/", "vertex_ai/", "bedrock/")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token for one model. ``None`` means "billed at the input/output rate"."""

    model: str
    provider: str
    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None
    tokenizer: str | None = None
    max_output_tokens: int | None = None
    # The five rates (input, output, cached input, cache write, reasoning;
    # the last three defaulted as billed) in whole atto-USD per token, or
    # None when one is finer than that: then Decimal arithmetic is used.
    atto: tuple[int, int, int, int, int] | None = field(
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


class PriceBook:
    """Looks up ``Price`` for a model name; overrides beat litellm's map."""

    def __init__(
        self,
        overrides: Mapping[str, Any] | None = None,
        *,
        price_map: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self._overrides: dict[str, Price] = {}
        for name, spec in (overrides or {}).items():
            self._overrides[name] = _price_from_override(name, spec)
        self._map: Mapping[str, Mapping[str, Any]] | None = price_map
        self._lock = threading.Lock()
        self._cache: dict[str, Price] = {}

    # Loading the 3 MB map takes ~60 ms: do it once, on the first lookup,
    # never at import.
    def _price_map(self) -> Mapping[str, Mapping[str, Any]]:
        if self._map is None:
            with self._lock:
                if self._map is None:
                    self._map = _load_litellm_map()
        return self._map

    def get(self, model: str) -> Price:
        """The price of ``model`` (``"gpt-4o-mini"``, ``"openai/gpt-4o-mini"``, ...)."""
        cached = self._cache.get(model)
        if cached is not None:
            return cached
        price = self._lookup(model)
        self._cache[model] = price
        return price

    def _lookup(self, model: str) -> Price:
        for name in _candidates(model):
            if name in self._overrides:
                return self._overrides[name]
        table = self._overrides_only_or_map(model)
        for name in _candidates(model):
            entry = table.get(name)
            if entry is not None and _is_priced(entry):
                return _price_from_map(name, entry)
        keys = list(self._overrides) + [k for k in table if _is_priced(table[k])]
        suggestions = tuple(
            difflib.get_close_matches(model.rsplit("/", maxsplit=1)[-1], keys, n=3, cutoff=0.6)
        )
        raise UnknownModelError(model, suggestions=suggestions)

    def _overrides_only_or_map(self, model: str) -> Mapping[str, Mapping[str, Any]]:
        try:
            return self._price_map()
        except PricingError as exc:
            raise UnknownModelError(model) from exc


def _candidates(model: str) -> list[str]:
    names = [model]
    for prefix in _PROVIDER_PREFIXES:
        if model.startswith(prefix):
            names.append(model[len(prefix) :])
    if "/" not in model:
        names.extend(p + model for p in ("openai/", "anthropic/"))
    return names


def _is_priced(entry: Mapping[str, Any]) -> bool:
    return "input_cost_per_token" in entry and "output_cost_per_token" in entry


def _load_litellm_map() -> dict[str, dict[str, Any]]:
    path = litellm_price_map_path()
    with path.open("rb") as fh:
        data: dict[str, dict[str, Any]] = json.load(fh, parse_float=Decimal)
    data.pop("sample_spec", None)
    return data


def _dec(value: Any) -> Decimal | None:
    if value is None:
        return None
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _price_from_map(name: str, entry: Mapping[str, Any]) -> Price:
    provider = str(entry.get("litellm_provider", "other"))
    max_out = entry.get("max_output_tokens")
    return Price(
        model=name,
        provider="openai"
        if provider in ("openai", "azure", "text-completion-openai")
        else provider,
        input=_dec(entry["input_cost_per_token"]) or Decimal(0),
        output=_dec(entry["output_cost_per_token"]) or Decimal(0),
        cached_input=_dec(entry.get("cache_read_input_token_cost")),
        cache_write=_dec(entry.get("cache_creation_input_token_cost")),
        reasoning=_dec(entry.get("output_cost_per_reasoning_token")),
        max_output_tokens=int(max_out) if isinstance(max_out, (int, Decimal)) else None,
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
    return Price(
        model=name,
        provider=str(get("provider", "other") or "other"),
        input=inp,
        output=out,
        cached_input=per_token("cached_input_per_million"),
        cache_write=per_token("cache_write_per_million"),
        reasoning=per_token("reasoning_per_million"),
        tokenizer=get("tokenizer"),
    )
