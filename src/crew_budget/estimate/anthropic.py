"""Anthropic messages rules: Claude generations, tool-use system prompts, documents.

Sources are cited at each rule.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from typing import Any

# -- model families ---------------------------------------------------------

_ANTHROPIC_TEXT_FACTOR = 1.10
_ANTHROPIC_FALLBACK_FACTOR = 1.25  # cl100k_base when `tokenizers` is missing
_CLAUDE_47_TOKENIZER = 1.35  # Opus 4.7+: "1.0-1.35x as many tokens"

# Anthropic "Tool use overview > Pricing": tool-use system prompt tokens for
# (auto|none, any|tool). Keyed by (tier, major, minor); tier "" = any tier.
_CLAUDE_TOOL_PROMPT: dict[tuple[str, int, int], tuple[int, int]] = {
    ("opus", 5, 0): (286, 406),
    ("sonnet", 5, 0): (354, 474),
    ("opus", 4, 8): (290, 410),
    ("opus", 4, 7): (675, 804),
    ("", 4, 6): (497, 589),
    ("", 4, 5): (496, 588),
    ("opus", 4, 1): (346, 315),
    ("", 4, 0): (346, 315),
    ("", 3, 7): (346, 313),
    ("", 3, 5): (346, 313),
    ("haiku", 3, 5): (264, 355),
    ("opus", 3, 0): (530, 281),
    ("sonnet", 3, 0): (159, 235),
    ("haiku", 3, 0): (264, 340),
}
_CLAUDE_TOOL_PROMPT_UNKNOWN = (675, 804)  # the largest documented: over, not under
_SERVER_TOOL_TOKENS = 1000  # bash 245, text editor 700, computer 735 (+ system prompt)
_PDF_PAGE_TOKENS = 3000
_UNKNOWN_DOCUMENT_TOKENS = 10 * _PDF_PAGE_TOKENS
# Extended thinking adds hidden prompt text: Anthropic's token-counting docs
# bill 88 tokens for a thinking-enabled request whose text is 40 tokens
# (claude-opus-4); after framing that leaves ~30.
_THINKING_PROMPT = 30

_CLAUDE_RE = re.compile(
    r"claude-(?:(?P<t1>opus|sonnet|haiku)-(?P<a1>\d+)(?:[-.](?P<b1>\d{1,2}))?(?!\d)"
    r"|(?P<a2>\d+)(?:[-.](?P<b2>\d{1,2}))?-(?P<t2>opus|sonnet|haiku))"
)


def _claude_version(name: str) -> tuple[str, int, int] | None:
    match = _CLAUDE_RE.search(name)
    if match is None:
        return None
    tier = match.group("t1") or match.group("t2") or ""
    major = int(match.group("a1") or match.group("a2"))
    minor = int(match.group("b1") or match.group("b2") or 0)
    return tier, major, minor


_PAGE_RE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")
_COUNT_RE = re.compile(rb"/Count\s+(\d+)")


def _pdf_pages(data: str) -> int:
    """Pages of a base64 PDF (or data URL): ``/Type /Page`` objects, else ``/Count``."""
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return 0
    if not raw.startswith(b"%PDF"):
        return 0
    pages = len(_PAGE_RE.findall(raw))
    if pages:
        return pages
    counts = [int(c) for c in _COUNT_RE.findall(raw)]
    return max(counts) if counts else 0


_ANTHROPIC_BLOCKS = frozenset({"tool_use", "tool_result", "image", "document", "thinking",
                               "redacted_thinking"})


def _looks_anthropic(messages: Sequence[Any], tools: Sequence[Any] | None, system: Any) -> bool:
    """An Anthropic messages request: separate ``system``, ``input_schema`` tools
    or Anthropic content blocks."""
    if system:
        return True
    if any(isinstance(t, Mapping) and "input_schema" in t for t in tools or ()):
        return True
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            for block in content:
                if isinstance(block, Mapping) and block.get("type") in _ANTHROPIC_BLOCKS:
                    return True
    return False


def _thinking_enabled(value: Any) -> bool:
    if isinstance(value, Mapping):
        return value.get("type") not in (None, "disabled")
    return bool(value)
