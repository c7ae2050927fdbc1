"""Exact prompt counts from the providers' free token-counting endpoints (opt-in).

Claude and Gemini have no public local tokenizer, so their prompts are
estimated (``anthropic.py``, ``compat.py``) and the estimate margin
(``crew_budget.margin``) absorbs the error. Both providers also count a
request exactly, for free, with one round trip; ``exact_count: true`` on a
role (``roles.<r>``, ``default_role``) or a model (``models.<m>``,
``prices.<m>``) asks for that count before reserving:

Anthropic: ``POST https://api.anthropic.com/v1/messages/count_tokens``
    Headers ``x-api-key``, ``anthropic-version: 2023-06-01``; body the
    Messages request's ``model``, ``messages``, ``system``, ``tools``,
    ``tool_choice`` and ``thinking`` (no ``max_tokens``); response
    ``{"input_tokens": N}``, which "includes tools, images, and documents"
    (Anthropic API reference, "Count tokens in a Message",
    https://platform.claude.com/docs/api/messages/count_tokens, and the
    token-counting guide). Key: ``ANTHROPIC_API_KEY``.
Gemini: ``POST https://generativelanguage.googleapis.com/v1beta/models/{model}:countTokens``
    Header ``x-goog-api-key``; body ``{"generateContentRequest": {"model":
    "models/{model}", "contents": [...], "systemInstruction": ...}}`` (the
    whole request, so the system instruction is counted; ``contents`` alone
    would leave it out); response ``{"totalTokens": N, ...}`` (Gemini API
    reference, "models.countTokens", https://ai.google.dev/api/tokens).
    Key: ``GEMINI_API_KEY``, else ``GOOGLE_API_KEY``.

**Per conversation prefix.** An agent loop resends its whole history with
one new message each call. The endpoint is asked for the count of the
request *without its newest message* (its prefix), which is cached (bounded
LRU, keyed by a digest of model, system, tools and the prefix's messages);
the newest message is added by the estimator (its raw count of the whole
request minus that of the prefix). So each new prefix costs one round trip,
calls that share a prefix (retries, fan-outs, the same history asked
different questions) cost none after the first, and what is estimated is
one message: next call, it is part of the prefix and counted exactly. A
request of one message is counted whole.

**Never blocking.** The count waits at most ``exact_count_timeout`` seconds
(default 2). A timeout, a refused connection, an HTTP error, a reply
without the count, a missing key or a request the endpoint cannot take
(e.g. content this module does not translate to Gemini) falls back to the
estimate, logs one warning naming the reason (never the key:
``crew_budget.redact``) and is counted in ``Guard.counters``
(``exact_count_fallbacks``). The call itself goes on either way.

httpx (installed with litellm, a core dependency) is imported on first use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from crew_budget.errors import ConfigError

__all__ = ["ANTHROPIC_URL", "GEMINI_URL", "ExactCounter", "ExactCountFailed", "api_family"]

log = logging.getLogger("crew_budget")

ANTHROPIC_URL = "https://api.anthropic.com"
GEMINI_URL = "https://generativelanguage.googleapis.com"
ANTHROPIC_VERSION = "2023-06-01"
_ANTHROPIC_KEYS = ("tool_choice", "thinking")


class ExactCountFailed(Exception):
    """The endpoint did not give a count (the reason is the message, key-free)."""


def api_family(model: str, price_provider: str | None) -> str | None:
    """``"anthropic"`` or ``"gemini"`` when ``model`` has a counting endpoint, else None."""
    name = model.lower()
    if price_provider == "anthropic" or "claude" in name:
        return "anthropic"
    if price_provider in ("google", "gemini") or "gemini" in name:
        return "gemini"
    return None


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                            default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


def _text_parts(content: Any) -> list[dict[str, str]]:
    """OpenAI/Anthropic text content as Gemini parts; other parts: not translated."""
    if isinstance(content, str):
        return [{"text": content}]
    parts: list[dict[str, str]] = []
    for part in content if isinstance(content, list) else [content]:
        if isinstance(part, str):
            parts.append({"text": part})
        elif isinstance(part, Mapping) and part.get("type") in ("text", None) and isinstance(
                part.get("text"), str):
            parts.append({"text": part["text"]})
        else:
            raise ExactCountFailed("a message part other than text (not translated for Gemini)")
    return parts


class ExactCounter:
    """Asks the counting endpoints, with a prefix cache; thread-safe.

    ``anthropic_key`` / ``gemini_key`` default to the providers' usual
    environment variables, read when first needed. ``*_url`` point at a
    proxy or a test server. ``timeout`` is in seconds.
    """

    def __init__(self, *, timeout: float = 2.0, anthropic_key: str | None = None,
                 gemini_key: str | None = None, anthropic_url: str = ANTHROPIC_URL,
                 gemini_url: str = GEMINI_URL, cache_size: int = 4096) -> None:
        self.timeout = float(timeout)
        self._keys = {"anthropic": anthropic_key, "gemini": gemini_key}
        self._urls = {"anthropic": anthropic_url.rstrip("/"), "gemini": gemini_url.rstrip("/")}
        self.cache_size = cache_size
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self._client: Any = None
        self.requests = 0  # HTTP requests sent (tests count them)

    # -- public ---------------------------------------------------------------

    def count_prefix(self, family: str, model: str, messages: Sequence[Any], tools: Any,
                     system: Any, extra: Mapping[str, Any] | None) -> int:
        """The exact count of the request made of ``messages`` (the prefix), cached.

        Raises ``ExactCountFailed`` (reason in the message) when it cannot.
        """
        bare = model.rsplit("/", 1)[-1]
        kept = {k: (extra or {}).get(k) for k in _ANTHROPIC_KEYS} if family == "anthropic" else {}
        key = _digest(family, bare, system, tools, kept, list(messages))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        if family == "anthropic":
            count = self._anthropic(bare, messages, tools, system, kept)
        elif family == "gemini":
            count = self._gemini(bare, messages, tools, system)
        else:
            raise ExactCountFailed(f"{model} has no token-counting endpoint")
        with self._lock:
            self._cache[key] = count
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return count

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- providers --------------------------------------------------------------

    def _anthropic(self, model: str, messages: Sequence[Any], tools: Any, system: Any,
                   kept: Mapping[str, Any]) -> int:
        body: dict[str, Any] = {"model": model, "messages": list(messages)}
        if system:
            body["system"] = system
        if tools:
            body["tools"] = list(tools)
        body.update({k: v for k, v in kept.items() if v is not None})
        key = self._key("anthropic", ("ANTHROPIC_API_KEY",))
        reply = self._post(f"{self._urls['anthropic']}/v1/messages/count_tokens", body,
                           {"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION})
        return _count_field(reply, "input_tokens")

    def _gemini(self, model: str, messages: Sequence[Any], tools: Any, system: Any) -> int:
        if tools:
            raise ExactCountFailed("tools are not translated for Gemini's countTokens")
        contents = []
        for m in messages:
            if not isinstance(m, Mapping):
                raise ExactCountFailed("a message that is not a mapping")
            role = m.get("role")
            if role in ("system", "developer"):
                system = (system + "\n" if isinstance(system, str) else "") + "".join(
                    p["text"] for p in _text_parts(m.get("content", "")))
                continue
            contents.append({"role": "model" if role in ("assistant", "model") else "user",
                             "parts": _text_parts(m.get("content", ""))})
        request: dict[str, Any] = {"model": f"models/{model}", "contents": contents}
        if system:
            request["systemInstruction"] = {"parts": _text_parts(system)}
        key = self._key("gemini", ("GEMINI_API_KEY", "GOOGLE_API_KEY"))
        reply = self._post(f"{self._urls['gemini']}/v1beta/models/{model}:countTokens",
                           {"generateContentRequest": request}, {"x-goog-api-key": key})
        return _count_field(reply, "totalTokens")

    # -- plumbing -----------------------------------------------------------------

    def _key(self, family: str, env: tuple[str, ...]) -> str:
        key = self._keys[family] or next((os.environ[v] for v in env if os.environ.get(v)), "")
        if not key:
            raise ExactCountFailed(f"no API key for {family}'s token counting: set "
                                   f"{' or '.join(env)}, or pass it to ExactCounter")
        return key

    def _http(self) -> Any:
        if self._client is None:
            try:
                import httpx
            except ImportError as exc:  # pragma: no cover - httpx comes with litellm
                raise ConfigError("exact_count needs httpx, which is not installed. Fix: "
                                  "pip install httpx", source="exact_count") from exc
            self._client = httpx.Client(timeout=self.timeout)
        return self._client

    def _post(self, url: str, body: Mapping[str, Any], headers: Mapping[str, str]) -> Any:
        client = self._http()
        import httpx

        with self._lock:
            self.requests += 1
        try:
            response = client.post(url, json=body,
                                   headers={"content-type": "application/json", **headers})
        except httpx.TimeoutException:
            raise ExactCountFailed(f"no answer from {_host(url)} within "
                                   f"{self.timeout:g} s (exact_count_timeout)") from None
        except Exception as exc:  # any transport failure: the call goes on with the estimate
            raise ExactCountFailed(f"{_host(url)} unreachable ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise ExactCountFailed(f"{_host(url)} answered HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise ExactCountFailed(f"{_host(url)} answered something that is not JSON"
                                   ) from None


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _count_field(reply: Any, name: str) -> int:
    value = reply.get(name) if isinstance(reply, Mapping) else None
    if type(value) is not int or value < 0:
        raise ExactCountFailed(f"the reply has no {name} count")
    return value
