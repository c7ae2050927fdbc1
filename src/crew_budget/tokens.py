"""Local text tokenizers, loaded lazily and never from the network.

- OpenAI models: tiktoken ``o200k_base`` (gpt-4o, gpt-4.1, gpt-4.5, gpt-5,
  o-series) or ``cl100k_base`` (gpt-4, gpt-4-turbo, gpt-3.5). These are the
  providers' own encodings, so text counts are exact.
- Claude: there is no public Claude 3+ tokenizer. The estimator counts
  Claude text with ``cl100k_base`` times a per-generation factor (see
  ``estimate/anthropic.py``). litellm bundles the Claude 2 tokenizer
  (``anthropic_tokenizer.json``), which loads offline with the ``tokenizers``
  package in ~0.15 s; it stays available here as ``anthropic``.
- Everything else (Gemini, Llama, Mistral, Qwen, DeepSeek served by Groq,
  Together, Fireworks, ...): a tiktoken encoding scaled by a per-family factor.

tiktoken downloads encodings on first use unless its cache already holds
them; litellm ships ``cl100k_base`` and ``o200k_base`` in
``litellm/litellm_core_utils/tokenizers``. We point ``TIKTOKEN_CACHE_DIR``
there (found by scanning ``sys.path``; litellm is not imported)
before the first ``tiktoken.get_encoding``, unless the user set it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from crew_budget.errors import CrewBudgetError

__all__ = [
    "TokenizerUnavailable",
    "anthropic_is_native",
    "count_function",
    "litellm_tokenizer_dir",
]

_lock = threading.Lock()
_counters: dict[str, Callable[[str], int]] = {}


class TokenizerUnavailable(CrewBudgetError):
    """A local tokenizer could not be loaded (offline and not bundled)."""


def litellm_tokenizer_dir() -> Path | None:
    """``<litellm>/litellm_core_utils/tokenizers``, without importing litellm."""
    from crew_budget.errors import PricingError
    from crew_budget.pricing import litellm_data_dir

    try:
        path = litellm_data_dir() / "litellm_core_utils" / "tokenizers"
    except PricingError:
        return None
    return path if path.is_dir() else None


def _ensure_tiktoken_cache() -> None:
    if os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR"):
        return
    path = litellm_tokenizer_dir()
    if path is not None:
        os.environ["TIKTOKEN_CACHE_DIR"] = str(path)


def count_function(name: str) -> Callable[[str], int]:
    """A thread-safe ``text -> token count`` function for tokenizer ``name``.

    ``name`` is a tiktoken encoding (``o200k_base``, ``cl100k_base``) or
    ``anthropic`` (litellm's bundled Claude tokenizer, falling back to
    ``cl100k_base`` when the ``tokenizers`` package is missing; see
    ``anthropic_is_native``).
    """
    fn = _counters.get(name)
    if fn is not None:
        return fn
    with _lock:
        fn = _counters.get(name)
        if fn is None:
            fn = _with_short_memo(_load(name))
            _counters[name] = fn
    return fn


_SHORT = 32
_SHORT_MEMO = 4096


def _with_short_memo(count: Callable[[str], int]) -> Callable[[str], int]:
    """``count`` remembering short strings: roles, names, tool and function
    names recur in every request and a dict lookup is far cheaper than a
    tokenizer call. Bounded; dict reads and writes are atomic, so thread-safe."""
    memo: dict[str, int] = {}

    def counted(text: str) -> int:
        if len(text) > _SHORT:
            return count(text)
        n = memo.get(text)
        if n is None:
            n = count(text)
            if len(memo) < _SHORT_MEMO:
                memo[text] = n
        return n

    return counted


def anthropic_is_native() -> bool:
    """True when the bundled Claude tokenizer is used (not the tiktoken fallback)."""
    return _load_anthropic() is not None


def _load(name: str) -> Callable[[str], int]:
    if name == "anthropic":
        native = _load_anthropic()
        if native is not None:
            return native
        name = "cl100k_base"
    _ensure_tiktoken_cache()
    import tiktoken  # lazy: keeps `import crew_budget` fast

    try:
        enc = tiktoken.get_encoding(name)
    except ValueError as exc:
        raise TokenizerUnavailable(
            f"unknown tokenizer {name!r}; use o200k_base, cl100k_base, anthropic or approx "
            "in the model's `tokenizer:` price setting"
        ) from exc
    except Exception as exc:  # network error from a cache miss, offline
        raise TokenizerUnavailable(
            f"tiktoken encoding {name!r} is not in the local cache "
            f"(TIKTOKEN_CACHE_DIR={os.environ.get('TIKTOKEN_CACHE_DIR')!r}) and could not be "
            "downloaded. Fix: install litellm (it bundles cl100k_base and o200k_base) or "
            "point TIKTOKEN_CACHE_DIR at a directory holding the encoding."
        ) from exc
    def count(text: str) -> int:
        return len(enc.encode_ordinary(text))

    return count


_anthropic: list[Callable[[str], int] | None] = []
_anthropic_lock = threading.Lock()


def _load_anthropic() -> Callable[[str], int] | None:
    if _anthropic:
        return _anthropic[0]
    with _anthropic_lock:
        if not _anthropic:
            _anthropic.append(_read_anthropic())
    return _anthropic[0]


def _read_anthropic() -> Callable[[str], int] | None:
    fn: Callable[[str], int] | None = None
    path = litellm_tokenizer_dir()
    if path is not None and (path / "anthropic_tokenizer.json").is_file():
        try:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(path / "anthropic_tokenizer.json"))
        except Exception:
            tok = None
        if tok is not None:
            encode = tok.encode

            def count(text: str) -> int:
                return len(encode(text, add_special_tokens=False).ids)

            fn = count
    return fn
